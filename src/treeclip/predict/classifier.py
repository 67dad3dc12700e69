"""Zero-shot classifiers over the tree of life (a label bank) or over custom labels.

Rows follow pybioclip: ``file_name``, the rank names down to the requested rank (``species_epithet``,
``species`` = "Genus epithet" and ``common_name`` at species rank), ``score``; custom labels give
``file_name, classification, score``. With a roll-up threshold each image gets one row, every rank column is
present and ``rank`` names the rank answered (``unknown`` when none is sure enough). Error rows carry
``error`` instead.

Probabilities are ``softmax(logit_scale * image @ text / T)`` with the model's own ``logit_scale.exp()`` and
the bank's fitted temperature ``T`` (`treeclip.predict.calibration`; 1 without one), over the bank's columns
kept by any checklist and ``within`` clades (`treeclip.predict.filters`). With a location prior and a
location for the image they are reweighted by the prior and renormalised once (`treeclip.predict.prior`);
rows then carry a ``prior`` column saying which prior was applied at which location (or why none was).
Above species rank they are summed over lineage prefixes (`treeclip.predict.ranks`), so a parent's
probability is never below any of its children's; as in pybioclip, species probabilities at or below
`min_prob` are left out of those sums.

Abstention (roll-up with ``abstain=True``): an image is answered ``not-an-organism`` when most of the
probability mass, over the bank plus a small bank of non-organism and background texts (`BACKGROUND_TEXTS`),
falls on the background texts; ``not-in-bank`` when the calibration's out-of-bank scores say it is unlike
the bank's organisms (`treeclip.predict.calibration`); otherwise it gets the deepest rank R reached by the
roll-up threshold ("an organism, sure down to R and unsure below") or ``unknown``. Abstaining rows are scored
like ``unknown`` ones: with the best kingdom probability.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from treeclip.errors import UsageError
from treeclip.model.bank import DEFAULT_MODEL, LabelBank, encode_class_texts, load_bank, released_bank_dir
from treeclip.model.bank_storage import BankMatrix
from treeclip.model.hub import resolvable_model_id
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, get_templates

from .calibration import Calibration, load_calibration
from .filters import filter_columns
from .location import Location, Locator, make_locator
from .prior import DEFAULT_FLOOR, DEFAULT_WEIGHT, BoundPrior, LocationPrior
from .ranks import RankIndex
from .rollup import UNKNOWN, rollup
from .runner import ImageItem, Row, run_batches
from .runtime import load_for_inference

SPECIES_EPITHET, COMMON_NAME = "species_epithet", "common_name"
FILE_NAME, SCORE, RANK, CLASSIFICATION = "file_name", "score", "rank", "classification"
PATH, EMBEDDING, MODEL, PRIOR = "path", "embedding", "model", "prior"
NOT_AN_ORGANISM, NOT_IN_BANK = "not-an-organism", "not-in-bank"
BACKGROUND_TEXTS = (
    "a photo of a plain texture.", "a photo of a wall.", "a photo of a floor tile.", "a photo of fabric.",
    "a photo of paper.", "a photo of wood grain.", "a photo of concrete.", "a photo of the sky.",
    "a photo of an empty background.", "a photo of a man-made object.", "a photo of a car.",
    "a photo of a building.", "a photo of a ceramic tile.", "a photo of text.", "a blurry photo.",
    "a black photo.", "a white photo.", "a photo of noise.",
)
EMBED_COLUMNS = (PATH, EMBEDDING, MODEL)
DEMO_HINT = ("point at a local model and bank with --model DIR --bank DIR, e.g. the demo's "
             "(`treeclip demo` writes treeclip-demo/model and treeclip-demo/bank)")


def tol_columns(rank: Rank) -> list[str]:
    """pybioclip's classification columns down to `rank`."""
    columns = [name for name in RANK_NAMES[: rank + 1] if name != "species"]
    if rank == Rank.SPECIES:
        columns += [SPECIES_EPITHET, "species", COMMON_NAME]
    return columns


def lineage_fields(lineage: Sequence[str], common: str, rank: Rank) -> dict[str, str]:
    """The classification columns of a (prefix of a) lineage, pybioclip style."""
    fields = {name: lineage[i] for i, name in enumerate(RANK_NAMES[: min(rank, Rank.GENUS) + 1])}
    if rank == Rank.SPECIES:
        fields[SPECIES_EPITHET] = lineage[Rank.SPECIES]
        fields["species"] = f"{lineage[Rank.GENUS]} {lineage[Rank.SPECIES]}".strip()
        fields[COMMON_NAME] = common
    return fields


