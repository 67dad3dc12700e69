"""``treeclip probe``: fit a linear-probe (or prototype) head on labelled folders, saved with the model.

    treeclip probe my_photos/ --model hf-hub:imageomics/bioclip --out my-model
    treeclip predict new_photos/ --model my-model

FOLDER holds one sub-folder per class (``my_photos/Rosa rubra/*.jpg``); the folder names are the classes.
The model's image tower embeds every photo once on the CPU (or --device); the head is fitted on the
embeddings in seconds. --out receives the model (open_clip hub layout) and ``probe_head.*``; with --out equal
to a local model folder only the head files are added.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treeclip.cli.predict import DEFAULT_WORKERS, report_errors

HELP = "fit a linear-probe / prototype head on labelled image folders, saved with the model for predict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="one sub-folder of images per class")
    parser.add_argument("--model", required=True, help="the model to probe: a model folder, hf-hub:ORG/NAME, ...")
    parser.add_argument("--out", type=Path, required=True,
                        help="model folder to write (the model + probe_head.*); may be the --model folder")
    parser.add_argument("--kind", default="linear", choices=("linear", "prototype"),
                        help="linear: logistic regression (default); prototype: nearest class mean (1-5 photos "
                        "per class)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="fraction of each class held out to measure the head against zero-shot (default "
                        "0.2; 0 skips)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model batch (default 32)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"image decoding threads, working ahead of the model (default {DEFAULT_WORKERS})")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    from treeclip.errors import UsageError  # noqa: PLC0415 - keep --help free of torch

    if not 0 <= args.holdout < 1:
        raise UsageError(f"--holdout must be in [0, 1), got {args.holdout}")
    examples = _labelled_images(args.folder)
    classes = sorted({label for _, label in examples})
    head, model, errors = _fit(args, examples, classes)
    _write(args, head, model)
    info = head.info
    summary = f"probe ({head.kind}) on {info['images']} images in {len(classes)} classes"
    if "held_out_accuracy" in info:
        summary += (f"; held-out accuracy {info['held_out_accuracy']:.3f} on {info['held_out_images']} images "
                    f"(zero-shot on the folder names: {info['held_out_zero_shot_accuracy']:.3f})")
    print(f"{summary}; wrote {args.out} (use: treeclip predict PHOTOS --model {args.out})")
    report_errors("probe", errors, len(examples), None)
    return 0


def _labelled_images(folder: Path) -> list[tuple[str, str]]:
    """(image path, class) for every image below each class sub-folder; UsageError for < 2 classes."""
    from treeclip.data.sources.base import iter_images, subdirs  # noqa: PLC0415
    from treeclip.errors import UsageError  # noqa: PLC0415

    if not folder.is_dir():
        raise UsageError(f"FOLDER {folder}: no such folder")
    examples = [(str(path), sub.name) for sub in subdirs(folder) for path in iter_images(sub)]
    classes = {label for _, label in examples}
    if len(classes) < 2:
        raise UsageError(f"FOLDER {folder}: needs image sub-folders for at least 2 classes, found {len(classes)}")
    empty = [sub.name for sub in subdirs(folder) if sub.name not in classes]
    if empty:
        sys.stderr.write(f"treeclip probe: skipping {len(empty)} folders without images: {', '.join(empty[:5])}\n")
    return examples


def _fit(args: argparse.Namespace, examples: list[tuple[str, str]], classes: list[str]) -> tuple:
    """(probe head, the model, unreadable images) after embedding every image once."""
    import torch  # noqa: PLC0415

    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.predict.classifier import CustomLabelsClassifier  # noqa: PLC0415
    from treeclip.predict.probe import select_and_fit  # noqa: PLC0415

    zero_shot = CustomLabelsClassifier.from_pretrained(args.model, labels=classes, device=args.device)
    features, names, errors = zero_shot.features([path for path, _ in examples], batch_size=args.batch_size,
                                                 workers=args.workers)
    if not names:
        raise UsageError(f"FOLDER {args.folder}: none of the {len(examples)} images could be read")
    position = {label: i for i, label in enumerate(classes)}
    label_of = dict(examples)
    labels = torch.tensor([position[label_of[name]] for name in names])
    head = select_and_fit(features.cpu(), labels, classes, kind=args.kind, logit_scale=zero_shot.logit_scale,
                          holdout=args.holdout, zero_shot=lambda held: zero_shot.probabilities(held).cpu())
    head.info["model"] = args.model
    return head, zero_shot.model, errors


def _write(args: argparse.Namespace, head: object, model: object) -> None:
    """The model as a hub folder (unless --out is the --model folder itself), then the head files."""
    from treeclip.model import export_model, is_hub_dir  # noqa: PLC0415

    if not (is_hub_dir(args.out) and Path(args.model).resolve() == args.out.resolve()):
        export_model(model, out_dir=args.out, model_name=args.model)
    head.save(args.out)
