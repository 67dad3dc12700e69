"""Periodic validation: contrastive loss and zero-shot top-1 over the species of the validation split.

Zero-shot classes are the validation split's species, named exactly as evaluation names its classes
(`treeclip.taxonomy.class_string` of the shard's taxon, common name included) and encoded by treeclip's one
text encoder, `treeclip.model.bank.encode_class_texts`, so a validation figure and an evaluation figure of
the same model and class text agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from itertools import islice

import torch
from open_clip import ClipLoss
from torch import nn

from treeclip.model.bank import encode_class_texts
from treeclip.taxonomy import Taxon, class_string, get_templates
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
    taxa: Mapping[tuple[str, ...], Taxon],
    zero_shot: bool = True,
) -> dict[str, float]:
    """``val_loss`` (mean over batches) and ``zero_shot_top1`` (when asked and the split has >= 2 species).

    `taxa` maps each validation lineage to its taxon (with the common name), e.g. from
    `treeclip.train.shards.shard_taxa`.
    """
    model.eval()
    loss_fn, losses, features, lineages = ClipLoss(), [], [], []
    try:
        for batch in islice(batches, max_batches):
            with autocast():
                image = batch["image"].to(device)
                image_features, text_features, scale = clip_features(model, image, batch["text"].to(device))
                losses.append(float(loss_fn(image_features, text_features, scale)))
            features.append(image_features.float())
            lineages += [tuple(lineage) for lineage in batch["lineage"]]
        metrics = {"val_loss": sum(losses) / len(losses)} if losses else {}
        if zero_shot and features:
            top1 = zero_shot_top1(model, tokenizer, torch.cat(features), lineages, taxa=taxa, text_type=text_type,
                                  templates=get_templates(templates), device=device)
            if top1 is not None:
                metrics["zero_shot_top1"] = top1
    finally:
        model.train()
    return metrics


def zero_shot_top1(
    model: nn.Module,
    tokenizer: Callable,
    image_features: torch.Tensor,
    lineages: Sequence[tuple[str, ...]],
    *,
    taxa: Mapping[tuple[str, ...], Taxon],
    text_type: str,
    templates: Sequence[str],
    device: torch.device,
) -> float | None:
    """Top-1 accuracy of classifying the images among the species present in `lineages` (None if < 2)."""
    labelled = [i for i, lineage in enumerate(lineages) if lineage[-1]]
    species = sorted({lineages[i] for i in labelled})
    if len(species) < 2:
        return None
    names = [class_string(taxa.get(lineage) or Taxon(lineage=lineage), text_type) for lineage in species]
    classes = torch.from_numpy(encode_class_texts(model, tokenizer, names, templates, device=device)).to(device)
    index = {lineage: i for i, lineage in enumerate(species)}
    targets = torch.tensor([index[lineages[i]] for i in labelled], device=device)
    predictions = (image_features[labelled] @ classes.T).argmax(dim=1)
    return float((predictions == targets).float().mean())