class _ImageClassifier:
    """What both classifiers share: the image tower, the logit scale and batched prediction."""

    def __init__(self, *, model: torch.nn.Module, preprocess: Callable[..., torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None, model_id: str = "",
                 device: str | torch.device = "cpu") -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.model_id, self.device = model_id, torch.device(device)

    @functools.cached_property
    def draft_size(self) -> int | None:
        """The preprocessing's JPEG draft size (`treeclip.model.preprocess.Preprocess`; None: full-resolution
        decoding, as for the BioCLIP family), else twice the model's input size: JPEGs are then decoded at a
        reduced scale no smaller than that (then resized as usual), several times faster for large photos."""
        if hasattr(self.preprocess, "draft_size"):
            return self.preprocess.draft_size
        size = getattr(getattr(self.model, "visual", None), "image_size", 224)
        return 2 * max(size) if isinstance(size, (tuple, list)) else 2 * int(size)

    @functools.cached_property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image features of a preprocessed batch."""
        return F.normalize(self.embed(pixels), dim=-1)

    @property
    def takes_uint8(self) -> bool:
        """Whether batches come as uint8 pixels, normalised here on the device (`embed`): when that gives the
        float transform's pixels bit for bit (`treeclip.pixels.PixelSteps.uint8_exact`)."""
        steps = getattr(self.preprocess, "steps", None)
        return steps is not None and steps.uint8_exact

    def decoding(self, decoder: str = "auto") -> dict[str, Any]:
        """The runner's decoding options for this model (`treeclip.predict.runner.decoded_batches`): uint8
        batches when the preprocessing splits, pinned memory for CUDA, JPEGs decoded on this device with
        ``decoder="device"``."""
        return {"decoder": decoder, "pin_memory": self.device.type == "cuda", "uint8": self.takes_uint8,
                "device": self.device}

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float32 image embeddings of a preprocessed batch (float, or uint8 from `Preprocess.to_uint8`,
        normalised here on the device), before L2 normalisation. On CUDA a host batch is copied from pinned
        memory without blocking and the tower runs under bf16 autocast."""
        self.model.eval()
        cuda = self.device.type == "cuda"
        if cuda and pixels.device.type == "cpu":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        pixels = pixels.to(self.device)
        if pixels.dtype == torch.uint8:
            pixels = self.preprocess.normalize(pixels)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            return self.model.encode_image(pixels).float()

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax((features @ self.text_features).mul_(self.logit_scale), dim=1)

    @property
    def text_features(self) -> torch.Tensor:
        """``[dim, n_classes]`` unit text vectors."""
        raise NotImplementedError

    def rows(self, pixels: torch.Tensor, names: list[str], **options: Any) -> list[Row]:
        raise NotImplementedError

    def features(self, images: Sequence[ImageItem], *, batch_size: int = 32, workers: int = 2, raw: bool = False,
                 decoder: str = "auto") -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
        """(``[n, dim]`` unit image features of the readable images (their raw embeddings with `raw`), their names,
        (name, reason) of the rest). `decoder`: threads, processes or auto (`treeclip.predict.runner`)."""
        encode = self.embed if raw else self.encode_images

        def score(pixels: torch.Tensor, names: list[str]) -> list[Row]:
            return [{FILE_NAME: name, EMBEDDING: vector} for name, vector in zip(names, encode(pixels), strict=True)]

        rows = [row for batch in run_batches(list(images), score=score, preprocess=self.preprocess,
                                             batch_size=batch_size, workers=workers, draft_size=self.draft_size,
                                             **self.decoding(decoder))
                for row in batch]
        good = [row for row in rows if EMBEDDING in row]
        vectors = torch.stack([row[EMBEDDING] for row in good]) if good else torch.empty(0, 0)
        return vectors, [row[FILE_NAME] for row in good], [(row[FILE_NAME], row["error"]) for row in rows
                                                           if "error" in row]

    def _predict(self, images: ImageItem | Sequence[ImageItem], *, batch_size: int, workers: int,
                 decoder: str = "auto", **options: Any) -> list[Row]:
        """Rows for paths or PIL images (one image or a list); unreadable files give error rows."""
        items = [images] if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence) else images
        score = functools.partial(self.rows, **options)
        batches = run_batches(list(items), score=score, preprocess=self.preprocess, batch_size=batch_size,
                              workers=workers, draft_size=self.draft_size, **self.decoding(decoder))
        return [row for rows in batches for row in rows]


class TreeOfLifeClassifier(_ImageClassifier):
    """Predict taxa at any rank from a label bank, optionally restricted to a checklist."""

    def __init__(self, *, model: torch.nn.Module, preprocess: Callable[..., torch.Tensor], bank: LabelBank,
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None, model_id: str = "",
                 checklist: Sequence[Taxon] | None = None, within: Sequence[str] | None = None,
                 prior: LocationPrior | None = None, prior_weight: float = DEFAULT_WEIGHT,
                 prior_floor: float = DEFAULT_FLOOR, calibration: Calibration | None = None,
                 background: Sequence[str] = BACKGROUND_TEXTS, device: str | torch.device = "cpu") -> None:
        super().__init__(model=model, preprocess=preprocess, tokenizer=tokenizer, model_id=model_id, device=device)
        self.full_bank, self.checklist, self.within = bank, checklist, list(within or [])
        self.prior, self.prior_weight, self.prior_floor = prior, prior_weight, prior_floor
        self.calibration, self.background = calibration, list(background)

    @classmethod
    def from_pretrained(cls, model: str | None = None, bank: str | os.PathLike[str] | None = None, *,
                        checklist: Sequence[Taxon] | None = None, within: Sequence[str] | None = None,
                        prior: str | os.PathLike[str] | LocationPrior | None = None,
                        prior_weight: float = DEFAULT_WEIGHT, calibrated: bool = True, precision: str = "fp32",
                        device: str | torch.device = "cpu", runtime: str | None = None) -> TreeOfLifeClassifier:
        """Load a model id (default: the released BioCLIP 2) and a bank folder (default: the model's released
        TreeOfLife bank, downloaded) with its calibration (unless ``calibrated=False``), and optionally a
        location prior file (`treeclip prior build`) and clades to stay ``within``. ``runtime``: torch, onnx or
        openvino (`treeclip.predict.runtime`; default: onnx for an exported folder, else torch)."""
        model_id = resolvable_model_id(model or DEFAULT_MODEL)
        bank_dir = bank if bank is not None else _released_bank(model_id)
        label_bank = load_bank(bank_dir)
        calibration = load_calibration(bank_dir) if calibrated else None
        location_prior = LocationPrior.load(prior) if isinstance(prior, (str, os.PathLike)) else prior
        net, preprocess, tokenizer = _load(model_id, precision=precision, device=device, runtime=runtime)
        return cls(model=net, preprocess=preprocess, tokenizer=tokenizer, bank=label_bank, model_id=model_id,
                   checklist=checklist, within=within, prior=location_prior, prior_weight=prior_weight,
                   calibration=calibration, device=device)

    @functools.cached_property
    def bank(self) -> LabelBank:
        """The bank in use: the full bank, or its columns kept by the checklist and `within` clades."""
        columns = filter_columns(self.full_bank.lineages, checklist=self.checklist, within=self.within)
        return self.full_bank if columns is None else self.full_bank.subset(columns)

    @functools.cached_property
    def bound_prior(self) -> BoundPrior | None:
        return None if self.prior is None else self.prior.bind(self.bank.lineages, floor=self.prior_floor)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration is not None else 1.0

    @functools.cached_property
    def background_features(self) -> torch.Tensor | None:
        """``[dim, n_background]`` unit vectors of the non-organism texts (None without a tokenizer)."""
        if self.tokenizer is None or not self.background:
            return None
        vectors = encode_class_texts(self.model, self.tokenizer, self.background, ["{}"], device=self.device)
        return torch.from_numpy(vectors.T.copy()).to(self.device)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, n_taxa]`` calibrated logits ``logit_scale * image @ text / T``."""
        return (features @ self.text_features).mul_(self.logit_scale / self.temperature)

    def probabilities(self, features: torch.Tensor,
                      locations: Sequence[Location | None] | None = None) -> torch.Tensor:
        """Calibrated bank probabilities, reweighted by the prior for the images with a location."""
        probs = torch.softmax(self.logits(features), dim=1)
        if self.bound_prior is None or locations is None:
            return probs
        factors = [self.bound_prior.factors(where) if where is not None else None for where in locations]
        for row, factor in enumerate(factors):
            if factor is not None:
                scaled = probs[row] * ((1.0 - self.prior_weight)
                                       + self.prior_weight * torch.from_numpy(factor).to(probs.device))
                probs[row] = scaled / scaled.sum()
        return probs

    def prior_note(self, location: Location | None) -> str:
        """What the ``prior`` column says: the prior and location applied, or why none was."""
        if location is None:
            return "none (no location)"
        source = f"{location.source}, " if location.source else ""
        return f"{self.prior.name or 'prior'} at {location.describe()} ({source}weight {self.prior_weight:g})"

    @functools.cached_property
    def index(self) -> RankIndex:
        return RankIndex(self.bank.lineages)

    @functools.cached_property
    def text_features(self) -> torch.Tensor | BankMatrix:
        """The bank matrix on the device; float16/int8 banks stay compact (`LabelBank.matrix`)."""
        return self.bank.matrix(self.device)

    def predict(self, images: ImageItem | Sequence[ImageItem], *, rank: Rank | str = Rank.SPECIES, k: int = 5,
                min_prob: float = 1e-9, rollup: float | None = None, abstain: bool = False,
                location: Location | Mapping[str, Location] | str | None = None, batch_size: int = 32,
                workers: int = 2, decoder: str = "auto") -> list[Row]:
        """Rows for paths or PIL images: the top-k taxa at `rank` per image, or with `rollup` one row per
        image at the deepest rank whose probability reaches it (with `abstain`, or "not-an-organism" /
        "not-in-bank"). `location` (used with a prior): one `Location` for all images, a path → Location
        table, or ``"auto"`` for each photo's EXIF GPS. A PIL image (named by its position) gives the same pixels
        as the file it was decoded from: EXIF orientation applied, transparency composited on white, 16-bit
        scaled to 8 (`treeclip.data.images.decode_image`); only a large JPEG given as a file may be decoded at
        reduced scale first (`Preprocess.draft_size`). Unreadable files give error rows. `workers` decode
        ahead of the model as threads or worker processes (`decoder`: threads, processes or auto, see
        `treeclip.predict.runner.use_processes`)."""
        return self._predict(images, rank=rank, k=k, min_prob=min_prob, rollup=rollup, abstain=abstain,
                             locate=make_locator(location), batch_size=batch_size, workers=workers, decoder=decoder)

    def rows(self, pixels: torch.Tensor, names: list[str], **options: Any) -> list[Row]:
        """Rows for one preprocessed batch (options as `rows_from_features`)."""
        raw = self.embed(pixels)
        return self.rows_from_features(F.normalize(raw, dim=-1), names, raw=raw, **options)

    @torch.inference_mode()
    def rows_from_features(self, features: torch.Tensor, names: list[str], *, rank: Rank | str = Rank.SPECIES,
                           k: int = 5, min_prob: float = 1e-9, rollup: float | None = None, abstain: bool = False,
                           locate: Locator | None = None, raw: torch.Tensor | None = None) -> list[Row]:
        """Rows for a batch of L2-normalised image features (see the module docstring); `locate` maps a
        name to its Location (or None); `raw`, the features before normalisation, lets abstention use the
        calibration's image-density check."""
        locations = [locate(name) for name in names] if locate is not None and self.prior is not None else None
        probs = self.probabilities(features, locations)  # stays on the device: only top-k values cross to the host
        if rollup is not None:
            abstained = self.abstentions(features, raw) if abstain else [None] * len(names)
            rows = self._rollup_rows(probs, names, rollup, abstained)
        else:
            rows = self._topk_rows(probs, names, rank=Rank.parse(rank), k=k, min_prob=min_prob)
        if self.prior is not None:
            notes = {name: self.prior_note(where) for name, where in zip(names, locations or [None] * len(names),
                                                                          strict=True)}
            for row in rows:
                row[PRIOR] = notes[row[FILE_NAME]]
        return rows

    def abstentions(self, features: torch.Tensor, raw: torch.Tensor | None = None) -> list[str | None]:
        """Per image: "not-an-organism", "not-in-bank" or None (see the module docstring)."""
        similarity = features @ self.text_features
        verdicts: list[str | None] = [None] * len(features)
        for row in torch.nonzero(self._out_of_bank(similarity, raw)).flatten().tolist():
            verdicts[row] = NOT_IN_BANK
        if self.background_features is not None:
            joint = torch.cat([similarity, features @ self.background_features], dim=1)
            mass = torch.softmax(joint * (self.logit_scale / self.temperature), dim=1)[:, similarity.shape[1]:]
            for row in torch.nonzero(mass.sum(dim=1) > 0.5).flatten().tolist():
                verdicts[row] = NOT_AN_ORGANISM
        return verdicts

    def _out_of_bank(self, similarity: torch.Tensor, raw: torch.Tensor | None) -> torch.Tensor:
        """``[B]`` bool: below the calibration's text threshold or (given the raw embeddings) beyond its
        image-density threshold."""
        outside = torch.zeros(len(similarity), dtype=torch.bool)
        calibration = self.calibration
        if calibration is not None and calibration.out_of_bank_threshold is not None:
            outside |= similarity.max(dim=1).values.cpu() < calibration.out_of_bank_threshold
        if calibration is not None and calibration.density is not None and raw is not None:
            outside |= calibration.density.distance(raw).cpu() > calibration.image_threshold
        return outside

    def _topk_rows(self, probs: torch.Tensor, names: list[str], *, rank: Rank, k: int,
                   min_prob: float) -> list[Row]:
        if rank != Rank.SPECIES:
            probs = self.index.aggregate(probs.masked_fill_(probs <= min_prob, 0.0), rank)
        values, groups = probs.topk(min(k, probs.shape[1]), dim=1)
        representative = self.index.groups[rank].representative
        rows = []
        for name, scores, ids in zip(names, values.tolist(), groups.tolist(), strict=True):
            for score, group in zip(scores, ids, strict=True):
                column = int(representative[group])
                rows.append({FILE_NAME: name, **self._fields(column, rank), SCORE: score})
        return rows

    def _fields(self, column: int, rank: Rank) -> dict[str, str]:
        return lineage_fields(self.bank.lineages[column], self.bank.commons[column], rank)

    def _rollup_rows(self, probs: torch.Tensor, names: list[str], threshold: float,
                     abstained: Sequence[str | None]) -> list[Row]:
        levels = self.index.aggregate_all(probs)
        answers = rollup(levels, [groups.named for groups in self.index.groups], threshold)
        rows = []
        for image, (name, answer, verdict) in enumerate(zip(names, answers, abstained, strict=True)):
            fields = dict.fromkeys(tol_columns(Rank.SPECIES), "")
            if verdict is not None:
                score = float(levels[Rank.KINGDOM][image].max())
                rows.append({FILE_NAME: name, **fields, RANK: verdict, SCORE: score})
                continue
            if answer.rank >= 0:
                column = int(self.index.groups[answer.rank].representative[answer.group])
                fields.update(self._fields(column, Rank(answer.rank)))
            label = RANK_NAMES[answer.rank] if answer.rank >= 0 else UNKNOWN
            rows.append({FILE_NAME: name, **fields, RANK: label, SCORE: answer.score})
        return rows


class CustomLabelsClassifier(_ImageClassifier):
    """Zero-shot over your own labels (template-averaged text, computed once); `bins` sums labels by group."""

    def __init__(self, *, model: torch.nn.Module, preprocess: Callable[..., torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], labels: Sequence[str],
                 bins: Mapping[str, str] | None = None, templates: str = "openai", model_id: str = "",
                 device: str | torch.device = "cpu") -> None:
        super().__init__(model=model, preprocess=preprocess, tokenizer=tokenizer, model_id=model_id, device=device)
        self.labels, self.bins, self.templates = list(labels), dict(bins) if bins else None, templates
        if self.bins is not None:
            missing = [label for label in self.labels if label not in self.bins]
            if missing:
                raise ValueError(f"labels without a bin: {', '.join(missing[:5])}")

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, labels: Sequence[str],
                        bins: Mapping[str, str] | None = None, templates: str = "openai", precision: str = "fp32",
                        device: str | torch.device = "cpu", runtime: str | None = None) -> CustomLabelsClassifier:
        """Load a model id (default: the released BioCLIP 2) for these labels."""
        model_id = resolvable_model_id(model or DEFAULT_MODEL)
        net, preprocess, tokenizer = _load(model_id, precision=precision, device=device, runtime=runtime)
        return cls(model=net, preprocess=preprocess, tokenizer=tokenizer, labels=labels, bins=bins,
                   templates=templates, model_id=model_id, device=device)

    @functools.cached_property
    def text_features(self) -> torch.Tensor:
        vectors = encode_class_texts(self.model, self.tokenizer, self.labels, get_templates(self.templates),
                                     device=self.device)
        return torch.from_numpy(vectors.T.copy()).to(self.device)

    @functools.cached_property
    def _groups(self) -> tuple[list[str], torch.Tensor]:
        names = list(dict.fromkeys(self.bins[label] for label in self.labels)) if self.bins else self.labels
        position = {name: i for i, name in enumerate(names)}
        index = [position[self.bins[label] if self.bins else label] for label in self.labels]
        return names, torch.tensor(index, dtype=torch.int64)

    def predict(self, images: ImageItem | Sequence[ImageItem], *, k: int | None = None, min_prob: float = 0.0,
                batch_size: int = 32, workers: int = 2, decoder: str = "auto") -> list[Row]:
        """Rows for paths or PIL images: the top-k labels (or bins) per image, all when k is None."""
        return self._predict(images, k=k, min_prob=min_prob, batch_size=batch_size, workers=workers,
                             decoder=decoder)

    @torch.inference_mode()
    def rows(self, pixels: torch.Tensor, names: list[str], *, k: int | None = None, min_prob: float = 0.0,
             **_: Any) -> list[Row]:
        """Rows for one preprocessed batch: the top-k labels (or bins), all of them when k is None."""
        probs = self.probabilities(self.encode_images(pixels)).cpu()
        groups, index = self._groups
        if self.bins:
            probs = probs.new_zeros(probs.shape[0], len(groups)).index_add_(1, index, probs)
        values, ids = probs.topk(min(k or len(groups), len(groups)), dim=1)
        return [{FILE_NAME: name, CLASSIFICATION: groups[i], SCORE: score}
                for name, scores, picks in zip(names, values.tolist(), ids.tolist(), strict=True)
                for score, i in zip(scores, picks, strict=True) if score > min_prob]


