"""Label banks: `treeclip bank build` (format, fp16, resume), released-format loading, taxonomy inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_predict_fixtures import export_tiny_model, random_taxa, write_taxonomy_csv

from treeclip.cli import main
from treeclip.errors import UsageError
from treeclip.model import bank as bank_module
from treeclip.model import load_model
from treeclip.model.bank import build_bank, encode_class_texts, load_bank, taxon_texts
from treeclip.predict.taxa import read_taxa
from treeclip.taxonomy import Taxon, get_templates


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("bank") / "model")


def test_bank_build_cli_writes_the_released_format(model_dir: Path, tmp_path: Path) -> None:
    taxa = random_taxa(40)
    csv_path = write_taxonomy_csv(taxa, tmp_path / "taxa.csv")
    out = tmp_path / "bank"
    assert main(["bank", "build", "--taxonomy", str(csv_path), "--model", str(model_dir), "--out", str(out),
                 "--text-type", "sci", "--templates", "photo", "--batch-size", "16"]) == 0
    matrix = np.load(out / "txt_emb_species.npy")
    names = json.loads((out / "txt_emb_species.json").read_text())
    assert matrix.dtype == np.float32 and matrix.shape == (32, len(taxa))
    assert np.allclose(np.linalg.norm(matrix, axis=0), 1.0, atol=1e-5)
    assert names[0] == [list(taxa[0].lineage), taxa[0].common] and len(names) == len(taxa)
    meta = json.loads((out / "bank.json").read_text())
    assert meta == {"model": str(model_dir), "text_type": "sci", "templates": "photo", "dtype": "float32",
                    "n_taxa": len(taxa), "dim": 32}
    model, _, _, tokenizer = load_model(model_dir)
    direct = encode_class_texts(model, tokenizer, taxon_texts(taxa, "sci"), get_templates("photo"))
    assert np.allclose(matrix, direct.T, atol=1e-5)
    loaded = load_bank(out)
    assert isinstance(loaded.embeddings, np.memmap) and not (out / ".chunks").exists()
    assert main(["bank", "build", "--taxonomy", str(out / "txt_emb_species.json"), "--model", str(model_dir),
                 "--out", str(tmp_path / "half"), "--text-type", "sci", "--templates", "photo", "--fp16"]) == 0
    half = np.load(tmp_path / "half" / "txt_emb_species.npy")
    assert half.dtype == np.float16 and np.allclose(half, matrix, atol=2e-3)


def test_interrupted_build_resumes_from_its_chunks(model_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _, tokenizer = load_model(model_dir)
    taxa = random_taxa(50)
    kwargs = {"model": model, "tokenizer": tokenizer, "taxa": taxa, "model_id": "m", "text_type": "sci",
              "templates": "photo", "batch_size": 8, "chunk_size": 8}
    reference = build_bank(out=tmp_path / "whole", **kwargs)
    calls = []
    original = bank_module.encode_class_texts

    def failing(*args: object, **kw: object) -> np.ndarray:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(bank_module, "encode_class_texts", failing)
    with pytest.raises(KeyboardInterrupt):
        build_bank(out=tmp_path / "resumed", **kwargs)
    assert len(list((tmp_path / "resumed" / ".chunks").glob("chunk-*.npy"))) == 3
    assert not (tmp_path / "resumed" / "txt_emb_species.npy").exists()
    calls.clear()
    monkeypatch.setattr(bank_module, "encode_class_texts", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    resumed = build_bank(out=tmp_path / "resumed", resume=True, **kwargs)
    assert len(calls) == (len(taxa) + 7) // 8 - 3  # only the missing chunks were encoded
    assert np.allclose(np.asarray(resumed.embeddings), np.asarray(reference.embeddings), atol=1e-6)
    with pytest.raises(UsageError, match="different bank build"):
        (tmp_path / "other" / ".chunks").mkdir(parents=True)
        (tmp_path / "other" / ".chunks" / "build.json").write_text("{}")
        build_bank(out=tmp_path / "other", resume=True, **kwargs)


def test_released_banks_load_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(8, 3)).astype(np.float16)
    np.save(tmp_path / "txt_emb_species.npy", matrix)
    entries = [[["Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata"],
                "White-plumed Honeyeater"],
               [["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", ""], ""],
               [["Plantae", "Tracheophyta", "", "", "", "", ""], None]]
    (tmp_path / "txt_emb_species.json").write_text(json.dumps(entries))
    bank = load_bank(tmp_path / "txt_emb_species.npy")
    assert len(bank) == 3 and bank.dim == 8 and bank.embeddings.dtype == np.float16 and bank.meta == {}
    assert bank.lineages[1][5:] == ("Danaus", "") and bank.commons == ["White-plumed Honeyeater", "", ""]
    assert bank.taxon(0).scientific == "Ptilotula penicillata"
    with pytest.raises(UsageError, match="not a label bank"):
        load_bank(tmp_path / "nowhere")


def test_taxonomy_inputs(tmp_path: Path) -> None:
    taxa = random_taxa(10)
    from_csv = read_taxa(write_taxonomy_csv(taxa + taxa[:2], tmp_path / "t.csv"))
    assert from_csv == taxa and from_csv[0].common == taxa[0].common
    columns = {name: [t.lineage[i] for t in taxa] for i, name in enumerate(
        ["kingdom", "phylum", "class", "order", "family", "genus", "species"])}
    columns["common"] = [t.common for t in taxa]
    columns["id"] = [str(i) for i in range(len(taxa))]
    pq.write_table(pa.table(columns), tmp_path / "catalog.parquet")
    assert read_taxa(tmp_path / "catalog.parquet") == taxa
    assert read_taxa(tmp_path / "catalog.parquet", keep_partial=False) == [t for t in taxa if t.species]
    checklist = tmp_path / "checklist.csv"
    checklist.write_text("species\nPtilotula penicillata\nDanaus plexippus\n")
    assert read_taxa(checklist) == [Taxon(("", "", "", "", "", "Ptilotula", "penicillata")),
                                    Taxon(("", "", "", "", "", "Danaus", "plexippus"))]
    (tmp_path / "bad.csv").write_text("name,size\nx,1\n")
    with pytest.raises(UsageError, match="no rank columns"):
        read_taxa(tmp_path / "bad.csv")
