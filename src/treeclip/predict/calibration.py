"""How sure: temperature scaling and the out-of-bank threshold, fitted on labelled images, stored with the bank.

Temperature scaling (Guo et al., 2017) divides the logits ``logit_scale * image @ text`` by one scalar ``T``
fitted to minimise the negative log-likelihood of the true species on a labelled set; ranking is unchanged
(top-1 stays the same), only how sure the probabilities are.

Out of bank: two scores of how unlike the labelled organism images an image is, each with a threshold at half of
`quantile` of the labelled images (so about `quantile` of images like them abstain): its best cosine similarity
to any bank text (below the threshold: it matches no name well), and the Mahalanobis distance of its embedding
(before L2 normalisation: its length carries part of the signal) from the labelled images' embeddings (mean and
covariance, the covariance shrunk towards a scaled identity with weight ``d / (n + d)`` for ``n`` images of
dimension ``d``; above the threshold: it looks like no photo of the bank's organisms, e.g. a plain texture). Roll-up answers such an image "not-in-bank".

Stored in the bank folder (`save_calibration` / `load_calibration`): ``calibration.json`` (temperature,
thresholds, what they were fitted on) and ``calibration.npz`` (the embedding mean and inverse covariance;
read without pickle). The classifier loads them with the bank; its rows then use the calibrated probabilities.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treeclip.atomic import atomic_write
from treeclip.errors import UsageError
from treeclip.formats import PATH_ALIASES, TAXON_ROLES, Problem, open_table, resolve, taxon_of
from treeclip.taxonomy import Rank, Taxon

from .prior import taxon_key

log = logging.getLogger(__name__)

CALIBRATION_FILE, DENSITY_FILE = "calibration.json", "calibration.npz"
DEFAULT_QUANTILE = 0.05


@dataclass
class LabelledSet:
    """Labelled images matched to bank columns, and what could not be used (counted by reason)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_labelled(table_path: str | os.PathLike[str], lineages: list[tuple[str, ...]], *,
                  split: str | None = None) -> LabelledSet:
    """Images of a catalog-like table (an image path column, relative to the table's folder, and rank columns,
    e.g. `treeclip synth`'s catalog.csv) whose species is a column of the bank (matched as "Genus epithet");
    with `split`, only rows of that ``split``."""
    table = open_table(table_path, what="labelled table")
    columns = {**resolve(table.header, TAXON_ROLES, where=str(table.path)), "path": table.find(*PATH_ALIASES),
               "split": table.find("split")}
    if columns["path"] is None or not any(rank in columns for rank in ("species", "scientific")):
        raise UsageError(f"{table.path}: a labelled table needs an image path column (path) and species names "
                         f"(species, or genus + epithet, or scientificName); its columns: {', '.join(table.header)}")
    if split is not None and columns["split"] is None:
        raise UsageError(f"--split {split}: {table.path} has no split column")
    column_of = {taxon_key(lineage, Rank.SPECIES): i for i, lineage in enumerate(lineages)}
    found = LabelledSet()
    for row in table.rows(columns):
        if isinstance(row, Problem):
            found.skip("unreadable row")
            continue
        fields = row[1]
        if split is not None and fields["split"] != split:
            continue
        taxon = taxon_of({role: fields[role] for role in TAXON_ROLES if role in fields}, table.where(row[0]))
        label = column_of.get(taxon_key(taxon.lineage, Rank.SPECIES)) if isinstance(taxon, Taxon) else None
        if label is None:
            found.skip("species not in the bank" if isinstance(taxon, Taxon) else "no usable taxon")
            continue
        found.paths.append(str(Path(table.path).parent / fields["path"]))
        found.labels.append(label)
    return found


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and out-of-bank threshold, with what they were fitted on."""

    temperature: float = 1.0
    out_of_bank_threshold: float | None = None  # best image-text cosine below it: not in bank
    image_threshold: float | None = None  # squared Mahalanobis distance above it: not in bank
    quantile: float = DEFAULT_QUANTILE
    fitted_on: int = 0
    model: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    density: ImageDensity | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ImageDensity:
    """Mean and (shrunk) inverse covariance of labelled images' embeddings."""

    mean: np.ndarray  # [dim] float32
    precision: np.ndarray  # [dim, dim] float32

    @classmethod
    def fit(cls, features: torch.Tensor) -> ImageDensity:
        n, dim = features.shape
        x = features.double()
        centred = x - x.mean(dim=0)
        covariance = centred.T @ centred / max(1, n - 1)
        shrink = dim / (n + dim)
        target = torch.eye(dim, dtype=torch.float64) * covariance.diagonal().mean()
        precision = torch.linalg.inv((1 - shrink) * covariance + shrink * target)
        return cls(x.mean(dim=0).float().numpy(), precision.float().numpy())

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each row of ``[n, dim]`` features."""
        centred = features.float() - torch.from_numpy(self.mean).to(features.device)
        return ((centred @ torch.from_numpy(self.precision).to(features.device)) * centred).sum(dim=1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, steps: int = 100) -> float:
    """The temperature minimising the mean NLL of `labels` under ``softmax(logits / T)`` (LBFGS on log T)."""
    if len(labels) == 0:
        raise UsageError("calibration needs at least one labelled image that matches a bank taxon")
    logits, labels = logits.detach().float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise RuntimeError(f"temperature fit diverged ({temperature})")
    return temperature


def fit_calibration(embeddings: torch.Tensor, text_features: Any, labels: torch.Tensor, *,
                    logit_scale: float, quantile: float = DEFAULT_QUANTILE, model: str = "") -> Calibration:
    """Temperature and out-of-bank thresholds from labelled images' embeddings (``[n, dim]``, before
    normalisation), the bank's text vectors (``[dim, n_taxa]``) and the images' bank columns; `metrics` holds
    the NLL before and after."""
    similarity = torch.nn.functional.normalize(embeddings.float(), dim=-1) @ text_features
    logits = similarity * logit_scale
    temperature = fit_temperature(logits, labels)
    nll = {name: float(torch.nn.functional.cross_entropy(logits / t, labels.long()))
           for name, t in (("nll_before", 1.0), ("nll_after", temperature))}
    density = ImageDensity.fit(embeddings)
    return Calibration(temperature=temperature, quantile=quantile, fitted_on=len(labels), model=model,
                       out_of_bank_threshold=out_of_bank_threshold(similarity.max(dim=1).values, quantile / 2),
                       image_threshold=-out_of_bank_threshold(-density.distance(embeddings), quantile / 2),
                       metrics=nll, density=density)


def out_of_bank_threshold(best_similarity: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> float:
    """The `quantile` of the labelled images' best image-text cosine similarity."""
    if not 0 <= quantile < 1:
        raise UsageError(f"--quantile must be in [0, 1), got {quantile}")
    return float(torch.quantile(best_similarity.float(), quantile))