def _released_bank(model_id: str) -> str:
    try:
        return str(released_bank_dir(model_id))
    except UsageError as exc:
        raise UsageError(f"{exc}; {DEMO_HINT}") from exc


def _load(model_id: str, *, precision: str, device: str | torch.device,
          runtime: str | None = None) -> tuple[torch.nn.Module, Any, Any]:
    """(model at the precision, inference preprocessing, tokenizer) of a model id on a runtime; an ONNX model
    folder runs on ONNX Runtime unless asked for OpenVINO (`treeclip.predict.runtime`)."""
    try:
        return load_for_inference(model_id, runtime=runtime, precision=precision, device=device)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - download/cache failures of hub models
        raise UsageError(f"cannot load model {model_id} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         f"{DEMO_HINT}") from exc


class ImageEmbedder(_ImageClassifier):
    """L2-normalised image embeddings (rows: path, embedding, model) and text embeddings for search."""

    @classmethod
    def from_pretrained(cls, model: str, *, precision: str = "fp32", device: str | torch.device = "cpu",
                        runtime: str | None = None) -> ImageEmbedder:
        model_id = resolvable_model_id(model)
        net, preprocess, tokenizer = _load(model_id, precision=precision, device=device, runtime=runtime)
        return cls(model=net, preprocess=preprocess, tokenizer=tokenizer, model_id=model_id, device=device)

    def predict(self, images: ImageItem | Sequence[ImageItem], *, batch_size: int = 32,
                workers: int = 2, decoder: str = "auto") -> list[Row]:
        """One row per image: path, L2-normalised embedding, model id (or an error row). PIL images are
        converted as their files would be (see `TreeOfLifeClassifier.predict`)."""
        return self._predict(images, batch_size=batch_size, workers=workers, decoder=decoder)

    def rows(self, pixels: torch.Tensor, names: list[str], **_: Any) -> list[Row]:
        vectors = self.encode_images(pixels).cpu().numpy()
        return [{PATH: name, EMBEDDING: vector.tolist(), MODEL: self.model_id}
                for name, vector in zip(names, vectors, strict=True)]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` unit text vectors of the texts as given."""
        return encode_class_texts(self.model, self.tokenizer, list(texts), ["{}"], device=self.device)
