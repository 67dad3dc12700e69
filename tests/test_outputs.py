"""Outputs that outlive the folder they were made in: model ids that resolve from anywhere, Parquet metadata,
Darwin Core identifications, and a search that decodes its query exactly as embed decoded the index."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny model, its bank and photos: a large JPEG (decoded at reduced DCT scale), a PNG
    and an unreadable file."""
    root = tmp_path_factory.mktemp("outputs")
    model_dir = export_tiny_model(root / "model")
    tiny_bank(model_dir, random_taxa(30), root / "bank")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (600, 900, 3), dtype=np.uint8)).save(photos / "large.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photos / "small.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_search_finds_an_indexed_photo_at_cosine_one_from_another_directory(world: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss", reason="the vector index needs faiss-cpu")
    monkeypatch.chdir(world)  # relative model and image paths, as a user types them
    emb = tmp_path / "emb.parquet"
    assert main(["embed", "photos", "--model", "model", "--output", str(emb)]) == 1  # broken.jpg
    assert main(["index", str(emb), "--out", str(tmp_path / "index")]) == 0
    assert json.loads((tmp_path / "index" / "index.json").read_text())["model"] == str(world / "model")
    metadata = json.loads(pq.read_schema(emb).metadata[b"treeclip"])
    assert metadata["model"] == str(world / "model")
    monkeypatch.chdir(tmp_path)  # elsewhere: the index still names its model
    capsys.readouterr()
    assert main(["search", "index", str(world / "photos" / "large.jpg"), "--k", "1"]) == 0
    rank, score, path = capsys.readouterr().out.split("\t")
    assert path.strip().endswith("large.jpg") and float(score) == pytest.approx(1.0, abs=1e-5)


def test_parquet_predictions_carry_model_and_bank(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.parquet"
    assert main(["predict", str(world / "photos" / "small.png"), "--model", str(world / "model"), "--bank",
                 str(world / "bank"), "--format", "parquet", "--output", str(out), "--k", "2"]) == 0
    metadata = json.loads(pq.read_schema(out).metadata[b"treeclip"])
    assert metadata["model"] == str(world / "model") and metadata["bank"] == str(world / "bank")
    assert metadata["bank_model"] == str(world / "model") and metadata["bank_templates"] == "photo"


def test_darwin_core_marks_the_primary_identification_and_skips_unreadable(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "dwc.csv"
    code = main(["predict", str(world / "photos"), "--model", str(world / "model"), "--bank", str(world / "bank"),
                 "--format", "dwc", "--output", str(out), "--k", "3"])
    assert code == 1  # broken.jpg
    with open(out, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert not any("broken" in r["associatedMedia"] for r in records)  # no record for an unreadable image
    problems = (tmp_path / "dwc.csv.problems.csv").read_text()
    assert "broken.jpg" in problems and "not an image" in problems
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["occurrenceID"], []).append(record)
    assert len(by_image) == 2
    for rows in by_image.values():
        remarks = [r["identificationRemarks"] for r in rows]
        assert remarks[0].startswith("primary identification") and len(rows) == 3
        assert all(r.startswith("alternative identification") for r in remarks[1:])
        assert len({r["identificationID"] for r in rows}) == 3


def test_recorded_model_ids_are_absolute(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world)
    out = tmp_path / "p.jsonl"
    assert main(["predict", "photos/small.png", "--model", "model", "--bank", "bank", "--format", "dwc",
                 "--output", str(out), "--k", "1"]) == 0
    text = out.read_text()
    assert f"model {os.path.join(world, 'model')};" in text


def test_a_bank_built_with_another_model_is_warned_about(world: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = export_tiny_model(tmp_path / "other", seed=1)
    assert main(["predict", str(world / "photos" / "small.png"), "--model", str(other), "--bank",
                 str(world / "bank"), "--k", "1"]) == 0
    err = capsys.readouterr().err
    assert f"the label bank was built with model {world / 'model'}, not {other}" in err
    assert main(["predict", str(world / "photos" / "small.png"), "--model", str(world / "model"), "--bank",
                 str(world / "bank"), "--k", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
