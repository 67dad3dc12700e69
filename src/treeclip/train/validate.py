"""Periodic validation: contrastive loss and zero-shot top-1 over the species of the validation split."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from itertools import islice

import torch
from open_clip import ClipLoss, build_zero_shot_classifier
from torch import nn

from treeclip.taxonomy import Taxon, get_templates, render_name
from treeclip.train.objectives import clip_features


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    tokenizer: Callable,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    max_batches: int,
    text_type: str,
    templates: str,
    zero_shot: bool = True,
) -> dict[str, float]:
    """``val_loss`` (mean over batches) and ``zero_shot_top1`` (when asked and the split has >= 2 species)."""
    model.eval()
    loss_fn, losses, features, lineages = ClipLoss(), [], [], []
    for batch in islice(batches, max_batches):
        with autocast():
            image = batch["image"].to(device)
            image_features, text_features, scale = clip_features(model, image, batch["text"].to(device))
            losses.append(float(loss_fn(image_features, text_features, scale)))
        features.append(image_features.float())
        lineages += [tuple(lineage) for lineage in batch["lineage"]]
    model.train()
    metrics = {"val_loss": sum(losses) / len(losses)} if losses else {}
    if zero_shot and features:
        top1 = zero_shot_top1(model, tokenizer, torch.cat(features), lineages, text_type=text_type,
                              templates=get_templates(templates), device=device)
        if top1 is not None:
            metrics["zero_shot_top1"] = top1
    return metrics


def zero_shot_top1(
    model: nn.Module,
    tokenizer: Callable,
    image_features: torch.Tensor,
    lineages: Sequence[tuple[str, ...]],
    *,
    text_type: str,
    templates: Sequence[str],
    device: torch.device,
) -> float | None:
    """Top-1 accuracy of classifying the images among the species present in `lineages` (None if < 2)."""
    labelled = [i for i, lineage in enumerate(lineages) if lineage[-1]]
    species = sorted({lineages[i] for i in labelled})
    if len(species) < 2:
        return None
    names = [render_name(Taxon(lineage=lineage), text_type) for lineage in species]
    classifier = build_zero_shot_classifier(model, tokenizer, names, templates, device=device)
    index = {lineage: i for i, lineage in enumerate(species)}
    targets = torch.tensor([index[lineages[i]] for i in labelled], device=device)
    predictions = (image_features[labelled] @ classifier.float()).argmax(dim=1)
    return float((predictions == targets).float().mean())
