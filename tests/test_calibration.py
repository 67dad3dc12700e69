"""Calibration without a model: temperature recovery, out-of-bank thresholds, storage, clade filters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from treeclip.errors import UsageError
from treeclip.predict.calibration import (CALIBRATION_FILE, DENSITY_FILE, ImageDensity, fit_calibration,
                                          fit_temperature, load_calibration, save_calibration)
from treeclip.predict.filters import clade_columns, filter_columns, split_clades
from treeclip.taxonomy import Taxon


def test_temperature_recovers_the_one_that_generated_the_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=generator) * 6.0
    labels = torch.multinomial(torch.softmax(logits / 3.0, dim=1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)  # overconfident by 3x → T ≈ 3


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_out_of_bank_thresholds_turn_away_outliers_and_few_in_bank_images(tmp_path) -> None:
    generator = torch.Generator().manual_seed(1)
    text = _unit(torch.randn(5, 16, generator=generator)).T  # [dim, n_taxa], unit columns
    labels = torch.arange(400) % 5
    features = _unit(text.T[labels] + 0.3 * torch.randn(400, 16, generator=generator))
    calibration = fit_calibration(features, text, labels, logit_scale=30.0, quantile=0.1)
    outliers = _unit(torch.randn(50, 16, generator=generator))
    inside = calibration.density.distance(features) > calibration.image_threshold
    assert inside.float().mean() == pytest.approx(0.05, abs=0.02)  # half the quantile each
    far = calibration.density.distance(outliers) > calibration.image_threshold
    unnamed = (outliers @ text).max(dim=1).values < calibration.out_of_bank_threshold
    assert far.float().mean() > 0.75 and (far | unnamed).float().mean() > 0.9
    assert calibration.metrics["nll_after"] <= calibration.metrics["nll_before"] + 1e-6
    save_calibration(tmp_path, calibration)
    loaded = load_calibration(tmp_path)
    assert loaded == calibration and np.allclose(loaded.density.precision, calibration.density.precision)
    assert set(json.loads((tmp_path / CALIBRATION_FILE).read_text())) >= {"temperature", "image_threshold"}


def test_stored_calibration_is_checked_and_never_unpickled(tmp_path) -> None:
    assert load_calibration(tmp_path) is None
    (tmp_path / CALIBRATION_FILE).write_text('{"temperature": -1}')
    with pytest.raises(UsageError, match="temperature"):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text('{"temperature": 1.5, "image_threshold": 3.0}')
    np.save(tmp_path / "x.npy", np.array([object()], dtype=object), allow_pickle=True)
    (tmp_path / DENSITY_FILE).write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(UsageError, match="unreadable calibration"):
        load_calibration(tmp_path)
    density = ImageDensity(np.zeros(2, np.float32), np.eye(2, dtype=np.float32))
    assert density.distance(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(25.0)


LINEAGES = [("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"),
            ("Animalia", "Arthropoda", "Arachnida", "Araneae", "Araneidae", "Araneus", "diadematus"),
            ("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"),
            ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina")]


def test_within_clades_and_checklists_compose() -> None:
    assert clade_columns(LINEAGES, split_clades(["Insecta,Arachnida"])).tolist() == [0, 1]
    assert clade_columns(LINEAGES, ["aves"]).tolist() == [2]
    assert clade_columns(LINEAGES, ["Parus major", "Rosa"]).tolist() == [2, 3]
    checklist = [Taxon(("",) * 5 + ("Danaus", "plexippus")), Taxon(("",) * 5 + ("Parus", "major"))]
    assert filter_columns(LINEAGES, checklist=checklist, within=["Arthropoda"]).tolist() == [0]
    assert filter_columns(LINEAGES) is None
    with pytest.raises(UsageError, match="insekta"):
        clade_columns(LINEAGES, ["Insecta", "Insekta"])
    with pytest.raises(UsageError, match="no taxon of the checklist lies within"):
        filter_columns(LINEAGES, checklist=checklist, within=["Rosa"])
