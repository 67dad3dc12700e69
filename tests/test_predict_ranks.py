"""Rank aggregation, roll-up, checklists, custom labels and agreement with plain open_clip."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.errors import UsageError
from treeclip.model import load_model
from treeclip.model.bank import LabelBank
from treeclip.predict.classifier import CustomLabelsClassifier, TreeOfLifeClassifier, tol_columns
from treeclip.predict.filters import checklist_columns
from treeclip.predict.quantize import quantize_int8
from treeclip.predict.ranks import RankIndex
from treeclip.predict.rollup import rollup
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, get_templates


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("world")
    model_dir = export_tiny_model(root / "model")
    taxa = random_taxa(120)
    bank = tiny_bank(model_dir, taxa, root / "bank")
    model, _, preprocess, tokenizer = load_model(model_dir)
    return {"dir": model_dir, "taxa": taxa, "bank": bank, "model": model, "preprocess": preprocess,
            "tokenizer": tokenizer}


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(n)]


def _slow_rank_sums(probs: np.ndarray, lineages: list[tuple[str, ...]], rank: int) -> dict[tuple, float]:
    """The per-image loop pybioclip runs: a dict keyed by the lineage prefix, summing species probabilities."""
    sums: dict[tuple, float] = collections.defaultdict(float)
    for column, lineage in enumerate(lineages):
        sums[lineage[: rank + 1]] += float(probs[column])
    return sums


def test_rank_sums_equal_a_slow_reference(world: dict) -> None:
    lineages = world["bank"].lineages
    index = RankIndex(lineages)
    probs = torch.softmax(torch.from_numpy(np.random.default_rng(3).normal(size=(4, len(lineages)))) * 3, dim=1)
    levels = index.aggregate_all(probs)
    for rank in Rank:
        fast = index.aggregate(probs, rank)
        assert torch.allclose(fast, levels[rank])
        groups = index.groups[rank]
        for image in range(len(probs)):
            slow = _slow_rank_sums(probs[image].numpy(), lineages, rank)
            if rank == Rank.SPECIES:
                assert np.allclose(fast[image].numpy(), probs[image].numpy())
                continue
            assert len(slow) == len(groups)
            for group, column in enumerate(groups.representative):
                assert fast[image, group].item() == pytest.approx(slow[lineages[column][: rank + 1]], abs=1e-6)


def test_rank_predictions_match_the_reference_ranking(world: dict) -> None:
    clf = TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=world["bank"])
    images = _images(2, seed=1)
    pixels = torch.stack([world["preprocess"](image) for image in images])
    probs = clf.probabilities(clf.encode_images(pixels)).numpy()
    rows = clf.predict(images, rank="genus", k=3, min_prob=0.0)
    assert [list(row) for row in rows][0] == ["file_name", *tol_columns(Rank.GENUS), "score"]
    for image in range(2):
        slow = _slow_rank_sums(probs[image], world["bank"].lineages, Rank.GENUS)
        expected = sorted(slow.values(), reverse=True)[:3]
        got = [row["score"] for row in rows if row["file_name"] == str(image)]
        assert got == pytest.approx(expected, abs=1e-6)
        top = rows[image * 3]
        assert slow[tuple(top[name] for name in RANK_NAMES[:6])] == pytest.approx(top["score"], abs=1e-6)


def test_species_rows_follow_pybioclip(world: dict) -> None:
    clf = TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=world["bank"])
    rows = clf.predict(_images(1, seed=2), k=4)
    assert len(rows) == 4
    assert list(rows[0]) == ["file_name", "kingdom", "phylum", "class", "order", "family", "genus",
                             "species_epithet", "species", "common_name", "score"]
    assert rows[0]["species"] == f"{rows[0]['genus']} {rows[0]['species_epithet']}"
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_rollup_rules() -> None:
    lineages = [("A", "B", "C", "D", "E", "G1", "x"), ("A", "B", "C", "D", "E", "G1", "y"),
                ("A", "B", "C", "D", "E", "G2", "z"), ("A", "B", "C", "D", "E", "G2", "")]
    index = RankIndex(lineages)
    named = [groups.named for groups in index.groups]
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02],  # sure of one species
                          [0.45, 0.45, 0.05, 0.05],  # two sibling species: sure of the genus only
                          [0.1, 0.1, 0.1, 0.7]])  # mass on an unnamed species: genus G2, never species ""
    answers = rollup(index.aggregate_all(probs), named, 0.7)
    assert [(a.rank, round(a.score, 4)) for a in answers] == [(6, 0.9), (5, 0.9), (5, 0.8)]
    assert lineages[index.groups[5].representative[answers[1].group]][5] == "G1"
    assert rollup(index.aggregate_all(probs), named, 0.99)[0].rank == 4  # the family E holds all the mass
    two_kingdoms = RankIndex([("A",) + ("",) * 6, ("Z",) + ("",) * 6])
    unsure = rollup(two_kingdoms.aggregate_all(torch.tensor([[0.5, 0.5]])), [g.named for g in two_kingdoms.groups], 0.7)
    assert unsure[0].rank == -1 and unsure[0].score == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rollup(index.aggregate_all(probs), named, 0.0)


class GridColourModel(torch.nn.Module):
    """A stand-in CLIP image tower with the geometry of a trained one: features share a large common
    component and differ by the picture's coarse colour layout (4x4 grid, per-channel centred). A random
    tiny ViT cannot show the effect: it maps every image to nearly the same vector (cosine ~0.98)."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = F.adaptive_avg_pool2d(pixels, 4).flatten(2)
        layout = (grid - grid.mean(dim=2, keepdim=True)).flatten(1)
        return torch.cat([layout, torch.full((len(pixels), 1), 10.0)], dim=1)


