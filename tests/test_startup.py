"""Start-up of a one-image prediction: a model whose weights come from a file is built without random
initialisation (most of its load time), and still holds exactly the file's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_predict_fixtures import export_tiny_model

from treeclip.errors import UsageError
from treeclip.model import HUB_WEIGHTS, create_model, load_model


def test_loading_weights_skips_random_initialisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = export_tiny_model(tmp_path / "model")
    calls = []
    original = torch.nn.init.normal_
    monkeypatch.setattr(torch.nn.init, "normal_", lambda tensor, *a, **k: calls.append(1) or original(tensor, *a, **k))
    model, _, _, _ = load_model(model_dir)
    assert not calls  # the file's weights overwrite every parameter, so none is drawn at random first
    saved = safetensors.torch.load_file(str(model_dir / HUB_WEIGHTS))
    state = model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert torch.nn.init.normal_ is not original and callable(torch.nn.init.normal_)  # our spy is back in place
    create_model("treeclip-test")  # training from scratch still initialises at random
    assert calls


def test_model_folder_without_weights_is_a_usage_error(tmp_path: Path) -> None:
    model_dir = export_tiny_model(tmp_path / "model")
    (model_dir / HUB_WEIGHTS).unlink()
    with pytest.raises(UsageError, match="no weights"):
        load_model(model_dir)


def test_training_may_start_from_an_architecture_folder(tmp_path: Path) -> None:
    """The demo trains from a folder holding only open_clip_config.json: allowed (random init) when asked."""
    model_dir = export_tiny_model(tmp_path / "model")
    (model_dir / HUB_WEIGHTS).unlink()
    torch.manual_seed(0)
    first = create_model(model_dir, config_only_ok=True)[0].state_dict()
    torch.manual_seed(1)
    second = create_model(model_dir, config_only_ok=True)[0].state_dict()
    assert any(not torch.equal(first[name], second[name]) for name in first)  # really initialised at random


def test_a_folder_with_weights_loads_them_even_when_config_only_is_allowed(tmp_path: Path) -> None:
    model_dir = export_tiny_model(tmp_path / "model")
    expected = load_model(model_dir)[0].state_dict()
    loaded = create_model(model_dir, config_only_ok=True)[0].state_dict()
    assert all(torch.equal(expected[name], loaded[name]) for name in expected)
