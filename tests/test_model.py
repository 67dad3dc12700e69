"""treeclip.model: tiny configs, creation from every kind of model id, checkpoints, hub-layout export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from open_clip.transformer import QuickGELU
from torchvision import transforms as T

from treeclip.errors import UsageError
from treeclip.train.checkpoint import capture_rng
from treeclip.model import (
    CONFIG_DIR,
    HUB_CONFIG,
    HUB_WEIGHTS,
    create_model,
    export_model,
    load_model,
    model_config,
    parse_model_id,
    read_hub_config,
)

ARCH = "treeclip-test"
CAPTIONS = ["a photo of Ptilotula penicillata.", "a photo of Animalia Chordata Aves with common name bird."]


@pytest.fixture(scope="module")
def tiny():
    model, preprocess_train, preprocess_val, tokenizer = create_model(ARCH)
    return model.eval(), preprocess_train, preprocess_val, tokenizer


def embeddings(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def normalize_of(transform) -> T.Normalize:
    return next(t for t in transform.transforms if isinstance(t, T.Normalize))


def max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_shipped_configs_are_registered_with_open_clip() -> None:
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    assert shipped == ["treeclip-small", "treeclip-test", "treeclip-tiny"]
    assert set(shipped) <= set(open_clip.list_models())
    tiny = model_config("treeclip-tiny")
    assert tiny == json.loads((CONFIG_DIR / "treeclip-tiny.json").read_text())
    vision, text = tiny["vision_cfg"], tiny["text_cfg"]
    assert (vision["image_size"], vision["patch_size"], vision["width"], vision["layers"]) == (32, 4, 128, 4)
    assert (text["context_length"], text["width"], text["layers"]) == (32, 128, 4)
    assert model_config("ViT-B-16")["vision_cfg"]["patch_size"] == 16


def test_tiny_model_forward_and_transforms(tiny) -> None:
    model, preprocess_train, preprocess_val, tokenizer = tiny
    image = Image.new("RGB", (50, 40), (10, 120, 30))
    batch = torch.stack([preprocess_val(image), preprocess_train(image)])
    assert batch.shape == (2, 3, 32, 32)
    tokens = tokenizer(CAPTIONS)
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        image_features, text_features, logit_scale = model(batch, tokens)
    assert image_features.shape == text_features.shape == (2, 32)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(logit_scale) == pytest.approx(1 / 0.07, rel=1e-4)


def test_export_then_plain_open_clip_gives_identical_embeddings(tiny, tmp_path: Path) -> None:
    model, _, _, tokenizer = tiny
    out = tmp_path / "exported"
    export_model(model, out_dir=out, model_name=ARCH)
    assert sorted(p.name for p in out.iterdir()) == [HUB_CONFIG, HUB_WEIGHTS]
    config = json.loads((out / HUB_CONFIG).read_text())
    assert config["model_cfg"] == model_config(ARCH)
    assert config["preprocess_cfg"]["mean"] == list(model.visual.preprocess_cfg["mean"])

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save({"images": images, "expected": embeddings(model, images, tokenizer(CAPTIONS))}, tmp_path / "io.pt")
    script = f"""
import sys, torch, open_clip
assert "treeclip" not in sys.modules
model, preprocess = open_clip.create_model_from_pretrained("local-dir:{out}")
tokenizer = open_clip.get_tokenizer("local-dir:{out}")
data = torch.load("{tmp_path / 'io.pt'}")
with torch.no_grad():
    got = model.eval().encode_image(data["images"]), model.encode_text(tokenizer({CAPTIONS!r}))
print(max(float((a - b).abs().max()) for a, b in zip(got, data["expected"])))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_exported_folder_loads_through_create_model(tiny, tmp_path: Path) -> None:
    model, _, _, tokenizer = tiny

    class Wrapper(torch.nn.Module):  # the shape of DDP: the real model under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    export_model(Wrapper(model), out_dir=tmp_path, model_name=ARCH)
    images, tokens = torch.rand(2, 3, 32, 32), tokenizer(CAPTIONS)
    for model_id in (tmp_path, f"local-dir:{tmp_path}"):
        loaded, _, preprocess_val, loaded_tokenizer = load_model(model_id)
        assert not loaded.training
        assert torch.equal(loaded_tokenizer(CAPTIONS), tokens)
        assert max_diff(embeddings(loaded, images, tokens), embeddings(model, images, tokens)) <= 1e-5
    assert model_config(tmp_path) == model_config(ARCH)


