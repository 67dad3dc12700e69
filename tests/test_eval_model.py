"""Features, cache, zero-shot and the `treeclip eval` command with a tiny untrained model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_eval_benchmarks import write_synth
from test_images import HEADER_CASES, REFUSAL, header_case_files, header_case_pil
from test_predict_fixtures import odd_photos
from treeclip.cli import main
from treeclip.errors import UsageError
from treeclip.eval.benchmarks import load_task
from treeclip.eval.features import FeatureCache, encode_images, model_fingerprint
from treeclip.eval.runner import EvalModel, EvalSettings, evaluate
from treeclip.eval.zeroshot import class_embeddings, zero_shot_eval
from treeclip.model import create_model, export_model

ARCH = "treeclip-test"


@pytest.fixture(scope="module")
def tiny() -> tuple:
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = create_model(ARCH)
    return model.eval(), preprocess, tokenizer


def test_image_features_are_normalised_and_batch_independent(tiny: tuple, tmp_path: Path) -> None:
    model, preprocess, _ = tiny
    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    for i, path in enumerate(paths):
        Image.new("RGB", (40, 28), (50 * i, 20, 200 - 30 * i)).save(path)
    ticks: list[int] = []
    features = encode_images(model, preprocess, paths, batch_size=2, progress=ticks.append)
    assert features.shape == (5, 32) and ticks == [2, 2, 1]
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    single = encode_images(model, preprocess, [Image.open(paths[3])], batch_size=1)
    assert np.allclose(single[0], features[3], atol=1e-5)


@pytest.mark.parametrize("kind", ["rgba", "i16", "palette", "la", "rotated"])
def test_features_of_a_pil_image_equal_its_files(tiny: tuple, tmp_path: Path, kind: str) -> None:
    """Transparency on white, 16-bit scaled, EXIF orientation: as the decoder does for the file."""
    model, preprocess, _ = tiny
    path = odd_photos(tmp_path)[kind]
    from_file, from_pil = encode_images(model, preprocess, [path, Image.open(path)], batch_size=2)
    assert np.allclose(from_pil, from_file, atol=1e-5)


def test_class_embeddings_average_normalised_templates(tiny: tuple) -> None:
    model, _, tokenizer = tiny
    templates = ("a photo of {}.", "a drawing of a {}.")
    got = class_embeddings(model, tokenizer, ["Ga alba", "Gb dura"], templates, batch_size=3)
    with torch.no_grad():
        each = F.normalize(model.encode_text(tokenizer(["a photo of Gb dura.", "a drawing of a Gb dura."])), dim=-1)
    expected = F.normalize(each.mean(dim=0), dim=-1).numpy()
    assert got.shape == (2, 32) and np.allclose(got[1], expected, atol=1e-5)


def test_zero_shot_eval_by_hand() -> None:
    images = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = zero_shot_eval(images, np.array([0, 0, 1]), classes)
    assert result.predictions.tolist() == [0, 1, 1] and result.top1 == pytest.approx(2 / 3) and result.top5 == 1.0
    assert result.per_class.tolist() == [0.5, 1.0]


def test_cache_hits_skip_computation(tmp_path: Path) -> None:
    cache, calls = FeatureCache(tmp_path / "cache"), []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    first = cache.get_or_compute({"model": "m", "data": "d"}, compute)
    second = cache.get_or_compute({"model": "m", "data": "d"}, compute)
    cache.get_or_compute({"model": "m", "data": "other"}, compute)
    assert len(calls) == 2 and np.array_equal(first, second)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert len(FeatureCache(None).get_or_compute({"a": "b"}, compute)) == 2 and len(calls) == 3


def test_model_fingerprint_tracks_weights_and_files(tiny: tuple, tmp_path: Path) -> None:
    model = tiny[0]
    before = model_fingerprint(ARCH, model)
    clone = create_model(ARCH)[0]
    assert model_fingerprint(ARCH, clone) != before  # another random initialisation
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    assert model_fingerprint(str(weights)).startswith("file:")


def test_evaluate_on_synth(tiny: tuple, tmp_path: Path) -> None:
    model, preprocess, tokenizer = tiny
    bench = load_task(f"synth:{write_synth(tmp_path / 'world')}:seen")
    result = evaluate(EvalModel("tiny", model_fingerprint(ARCH, model), model, preprocess, tokenizer), bench,
                      cache=FeatureCache(None), settings=EvalSettings(shots=(0, 1), templates="photo"))
    assert set(result) >= {"zero_shot", "simpleshot", "linear_probe", "hierarchy"}
    assert 0.0 <= result["zero_shot"]["taxon_com"]["top1"] <= result["zero_shot"]["taxon_com"]["top5"] == 1.0
    assert len(result["simpleshot"]["1"]["runs"]) == 5
    assert set(result["hierarchy"]["rank_accuracy"]) == {"kingdom", "phylum", "class", "order", "family", "genus",
                                                         "species"}


def test_eval_command_writes_reports_and_reuses_cache(tiny: tuple, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = export_model(tiny[0], out_dir=tmp_path / "model", model_name=ARCH)
    world = write_synth(tmp_path / "world")
    out, cache = tmp_path / "report", tmp_path / "cache"
    argv = ["eval", "--model", f"mixed={model_dir}", "--task", f"seen=synth:{world}:seen,unseen=synth:{world}:unseen",
            "--shots", "0,1", "--text-type", "taxon_com,com", "--templates", "photo", "--out", str(out),
            "--cache-dir", str(cache), "--tsne"]
    assert main(argv) == 0
    assert "report:" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for section in ("## Accuracy", "## Train type × test type", "## Linear probe", "## Hierarchy", "| mixed |"):
        assert section in report
    results = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in results] == ["seen", "unseen"]
    assert "| mixed | zero-shot |" in report and "| Model | Setting | seen | unseen | Mean |" in report
    assert "zero_shot_top1,com" in (out / "results.csv").read_text()
    assert list((out / "plots").glob("tsne_mixed_*.png"))
    cached = sorted(p.name for p in cache.glob("*.npy"))
    assert main(argv) == 0
    assert sorted(p.name for p in cache.glob("*.npy")) == cached
    assert json.loads((out / "results.json").read_text()) == results


def test_eval_command_bad_task_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--model", ARCH, "--task", f"rare:{tmp_path}", "--out", str(tmp_path / "o"), "--no-cache"]
    assert main(argv) == 2
    assert "metadata.csv not found" in capsys.readouterr().err
    assert main([*argv[:4], "mystery:x", *argv[5:]]) == 2
    assert main([*argv, "--shots", "one"]) == 2


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_eval_refuses_the_images_predict_refuses(tiny: tuple, tmp_path: Path, name: str) -> None:
    """Files and PIL images: refused (one UsageError naming the image and why) exactly where the shard writer,
    predict and the device decoder refuse them (tests/test_images.py); before, a PIL image skipped the check."""
    model, preprocess, _ = tiny
    path = header_case_files(tmp_path)[name]
    for item, label in ((path, str(path)), (header_case_pil(path), "#0 (in-memory image)")):
        if HEADER_CASES[name][3] is None:
            with pytest.raises(UsageError, match=f"cannot read image {re.escape(label)}: ({REFUSAL})"):
                encode_images(model, preprocess, [item])
        else:
            assert encode_images(model, preprocess, [item]).shape == (1, 32)