def _pattern(bits: np.ndarray) -> Image.Image:
    return Image.fromarray((bits.reshape(3, 4, 4).transpose(1, 2, 0) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1))


def test_noise_images_get_no_confident_species(world: dict) -> None:
    rng = np.random.default_rng(7)
    genera = [rng.integers(0, 2, 48) for _ in range(40)]
    species_bits, lineages = [], []
    for g, base in enumerate(genera):
        for s in range(3):
            bits = base.copy()
            bits[rng.choice(48, 4, replace=False)] ^= 1  # siblings differ in a few cells
            species_bits.append(bits)
            lineages.append(("Animalia", "P", "C", f"O{g % 4}", f"F{g % 8}", f"G{g}", f"s{s}"))
    model, preprocess = GridColourModel(), world["preprocess"]
    prototypes = [_pattern(bits) for bits in species_bits]
    vectors = F.normalize(model.encode_image(torch.stack([preprocess(p) for p in prototypes])), dim=-1)
    bank = LabelBank(vectors.T.numpy().copy(), lineages, [""] * len(lineages))
    clf = TreeOfLifeClassifier(model=model, preprocess=preprocess, bank=bank)
    noise = _images(6, seed=9)
    sure = clf.predict(prototypes[:6], rollup=0.7)
    assert [row["rank"] for row in sure] == ["species"] * 6
    assert [row["species"] for row in sure] == [f"G{i // 3} s{i % 3}" for i in range(6)]
    blended = [Image.blend(prototypes[0], prototypes[1], 0.5)]
    assert clf.predict(blended, rollup=0.7)[0]["rank"] in ("genus", "family", "order")
    for row in clf.predict(noise, rollup=0.7):
        assert row["rank"] not in ("species", "genus"), row
    assert max(row["score"] for row in clf.predict(noise, k=1)) < 0.5  # spread over many species