def test_preprocessing_comes_from_the_model_config(tiny, tmp_path: Path) -> None:
    model, preprocess_train, preprocess_val, _ = tiny
    default = model.visual.preprocess_cfg
    for transform in (preprocess_train, preprocess_val):
        assert tuple(normalize_of(transform).mean) == tuple(default["mean"]) == open_clip.OPENAI_DATASET_MEAN
    custom = {**default, "mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4]}
    export_model(model, out_dir=tmp_path, model_name=ARCH, preprocess_cfg=custom)
    _, train_tf, val_tf, _ = create_model(tmp_path)
    for transform in (train_tf, val_tf):
        normalize = normalize_of(transform)
        assert tuple(normalize.mean) == (0.5, 0.25, 0.125) and tuple(normalize.std) == (0.2, 0.3, 0.4)


def training_checkpoint(model: torch.nn.Module, model_section: dict) -> dict:
    """What treeclip.train writes: DDP-prefixed weights, optimizer, config and RNG states."""
    return {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "config": {"model": model_section, "batch_size": 8},
        "step": 12,
        "rng": [capture_rng(torch.device("cpu"))],
    }


def test_training_checkpoint_loads_by_name_or_embedded_config(tiny, tmp_path: Path) -> None:
    model, _, _, tokenizer = tiny
    images, tokens = torch.rand(2, 3, 32, 32), tokenizer(CAPTIONS)
    expected = embeddings(model, images, tokens)
    by_name = tmp_path / "by_name.pt"
    torch.save(training_checkpoint(model, {"name": ARCH, "pretrained": None}), by_name)
    custom_pp = {"mean": [0.1, 0.2, 0.3], "std": [0.9, 0.8, 0.7]}
    embedded = tmp_path / "embedded.pt"
    torch.save(training_checkpoint(model, {"model_cfg": model_config(ARCH), "preprocess_cfg": custom_pp}), embedded)

    for path in (by_name, embedded):
        loaded, _, preprocess_val, _ = load_model(path)
        assert max_diff(embeddings(loaded, images, tokens), expected) <= 1e-6
    assert tuple(normalize_of(preprocess_val).mean) == (0.1, 0.2, 0.3)
    assert model_config(by_name) == model_config(embedded) == model_config(ARCH)

    initialised, *_ = create_model(ARCH, pretrained=str(by_name))
    assert max_diff(embeddings(initialised.eval(), images, tokens), expected) <= 1e-6
    with pytest.raises(UsageError, match="different architecture"):
        create_model("treeclip-tiny", pretrained=str(embedded))
    export_model(loaded, out_dir=tmp_path / "export", model_name=str(embedded))
    assert json.loads((tmp_path / "export" / HUB_CONFIG).read_text())["preprocess_cfg"]["mean"] == [0.1, 0.2, 0.3]


def test_quick_gelu_follows_the_weights(tiny, tmp_path: Path) -> None:
    assert model_config("ViT-B-16", pretrained="openai")["quick_gelu"] is True
    assert "quick_gelu" not in model_config("ViT-B/16")
    model, _, _, tokenizer = tiny
    path = tmp_path / "quick.pt"
    torch.save(training_checkpoint(model, {"model_cfg": {**model_config(ARCH), "quick_gelu": True}}), path)
    quick, *_ = load_model(path)
    assert any(isinstance(module, QuickGELU) for module in quick.modules())
    export_model(quick, out_dir=tmp_path / "out", model_name=ARCH)
    assert read_hub_config(tmp_path / "out")["model_cfg"]["quick_gelu"] is True
    reloaded, *_ = load_model(tmp_path / "out")
    images, tokens = torch.rand(2, 3, 32, 32), tokenizer(CAPTIONS)
    assert max_diff(embeddings(reloaded, images, tokens), embeddings(quick, images, tokens)) <= 1e-5
    assert max_diff(embeddings(quick, images, tokens), embeddings(model, images, tokens)) > 1e-4


def test_bad_model_ids_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown model 'no-such-arch'"):
        parse_model_id("no-such-arch")
    with pytest.raises(UsageError, match="no open_clip_config.json"):
        create_model(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        create_model(tmp_path / "notes.txt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(UsageError, match="not a treeclip training checkpoint"):
        create_model(tmp_path / "plain.pt")
    torch.save({"model": {}, "config": {"lr": 1}}, tmp_path / "nameless.pt")
    with pytest.raises(UsageError, match="names no architecture"):
        create_model(tmp_path / "nameless.pt")
    with pytest.raises(UsageError, match="applies only to architecture names"):
        create_model("hf-hub:imageomics/bioclip", pretrained="openai")
    assert parse_model_id("hf-hub:imageomics/bioclip").kind == "hub"


@pytest.mark.network
def test_released_bioclip_from_the_hub() -> None:
    model, _, preprocess_val, tokenizer = load_model("hf-hub:imageomics/bioclip")
    assert model_config("hf-hub:imageomics/bioclip")["vision_cfg"]["patch_size"] == 16
    image = preprocess_val(Image.new("RGB", (300, 200), (90, 140, 60))).unsqueeze(0)
    with torch.no_grad():
        assert model.encode_image(image).shape == (1, 512)
        assert model.encode_text(tokenizer(CAPTIONS)).shape == (2, 512)


@pytest.mark.network
def test_openai_weights_for_bioclip_initialisation() -> None:
    model, *_ = create_model("ViT-B-16", pretrained="openai")
    assert model.visual.preprocess_cfg["mean"] == open_clip.OPENAI_DATASET_MEAN
