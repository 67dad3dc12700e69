"""The demo's "where and how sure" section: the location prior, calibration and abstention on the miniature tree.

From the demo's world, model and bank: builds ``OUT/prior.parquet`` from the world's ``occurrences.csv``; splits
the held-out images (seen species' val images and every unseen species' images; none was trained on)
alternately into a calibration half and an evaluation half; fits the bank's temperature and out-of-bank
threshold on the first (``OUT/bank/calibration.json``); and on the second measures top-1 at species and genus
with and without the prior (each image at its catalog location and date), expected calibration error and the
accuracy-coverage curve with and without calibration, and how often roll-up abstains on organism images and
on generated non-organism images (plain colours, noise, checkerboards, stripes, gradients, simple objects).
The numbers go to ``OUT/geo.json`` and the report's section (`markdown`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from treeclip.atomic import atomic_write
from treeclip.data.synth import OCCURRENCES, png_bytes
from treeclip.eval.metrics import accuracy_coverage, expected_calibration_error
from treeclip.formats import open_table
from treeclip.predict.calibration import fit_calibration, read_labelled, save_calibration
from treeclip.predict.classifier import NOT_AN_ORGANISM, NOT_IN_BANK, TreeOfLifeClassifier
from treeclip.predict.location import Location, month_of
from treeclip.predict.prior import LocationPrior, OccurrenceReader
from treeclip.taxonomy import Rank

GEO_FILE, PRIOR_FILE, NON_ORGANISMS = "geo.json", "prior.parquet", "non_organisms"
HELDOUT_SPLITS = ("val", "unseen")
ROLLUP = 0.5
COVERAGES = (0.2, 0.4, 0.6, 0.8, 1.0)
TEXTURES = ("plain", "noise", "checkerboard", "stripes", "gradient", "object")


@dataclass(frozen=True)
class Heldout:
    """Held-out images with their bank column and catalog location."""

    paths: list[str]
    labels: list[int]
    locations: list[Location | None]


def build_prior(world: Path, out: Path, *, resolution: int = 3) -> LocationPrior:
    """OUT/prior.parquet from the world's occurrence records (reused when present)."""
    if out.is_file():
        return LocationPrior.load(out)
    reader = OccurrenceReader(world / OCCURRENCES)
    prior = LocationPrior.build(reader, resolution=resolution, by_season=True, skipped=dict(reader.skipped),
                                sources=[OCCURRENCES])
    prior.save(out)
    return LocationPrior.load(out)


def catalog_locations(catalog: Path) -> dict[str, Location]:
    """Image path (as joined to the catalog's folder) → its location and month, from the world's catalog."""
    table = open_table(catalog, what="world catalog")
    columns = {"path": "path", "lat": "decimalLatitude", "lon": "decimalLongitude", "date": "eventDate"}
    places = {}
    for row in table.rows(columns):
        if isinstance(row, tuple):
            fields = row[1]
            places[str(catalog.parent / fields["path"])] = Location(
                float(fields["lat"]), float(fields["lon"]), month_of(fields["date"]), source="catalog")
    return places


def heldout_halves(world: Path, lineages: list[tuple[str, ...]]) -> tuple[Heldout, Heldout]:
    """(calibration half, evaluation half) of the held-out images, alternating in catalog order."""
    places = catalog_locations(world / "catalog.csv")
    found = [read_labelled(world / "catalog.csv", lineages, split=split) for split in HELDOUT_SPLITS]
    paths = [p for part in found for p in part.paths]
    labels = [label for part in found for label in part.labels]
    halves = []
    for start in (0, 1):
        chosen = paths[start::2]
        halves.append(Heldout(chosen, labels[start::2], [places.get(p) for p in chosen]))
    return halves[0], halves[1]


def non_organism_images(folder: Path, *, per_kind: int, size: int, seed: int) -> list[str]:
    """Generated images of no organism, `per_kind` of each of `TEXTURES`, written once as PNG."""
    rng = np.random.default_rng(seed)
    paths = []
    for kind in TEXTURES:
        for number in range(per_kind):
            path = folder / f"{kind}_{number:02d}.png"
            image = _texture(kind, rng, size)
            if not path.is_file():
                atomic_write(path, png_bytes(image))
            paths.append(str(path))
    return paths


