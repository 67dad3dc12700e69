"""`treeclip probe`: a linear / prototype head on frozen embeddings, saved with the model, used by predict."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from _shards import image
from treeclip.cli import main
from treeclip.model import create_model, export_model
from treeclip.predict.probe import HEAD_INFO, HEAD_WEIGHTS, ProbeHead, fit_head, fit_linear, held_out_split

CLASSES = ("Corvus alba", "Rosa rubra", "Ptilotula nigra")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("treeclip-test")[0]
    return export_model(model, out_dir=tmp_path_factory.mktemp("model"), model_name="treeclip-test")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three class folders of 10 generated photos each (colour and stripes identify the class)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir()
        for n in range(10):
            (root / name / f"{n}.jpg").write_bytes(image(index * 3, rng, size=48))
    (root / "empty").mkdir()
    return root


def test_probe_is_saved_with_the_model_and_used_by_predict(model_dir: Path, photos: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "probed"
    assert main(["probe", str(photos), "--model", str(model_dir), "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr()
    assert "30 images in 3 classes" in printed.out and "empty" in printed.err
    assert (out / HEAD_INFO).is_file() and (out / HEAD_WEIGHTS).is_file() and (out / "open_clip_config.json").is_file()
    head = ProbeHead.load(out)
    assert head.classes == sorted(CLASSES) and head.info["held_out_images"] == 6
    assert head.info["held_out_accuracy"] >= 0.8  # colours separate the classes even under random weights
    table = tmp_path / "labels.csv"
    photo = photos / "Rosa rubra" / "3.jpg"
    assert main(["predict", str(photo), str(photos / "Corvus alba" / "1.jpg"), "--model", str(out), "--k", "2",
                 "-o", str(table), "--workers", "0"]) == 0
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert list(rows[0])[:3] == ["file_name", "classification", "score"] and len(rows) == 4
    best = {row["file_name"]: row["classification"] for row in reversed(rows)}
    assert best == {str(photo): "Rosa rubra", str(photos / "Corvus alba" / "1.jpg"): "Corvus alba"}
    assert main(["predict", str(photo), "--model", str(out), "--rollup", "0.5"]) == 2  # rollup needs a bank


def test_prototype_head_in_the_model_folder_itself(model_dir: Path, photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert main(["probe", str(photos), "--model", str(folder), "--out", str(folder), "--kind", "prototype",
                 "--holdout", "0", "--workers", "0"]) == 0
    head = ProbeHead.load(folder)
    assert head.kind == "prototype" and "held_out_accuracy" not in head.info
    assert torch.allclose(head.weight.norm(dim=1), head.weight.norm(dim=1)[0].expand(3))  # scaled unit means


def test_probe_usage_errors(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "only" / "Rosa rubra").mkdir(parents=True)
    (tmp_path / "only" / "Rosa rubra" / "a.jpg").write_bytes(image(0, np.random.default_rng(0)))
    assert main(["probe", str(tmp_path / "only"), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert main(["probe", str(tmp_path / "nowhere"), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2


def test_binary_linear_probe_scores_the_right_class() -> None:
    """scikit-learn keeps one row for two classes; the head must still give each class its own logit."""
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    labels = (features[:, 0] > 0).long()
    weight, bias = fit_linear(features, labels, 2, c=100.0)
    predictions = (features @ weight.T + bias).argmax(dim=1)
    assert (predictions == labels).float().mean() >= 0.95
    head = fit_head(features, labels, ["neg", "pos"], kind="prototype", logit_scale=10.0)
    assert (head.logits(features).argmax(dim=1) == labels).float().mean() >= 0.8


def test_held_out_split_keeps_every_class_fitted() -> None:
    labels = torch.tensor([0] * 10 + [1] * 1 + [2] * 3)
    fit, held = held_out_split(labels, 0.2)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(14))
    assert set(labels[fit].tolist()) == {0, 1, 2} and labels[held].tolist().count(0) == 2