def save_calibration(bank_dir: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Write ``BANK/calibration.json`` (and ``calibration.npz`` for the image density) atomically."""
    folder = Path(bank_dir)
    if calibration.density is not None:
        buffer = io.BytesIO()
        np.savez(buffer, mean=calibration.density.mean, precision=calibration.density.precision)
        atomic_write(folder / DENSITY_FILE, buffer.getvalue())
    document = {key: value for key, value in asdict(calibration).items() if key != "density"}
    atomic_write(folder / CALIBRATION_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return folder / CALIBRATION_FILE


def load_calibration(bank_dir: str | os.PathLike[str]) -> Calibration | None:
    """The bank's calibration, or None when it has none; UsageError for an unreadable file."""
    path = Path(bank_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        fields = {key: document[key] for key in Calibration.__dataclass_fields__ if key in document}
        calibration = Calibration(**fields, density=_load_density(path.parent / DENSITY_FILE)
                                  if fields.get("image_threshold") is not None else None)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path}: unreadable calibration ({exc}); re-run `treeclip calibrate`") from exc
    if not (isinstance(calibration.temperature, (int, float)) and calibration.temperature > 0):
        raise UsageError(f"{path}: temperature must be a positive number, got {calibration.temperature!r}")
    return calibration


def _load_density(path: Path) -> ImageDensity:
    with np.load(path, allow_pickle=False) as arrays:
        return ImageDensity(arrays["mean"].astype(np.float32), arrays["precision"].astype(np.float32))
