"""Compact label banks: fp16/int8 storage (memory-mapped, scored chunk by chunk), `treeclip bank prune` and
`treeclip bank info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict_fixtures import random_taxa, write_taxonomy_csv

from treeclip.cli import main
from treeclip.model.bank import BANK_SCALE, LabelBank, load_bank, save_bank
from treeclip.model.bank_storage import BankMatrix, quantize_columns
from treeclip.predict.quantize import bank_agreement, synthetic_queries
from treeclip.taxonomy import Rank, Taxon

DIM = 48


def _hierarchical_bank(taxa: list[Taxon], seed: int = 0) -> LabelBank:
    """Unit columns where species of a genus lie close together (cosine ~0.8), as in a trained bank."""
    rng = np.random.default_rng(seed)
    genus_vectors: dict[str, np.ndarray] = {}
    columns = []
    for taxon in taxa:
        base = genus_vectors.setdefault(taxon.lineage[5], rng.standard_normal(DIM))
        columns.append(base + 0.5 * rng.standard_normal(DIM))
    matrix = np.stack(columns, axis=1).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    return LabelBank(matrix, [t.lineage for t in taxa], [t.common for t in taxa], {"model": "test"})


@pytest.fixture(scope="module")
def fp32_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("banks") / "fp32"
    save_bank(_hierarchical_bank(random_taxa(300)), out)
    return out


@pytest.mark.parametrize(("dtype", "ratio", "atol"), [("fp16", 2, 2e-3), ("int8", 4 * DIM / (DIM + 4), 2e-2)])  # int8: + a float32 scale per column
def test_compact_storage_is_memory_mapped_and_scores_like_fp32(fp32_bank: Path, tmp_path: Path, dtype: str,
                                                              ratio: float, atol: float) -> None:
    reference = load_bank(fp32_bank)
    compact = load_bank(save_bank(reference, tmp_path / dtype, dtype=dtype))
    assert isinstance(compact.embeddings, np.memmap) and compact.embeddings.dtype == {"fp16": np.float16,
                                                                                     "int8": np.int8}[dtype]
    assert (tmp_path / dtype / BANK_SCALE).is_file() == (dtype == "int8")
    assert json.loads((tmp_path / dtype / "bank.json").read_text())["dtype"] == compact.embeddings.dtype.name
    assert reference.nbytes / compact.nbytes == pytest.approx(ratio, rel=0.02)
    queries = synthetic_queries(reference, 64)
    assert (queries @ compact.matrix() - queries @ reference.matrix()).abs().max() < atol
    assert compact.lineages == reference.lineages


def test_chunked_product_equals_the_dequantised_matrix() -> None:
    """Chunk edges (n not a multiple of the chunk) and per-column scales must line up."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((16, 61)).astype(np.float32) * rng.uniform(0.1, 3, 61).astype(np.float32)
    codes, scales = quantize_columns(matrix, chunk=10)
    assert np.abs(codes.astype(np.float32) * scales - matrix).max() <= scales.max() / 2 + 1e-6
    features = torch.from_numpy(rng.standard_normal((5, 16)).astype(np.float32))
    expected = features @ torch.from_numpy(codes.astype(np.float32) * scales)
    assert torch.allclose(features @ BankMatrix(codes, scales, chunk=7), expected, atol=1e-4)
    assert torch.allclose(features @ BankMatrix(matrix.astype(np.float16), None, chunk=7),
                          features @ torch.from_numpy(matrix.astype(np.float16).astype(np.float32)), atol=1e-4)


def test_resaving_an_int8_bank_keeps_its_codes_and_fp32_dequantises(fp32_bank: Path, tmp_path: Path) -> None:
    int8 = load_bank(save_bank(load_bank(fp32_bank), tmp_path / "a", dtype="int8"))
    again = load_bank(save_bank(int8.subset(range(10)), tmp_path / "b", dtype="int8"))
    assert np.array_equal(again.embeddings, np.asarray(int8.embeddings)[:, :10])
    back = load_bank(save_bank(int8, tmp_path / "c", dtype="fp32"))
    assert not (tmp_path / "c" / BANK_SCALE).exists()
    assert np.allclose(back.embeddings, np.asarray(int8.embeddings) * np.asarray(int8.scales), atol=1e-6)