def _texture(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    colour, other = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    y, x = np.mgrid[0:size, 0:size]
    if kind == "plain":
        pixels = np.broadcast_to(colour, (size, size, 3))
    elif kind == "noise":
        pixels = rng.integers(0, 256, (size, size, 3))
    elif kind in ("checkerboard", "stripes"):
        period = int(rng.integers(2, max(3, size // 4)))
        mask = ((x // period + y // period) % 2 if kind == "checkerboard" else (x // period) % 2).astype(bool)
        pixels = np.where(mask[..., None], colour, other)
    elif kind == "gradient":
        t = (x / max(1, size - 1))[..., None]
        pixels = colour * (1 - t) + other * t
    else:  # a man-made object: a rectangle and a ring on a plain ground
        image = Image.new("RGB", (size, size), tuple(int(v) for v in other))
        draw = ImageDraw.Draw(image)
        a, b = sorted(rng.integers(2, size - 2, 2)), sorted(rng.integers(2, size - 2, 2))
        draw.rectangle([a[0], b[0], a[1] + 1, b[1] + 1], fill=tuple(int(v) for v in colour))
        draw.ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], outline=(255, 255, 255), width=2)
        return image
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8))


def _top1(probs: torch.Tensor, labels: torch.Tensor, genus_of: torch.Tensor, classifier: TreeOfLifeClassifier
          ) -> dict[str, float]:
    genus = classifier.index.aggregate(probs, Rank.GENUS)
    return {"species": float((probs.argmax(dim=1) == labels).float().mean()),
            "genus": float((genus.argmax(dim=1) == genus_of[labels]).float().mean())}


def prior_effect(classifier: TreeOfLifeClassifier, features: torch.Tensor, heldout: Heldout) -> dict[str, Any]:
    """Top-1 at species and genus without and with the prior, and what the prior did to true species that
    have records near the photo."""
    labels = torch.tensor(heldout.labels)
    genus_of = torch.from_numpy(classifier.index.groups[Rank.GENUS].of_column)
    plain, located = classifier.probabilities(features), classifier.probabilities(features, heldout.locations)
    bound = classifier.bound_prior
    recorded, demoted, below_unrecorded = 0, 0, 0
    for row, (label, where) in enumerate(zip(heldout.labels, heldout.locations, strict=True)):
        factors = bound.factors(where)
        near = factors >= 1 / 3  # at least one record of the species in the photo's cell or a neighbour
        if near[label]:
            recorded += 1
            below_unrecorded += int(factors[label] < factors[~near].max(initial=0.0))
            demoted += int(label in plain[row].topk(5).indices and label not in located[row].topk(5).indices)
    return {"images": len(labels), "without_prior": _top1(plain, labels, genus_of, classifier),
            "with_prior": _top1(located, labels, genus_of, classifier), "true_species_recorded_near": recorded,
            "ranked_below_an_unrecorded_species": below_unrecorded, "dropped_from_top5": demoted,
            "min_true_probability": float(located[torch.arange(len(labels)), labels].min())}


def calibration_effect(classifier: TreeOfLifeClassifier, features: torch.Tensor, heldout: Heldout,
                       temperature: float) -> dict[str, Any]:
    """NLL, ECE and accuracy-coverage of species top-1 at temperature 1 and at the fitted temperature."""
    labels = torch.tensor(heldout.labels)
    similarity = features @ classifier.text_features
    result: dict[str, Any] = {"temperature": temperature}
    for name, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        logits = similarity * (classifier.logit_scale / t)
        confidence, predicted = torch.softmax(logits, dim=1).max(dim=1)
        correct = (predicted == labels).numpy()
        result[name] = {"nll": float(torch.nn.functional.cross_entropy(logits, labels)),
                        "ece": expected_calibration_error(confidence.numpy(), correct),
                        "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean()),
                        "coverage": {str(c): a for c, a in accuracy_coverage(confidence.numpy(), correct,
                                                                             COVERAGES).items()}}
    return result


def abstention_rates(classifier: TreeOfLifeClassifier, raw: torch.Tensor, names: Sequence[str]
                     ) -> dict[str, float]:
    """Share of images answered per roll-up outcome (a rank, unknown, not-an-organism, not-in-bank), from their
    embeddings before normalisation."""
    rows = classifier.rows_from_features(torch.nn.functional.normalize(raw, dim=-1), list(names), rollup=ROLLUP,
                                         abstain=True, raw=raw)
    counts = Counter(row["rank"] for row in rows)
    return {outcome: count / len(rows) for outcome, count in sorted(counts.items())}


def run_geo(root: Path, *, model: Path, bank: Path, world: Path, image_size: int, seed: int) -> dict[str, Any]:
    """Build the prior, calibrate the bank, measure; writes OUT/geo.json and returns the numbers."""
    prior = build_prior(world, root / PRIOR_FILE)
    classifier = TreeOfLifeClassifier.from_pretrained(str(model), bank, prior=prior, calibrated=False)
    calibration_half, evaluation_half = heldout_halves(world, classifier.bank.lineages)
    fit_embeddings, _, _ = classifier.features(calibration_half.paths, raw=True)
    calibration = fit_calibration(fit_embeddings, classifier.text_features, torch.tensor(calibration_half.labels),
                                  logit_scale=classifier.logit_scale, model=str(model))
    save_calibration(bank, calibration)
    raw, names, _ = classifier.features(evaluation_half.paths, raw=True)
    features = torch.nn.functional.normalize(raw, dim=-1)
    result = {"prior": {"file": PRIOR_FILE, **asdict(prior.info)},
              "prior_effect": prior_effect(classifier, features, evaluation_half),
              "calibration": calibration_effect(classifier, features, evaluation_half, calibration.temperature),
              "fitted_on": calibration.fitted_on, "rollup": ROLLUP}
    classifier.calibration = calibration
    others = non_organism_images(root / NON_ORGANISMS, per_kind=4, size=image_size, seed=seed)
    other_raw, other_names, _ = classifier.features(others, raw=True)
    result["abstention"] = {"organisms": abstention_rates(classifier, raw, names),
                            "non_organisms": abstention_rates(classifier, other_raw, other_names),
                            "non_organism_images": len(other_names)}
    atomic_write(root / GEO_FILE, json.dumps(result, indent=1) + "\n")
    return result


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def abstained(rates: dict[str, float]) -> float:
    """Share of images answered not-an-organism, not-in-bank or unknown."""
    return sum(rates.get(outcome, 0.0) for outcome in (NOT_AN_ORGANISM, NOT_IN_BANK, "unknown"))


def markdown(geo: dict[str, Any]) -> str:
    """The report section."""
    effect, calibration, abstention = geo["prior_effect"], geo["calibration"], geo["abstention"]
    lines = ["## Where and how sure: location prior, calibration, abstention", "",
             f"Held-out images (seen species' val and unseen species), {effect['images']} for evaluation and "
             f"{geo['fitted_on']} for fitting the temperature; the prior counts {geo['prior']['records']} occurrence "
             f"records of the world in {geo['prior']['cells']} H3 cells (resolution {geo['prior']['resolution']}).",
             "", "| | species top-1 | genus top-1 |", "|---|---|---|"]
    for key, label in (("without_prior", "without prior"), ("with_prior", "with prior (photo's location)")):
        lines.append(f"| {label} | {_pct(effect[key]['species'])} | {_pct(effect[key]['genus'])} |")
    lines += ["", f"True species recorded near the photo: {effect['true_species_recorded_near']} of "
              f"{effect['images']}; of them ranked by the prior below a species with no record near: "
              f"{effect['ranked_below_an_unrecorded_species']}; pushed out of the top 5 by the prior: "
              f"{effect['dropped_from_top5']}; smallest probability left to a true species: "
              f"{effect['min_true_probability']:.2e}.", "",
              f"Temperature {calibration['temperature']:.3f}. Accuracy (species top-1 %) when answering only "
              "the most confident fraction of images:", "",
              "| | NLL | ECE | mean confidence | " + " | ".join(f"{float(c):.0%}" for c in COVERAGES) + " |",
              "|---|---|---|---|" + "---|" * len(COVERAGES)]
    for name in ("uncalibrated", "calibrated"):
        part = calibration[name]
        lines.append(f"| {name} | {part['nll']:.3f} | {_pct(part['ece'])} | {_pct(part['mean_confidence'])} | "
                     + " | ".join(_pct(part["coverage"][str(c)]) for c in COVERAGES) + " |")
    organisms, others = abstention["organisms"], abstention["non_organisms"]
    lines += ["", f"Roll-up at {geo['rollup']} with abstention: share of images per answer.", "",
              "| images | " + " | ".join(sorted(set(organisms) | set(others))) + " | abstained |",
              "|---|" + "---|" * (len(set(organisms) | set(others)) + 1)]
    for label, rates in (("organisms (held out)", organisms), (f"non-organisms ({abstention['non_organism_images']})",
                                                                others)):
        lines.append(f"| {label} | " + " | ".join(_pct(rates.get(k, 0.0)) for k in sorted(set(organisms) | set(others)))
                     + f" | {_pct(abstained(rates))} |")
    return "\n".join(lines) + "\n"
