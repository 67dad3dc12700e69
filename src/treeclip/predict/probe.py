"""A probe head: a linear classifier (or class prototypes) on frozen image embeddings, saved with the model.

For users with a few hundred labelled photos and no GPU: the model's image tower embeds each photo once,
then either

* ``linear``: multinomial logistic regression (scikit-learn's ``LogisticRegression``; the L2 strength is
  picked on the held-out part from a short grid), or
* ``prototype``: each class is the normalised mean of its embeddings, scored by cosine similarity times the
  model's logit scale (nearest class mean; no fitting, robust with 1-5 photos per class).

The head is two files in the model folder, ``probe_head.safetensors`` (``weight`` ``[classes, dim]``,
``bias`` ``[classes]``) and ``probe_head.json`` (classes, kind, the held-out figures); `treeclip predict
--model FOLDER` then classifies among the probe's classes (``file_name, classification, score``; scores are
``softmax(features @ weight.T + bias)``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from treeclip.atomic import atomic_write
from treeclip.errors import UsageError
from treeclip.model.hub import replace_atomically
from treeclip.model.linear_probe import fit_linear_probe

from .classifier import CLASSIFICATION, FILE_NAME, SCORE, _ImageClassifier, _load
from .runner import Row

HEAD_WEIGHTS, HEAD_INFO = "probe_head.safetensors", "probe_head.json"
KINDS = ("linear", "prototype")
C_GRID = (0.1, 1.0, 10.0, 100.0)  # inverse L2 strengths tried for the linear probe (features are unit vectors)


@dataclass
class ProbeHead:
    """Class scores ``features @ weight.T + bias`` over unit image features."""

    classes: list[str]
    kind: str
    weight: torch.Tensor  # [classes, dim]
    bias: torch.Tensor  # [classes]
    info: dict[str, Any] = field(default_factory=dict)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.to(features.device).T + self.bias.to(features.device)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the two head files into `folder` (weights first; the JSON last marks the head complete)."""
        folder = Path(folder)
        tensors = {"weight": self.weight.float().contiguous(), "bias": self.bias.float().contiguous()}
        replace_atomically(folder / HEAD_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write(folder / HEAD_INFO, json.dumps({"classes": self.classes, "kind": self.kind, **self.info},
                                                    indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ProbeHead:
        folder = Path(folder)
        try:
            info = json.loads((folder / HEAD_INFO).read_text(encoding="utf-8"))
            tensors = load_file(str(folder / HEAD_WEIGHTS))
            classes, kind = list(info.pop("classes")), str(info.pop("kind"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{folder}: unreadable probe head ({exc}); fit it again with `treeclip probe`") from None
        if tensors["weight"].shape[0] != len(classes) or tensors["bias"].shape != (len(classes),):
            raise UsageError(f"{folder}: probe head weights do not match its {len(classes)} classes")
        return cls(classes, kind, tensors["weight"], tensors["bias"], info)


def has_probe(model_id: str | os.PathLike[str] | None) -> bool:
    """True when `model_id` is a folder holding a probe head."""
    return model_id is not None and (Path(model_id) / HEAD_INFO).is_file()


def fit_prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int, logit_scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the nearest-class-mean head: normalised class means x the logit scale."""
    sums = torch.zeros(n_classes, features.shape[1]).index_add_(0, labels, features.float())
    means = torch.nn.functional.normalize(sums, dim=1)
    return means * logit_scale, torch.zeros(n_classes)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, n_classes: int, *, c: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (weight, bias) of the linear probe (`treeclip.model.linear_probe`) on `features`."""
    weight, bias = fit_linear_probe(features.numpy(), labels.numpy(), n_classes, c=c, max_iter=2000)
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def fit_head(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, kind: str,
             logit_scale: float, c: float = 10.0) -> ProbeHead:
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "prototype":
        weight, bias = fit_prototypes(features, labels, len(classes), logit_scale)
    else:
        weight, bias = fit_linear(features, labels, len(classes), c=c)
    return ProbeHead(list(classes), kind, weight, bias, {"c": c} if kind == "linear" else {})


def accuracy(head: ProbeHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head.logits(features).argmax(dim=1) == labels).float().mean())


def held_out_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): `fraction` of each class's images held out, at least one image of
    every class kept for fitting (a class with one image is never held out)."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = min(int(round(fraction * len(members))), len(members) - 1)
        held.append(members[:count])
        fit.append(members[count:])
    return torch.cat(fit), torch.cat(held)


def select_and_fit(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, kind: str,
                   logit_scale: float, holdout: float, zero_shot: Callable[[torch.Tensor], torch.Tensor] | None
                   ) -> ProbeHead:
    """Fit on all images; with `holdout` > 0 first measure the head (and zero-shot over the class names,
    when given) on held-out images, choosing the linear probe's L2 strength there."""
    info: dict[str, Any] = {"images": len(labels)}
    c = 10.0
    fit, held = held_out_split(labels, holdout) if holdout > 0 else (torch.arange(len(labels)), torch.arange(0))
    if len(held):
        scores = {}
        for candidate in (C_GRID if kind == "linear" else (c,)):
            head = fit_head(features[fit], labels[fit], classes, kind=kind, logit_scale=logit_scale, c=candidate)
            scores[candidate] = accuracy(head, features[held], labels[held])
        c = max(scores, key=lambda key: (scores[key], -abs(np.log10(key) - 1)))
        info.update(held_out_images=len(held), held_out_accuracy=scores[c])
        if zero_shot is not None:
            predictions = zero_shot(features[held]).argmax(dim=1)
            info["held_out_zero_shot_accuracy"] = float((predictions == labels[held]).float().mean())
    head = fit_head(features, labels, classes, kind=kind, logit_scale=logit_scale, c=c)
    head.info.update(info)
    return head


class ProbeClassifier(_ImageClassifier):
    """Classify photos among a probe head's classes (see the module docstring)."""

    def __init__(self, *, model: torch.nn.Module, preprocess: Callable[..., torch.Tensor], head: ProbeHead,
                 model_id: str = "", device: str | torch.device = "cpu") -> None:
        super().__init__(model=model, preprocess=preprocess, model_id=model_id, device=device)
        self.head = head

    @classmethod
    def from_pretrained(cls, model: str, *, precision: str = "fp32", device: str | torch.device = "cpu",
                        runtime: str | None = None) -> ProbeClassifier:
        """A model folder written by `treeclip probe` (the model plus its probe head)."""
        head = ProbeHead.load(model)
        net, preprocess, _ = _load(model, precision=precision, device=device, runtime=runtime)
        return cls(model=net, preprocess=preprocess, head=head, model_id=model, device=device)

    def predict(self, images: Any, *, k: int | None = None, batch_size: int = 32, workers: int = 2,
                decoder: str = "auto") -> list[Row]:
        """Rows for paths or PIL images: the top-k classes per image (all when k is None)."""
        return self._predict(images, k=k, batch_size=batch_size, workers=workers, decoder=decoder)

    @torch.inference_mode()
    def rows(self, pixels: torch.Tensor, names: list[str], *, k: int | None = None, **_: Any) -> list[Row]:
        probs = torch.softmax(self.head.logits(self.encode_images(pixels)), dim=1).cpu()
        values, ids = probs.topk(min(k or len(self.head.classes), len(self.head.classes)), dim=1)
        return [{FILE_NAME: name, CLASSIFICATION: self.head.classes[i], SCORE: score}
                for name, scores, picks in zip(names, values.tolist(), ids.tolist(), strict=True)
                for score, i in zip(scores, picks, strict=True)]
