"""How sure: temperature scaling and the out-of-bank threshold, fitted on labelled images, stored with the bank.

Temperature scaling (Guo et al., 2017) divides the logits ``logit_scale * image @ text`` by one scalar ``T``
fitted to minimise the negative log-likelihood of the true species on a labelled set; ranking is unchanged
(top-1 stays the same), only how sure the probabilities are. The out-of-bank threshold is the `quantile` of the
labelled organism images' best cosine similarity to any bank text: an image whose best similarity is below it
looks less like the bank than all but that fraction of real bank images, and roll-up answers it
"not-in-bank" (so on images like the labelled set about `quantile` of organisms abstain that way).

Stored as ``calibration.json`` in the bank folder (`save_calibration` / `load_calibration`); the classifier
loads it with the bank, and its rows then use the calibrated probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from treeclip.atomic import atomic_write
from treeclip.errors import UsageError
from treeclip.formats import TAXON_ROLES, Problem, open_table, resolve, taxon_of
from treeclip.taxonomy import Rank, Taxon

from .prior import taxon_key

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DEFAULT_QUANTILE = 0.05
PATH_COLUMNS = ("path", "filepath", "file_path", "file_name", "filename", "image", "image_path", "file")


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
    columns = {**resolve(table.header, TAXON_ROLES, where=str(table.path)), "path": table.find(*PATH_COLUMNS),
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
    out_of_bank_threshold: float | None = None
    quantile: float = DEFAULT_QUANTILE
    fitted_on: int = 0
    model: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


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


def fit_calibration(similarity: torch.Tensor, labels: torch.Tensor, *, logit_scale: float,
                    quantile: float = DEFAULT_QUANTILE, model: str = "") -> Calibration:
    """Temperature and out-of-bank threshold from labelled images' cosine similarities to the bank
    (``[n_images, n_taxa]``) and their bank columns; `metrics` holds the NLL before and after."""
    logits = similarity.float() * logit_scale
    temperature = fit_temperature(logits, labels)
    nll = {name: float(torch.nn.functional.cross_entropy(logits / t, labels.long()))
           for name, t in (("nll_before", 1.0), ("nll_after", temperature))}
    return Calibration(temperature=temperature, quantile=quantile, fitted_on=len(labels), model=model,
                       out_of_bank_threshold=out_of_bank_threshold(similarity.max(dim=1).values, quantile),
                       metrics=nll)


def out_of_bank_threshold(best_similarity: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> float:
    """The `quantile` of the labelled images' best image-text cosine similarity."""
    if not 0 <= quantile < 1:
        raise UsageError(f"--quantile must be in [0, 1), got {quantile}")
    return float(torch.quantile(best_similarity.float(), quantile))


def save_calibration(bank_dir: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Write ``BANK/calibration.json`` atomically."""
    path = Path(bank_dir) / CALIBRATION_FILE
    atomic_write(path, json.dumps(asdict(calibration), indent=2, sort_keys=True) + "\n")
    return path


def load_calibration(bank_dir: str | os.PathLike[str]) -> Calibration | None:
    """The bank's calibration, or None when it has none; UsageError for an unreadable file."""
    path = Path(bank_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        calibration = Calibration(**{key: document[key] for key in Calibration.__dataclass_fields__
                                     if key in document})
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable calibration ({exc}); re-run `treeclip calibrate`") from exc
    if not (isinstance(calibration.temperature, (int, float)) and calibration.temperature > 0):
        raise UsageError(f"{path}: temperature must be a positive number, got {calibration.temperature!r}")
    return calibration