def test_agreement_is_high_for_int8_and_low_for_a_wrong_bank(fp32_bank: Path, tmp_path: Path) -> None:
    reference = load_bank(fp32_bank)
    int8 = load_bank(save_bank(reference, tmp_path / "int8", dtype="int8"))
    queries = synthetic_queries(reference, 300)
    good = bank_agreement(reference, int8, queries)
    assert good["top1_species"] >= 0.97 and good["top1_genus"] >= good["top1_species"] - 0.01
    assert good["score_cosine"] > 0.999
    shuffled = LabelBank(np.ascontiguousarray(np.asarray(reference.embeddings)[:, ::-1]), reference.lineages,
                         reference.commons)
    bad = bank_agreement(reference, shuffled, queries)
    assert bad["top1_species"] < 0.2


def test_prune_by_rank_clade_and_checklist_to_int8(fp32_bank: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    reference = load_bank(fp32_bank)
    genus_only = sum(not lineage[Rank.SPECIES] for lineage in reference.lineages)
    assert genus_only == 3
    out = tmp_path / "species"
    assert main(["bank", "prune", str(fp32_bank), "--out", str(out), "--min-rank", "species", "--dtype", "int8"]) == 0
    pruned = load_bank(out)
    assert len(pruned) == len(reference) - genus_only and pruned.embeddings.dtype == np.int8
    assert f"kept {len(pruned)} of {len(reference)} taxa" in capsys.readouterr().err
    kingdom = reference.lineages[0][0]
    inside = [lineage for lineage in reference.lineages if lineage[0] == kingdom]
    outside = next(lineage for lineage in reference.lineages if lineage[0] != kingdom)
    checklist = write_taxonomy_csv([Taxon(lineage) for lineage in [*inside[:5], outside]], tmp_path / "checklist.csv")
    out2 = tmp_path / "clade"
    assert main(["bank", "prune", str(fp32_bank), "--out", str(out2), "--within", kingdom,
                 "--subset", str(checklist)]) == 0  # the intersection: the checklist's taxa inside the kingdom
    assert load_bank(out2).lineages == inside[:5]
    assert main(["bank", "prune", str(fp32_bank), "--out", str(tmp_path / "none"), "--within", "Nowhereia"]) == 2
    assert not (tmp_path / "none").exists()


def test_prune_to_a_prior_keeps_recorded_taxa(fp32_bank: Path, tmp_path: Path) -> None:
    from treeclip.predict.prior import LocationPrior, Occurrence  # noqa: PLC0415

    reference = load_bank(fp32_bank)
    recorded = [Taxon(lineage) for lineage in reference.lineages[:4]]
    LocationPrior.build([Occurrence(10.0 + i, 20.0, None, taxon) for i, taxon in enumerate(recorded)]).save(
        tmp_path / "prior.parquet")
    out = tmp_path / "local"
    assert main(["bank", "prune", str(fp32_bank), "--out", str(out), "--prior", str(tmp_path / "prior.parquet")]) == 0
    genera = {taxon.lineage[5] for taxon in recorded}  # a record names its genus too: genus-only rows stay
    expected = [lineage for lineage in reference.lineages
                if lineage in {t.lineage for t in recorded} or (not lineage[6] and lineage[5] in genera)]
    assert load_bank(out).lineages == expected and len(expected) > len(recorded)


def test_info_reports_memory_and_agreement(fp32_bank: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    save_bank(load_bank(fp32_bank), tmp_path / "int8", dtype="int8")
    assert main(["bank", "info", str(tmp_path / "int8"), "--reference", str(fp32_bank), "--queries", "200",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dtype"] == "int8" and info["taxa"] == 303
    assert info["reference_memory_bytes"] / info["memory_bytes"] == pytest.approx(4 * DIM / (DIM + 4), rel=0.05)
    assert info["top1_species"] >= 0.97 and info["queries"] == "200 synthetic"
    other = tmp_path / "other"
    save_bank(load_bank(fp32_bank).subset(range(100)), other)
    assert main(["bank", "info", str(other), "--reference", str(fp32_bank)]) == 2


def test_queries_sit_at_the_asked_cosine(fp32_bank: Path) -> None:
    reference = load_bank(fp32_bank)
    queries = synthetic_queries(reference, 200, cosine=0.4)
    best = (queries @ reference.matrix()).max(dim=1).values
    assert float(best.mean()) == pytest.approx(0.4, abs=0.08)
    assert torch.allclose(queries.norm(dim=1), torch.ones(200), atol=1e-5)