def test_checklist_restricts_and_renormalises(world: dict) -> None:
    bank, taxa = world["bank"], world["taxa"]
    binomial = Taxon(("", "", "", "", "", taxa[0].genus.upper(), taxa[0].species))  # case-insensitive
    family = Taxon(("", "", "", "", taxa[5].family))
    columns = checklist_columns(bank.lineages, [binomial, family])
    expected = [i for i, lin in enumerate(bank.lineages)
                if (lin[5], lin[6]) == (taxa[0].genus, taxa[0].species) or lin[4] == taxa[5].family]
    assert columns.tolist() == expected
    full = TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=bank)
    listed = TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=bank,
                                  checklist=[binomial, family])
    image = _images(1, seed=4)
    rows = listed.predict(image, k=len(columns))
    assert {(r["genus"], r["species_epithet"]) for r in rows} <= {bank.lineages[i][5:] for i in columns}
    assert sum(r["score"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    pixels = world["preprocess"](image[0]).unsqueeze(0)
    p_full = full.probabilities(full.encode_images(pixels))[0, torch.from_numpy(columns)]
    assert sorted(r["score"] for r in rows) == pytest.approx(sorted((p_full / p_full.sum()).tolist()), abs=1e-5)
    with pytest.raises(UsageError, match="matches no taxon"):
        TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=bank,
                             checklist=[Taxon(("Nowhere",))]).predict(image)


def test_custom_labels_cache_and_bins(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = ["red fox", "grey wolf", "barn owl", "snowy owl"]
    kwargs = {"model": world["model"], "preprocess": world["preprocess"], "tokenizer": world["tokenizer"]}
    plain = CustomLabelsClassifier(labels=labels, **kwargs)
    binned = CustomLabelsClassifier(labels=labels, bins={"red fox": "canid", "grey wolf": "canid",
                                                         "barn owl": "owl", "snowy owl": "owl"}, **kwargs)
    calls = []
    original = world["model"].encode_text
    monkeypatch.setattr(world["model"], "encode_text", lambda tokens: calls.append(1) or original(tokens))
    images = _images(3, seed=5)
    rows = plain.predict(images)
    first = len(calls)
    plain.predict(images)
    assert first > 0 and len(calls) == first  # the label embeddings are computed once, then cached
    by_image = collections.defaultdict(dict)
    for row in rows:
        by_image[row["file_name"]][row["classification"]] = row["score"]
    for row in binned.predict(images):
        members = [label for label in labels if binned.bins[label] == row["classification"]]
        assert row["score"] == pytest.approx(sum(by_image[row["file_name"]][m] for m in members), abs=1e-6)


def test_zero_shot_logits_agree_with_plain_open_clip(world: dict) -> None:
    labels = ["Danaus plexippus", "Apis mellifera", "Quercus robur"]
    clf = CustomLabelsClassifier(model=world["model"], preprocess=world["preprocess"],
                                 tokenizer=world["tokenizer"], labels=labels)
    images = _images(3, seed=6)
    ours = {(r["file_name"], r["classification"]): r["score"] for r in clf.predict(images)}
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{world['dir']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{world['dir']}")
    model.eval()
    with torch.no_grad():
        image_features = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        text = []
        for label in labels:
            tokens = tokenizer([template.format(label) for template in get_templates("openai")])
            text.append(F.normalize(F.normalize(model.encode_text(tokens), dim=-1).mean(dim=0), dim=-1))
        theirs = (model.logit_scale.exp() * image_features @ torch.stack(text).T).softmax(dim=1)
    for i in range(3):
        for j, label in enumerate(labels):
            assert ours[(str(i), label)] == pytest.approx(theirs[i, j].item(), abs=1e-5)


def test_int8_model_stays_close_to_fp32(world: dict) -> None:
    pixels = torch.stack([world["preprocess"](image) for image in _images(4, seed=8)])
    quantized = quantize_int8(world["model"])
    with torch.no_grad():
        a = F.normalize(world["model"].encode_image(pixels), dim=-1)
        b = F.normalize(quantized.encode_image(pixels), dim=-1)
    assert (a * b).sum(dim=1).min() > 0.99
    assert any(type(m).__module__.startswith("torch.ao") for m in quantized.visual.modules())
    assert not any(type(m).__module__.startswith("torch.ao") for m in world["model"].modules())


def test_bank_dimension_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not match"):
        LabelBank(np.zeros((4, 3), dtype=np.float32), [("A",) + ("",) * 6] * 2, ["", ""])


@pytest.mark.network
@pytest.mark.parametrize("model_id", ["hf-hub:imageomics/bioclip", "hf-hub:imageomics/bioclip-2"])
def test_released_models_and_banks(model_id: str) -> None:
    clf = TreeOfLifeClassifier.from_pretrained(model_id)
    assert len(clf.bank) > 400_000 and clf.bank.dim == clf.text_features.shape[0]
    rows = clf.predict(_images(1, seed=11), rank="family", k=3)
    assert len(rows) == 3 and rows[0]["kingdom"] and 0 < rows[0]["score"] <= 1
