"""``treeclip calibrate LABELLED --model M --bank B``: fit the bank's temperature and out-of-bank threshold."""

from __future__ import annotations

import argparse
import sys

HELP = "fit temperature scaling and the out-of-bank threshold on labelled images; stored with the bank"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labelled", metavar="LABELLED",
                        help="table of labelled images: an image path column (relative to the table) and rank "
                        "columns, e.g. treeclip-demo/world/catalog.csv")
    parser.add_argument("--model", required=True, help="model id: a model folder, checkpoint or hf-hub:ORG/NAME")
    parser.add_argument("--bank", required=True, help="label bank folder; calibration.json is written into it")
    parser.add_argument("--split", help="use only rows whose split column equals this (e.g. val)")
    parser.add_argument("--quantile", type=float, default=0.05,
                        help="fraction of labelled images the out-of-bank checks may turn away (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model batch (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from treeclip.errors import InputError, UsageError  # noqa: PLC0415
    from treeclip.eval.metrics import expected_calibration_error  # noqa: PLC0415
    from treeclip.predict.calibration import fit_calibration, read_labelled, save_calibration  # noqa: PLC0415
    from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: PLC0415

    if not 0 <= args.quantile < 1:
        raise UsageError(f"--quantile must be in [0, 1), got {args.quantile}")
    classifier = TreeOfLifeClassifier.from_pretrained(args.model, args.bank, calibrated=False, device=args.device)
    labelled = read_labelled(args.labelled, classifier.bank.lineages, split=args.split)
    for reason, count in sorted(labelled.skipped.items()):
        sys.stderr.write(f"treeclip calibrate: {args.labelled}: skipped {count} rows: {reason}\n")
    if not labelled.paths:
        raise UsageError(f"{args.labelled}: no labelled image of a bank species; nothing to fit")
    embeddings, names, errors = classifier.features(labelled.paths, batch_size=args.batch_size, workers=args.workers,
                                                    raw=True)
    if not names:
        raise InputError(f"none of the {len(labelled.paths)} labelled images could be read")
    label_of = dict(zip(labelled.paths, labelled.labels, strict=True))
    labels = torch.tensor([label_of[name] for name in names])
    similarity = torch.nn.functional.normalize(embeddings, dim=-1) @ classifier.text_features
    calibration = fit_calibration(embeddings, classifier.text_features, labels, logit_scale=classifier.logit_scale,
                                  quantile=args.quantile, model=classifier.model_id)
    for name, temperature in (("ece_before", 1.0), ("ece_after", calibration.temperature)):
        probs = torch.softmax(similarity * (classifier.logit_scale / temperature), dim=1)
        confidence, predicted = probs.max(dim=1)
        calibration.metrics[name] = expected_calibration_error(confidence.numpy(), (predicted == labels).numpy())
    path = save_calibration(args.bank, calibration)
    metrics = calibration.metrics
    sys.stderr.write(f"treeclip calibrate: {len(names)} images; temperature {calibration.temperature:.3f}; "
                     f"NLL {metrics['nll_before']:.3f} -> {metrics['nll_after']:.3f}; ECE "
                     f"{100 * metrics['ece_before']:.1f}% -> {100 * metrics['ece_after']:.1f}%; out-of-bank "
                     f"thresholds: text {calibration.out_of_bank_threshold:.4f}, image distance "
                     f"{calibration.image_threshold:.1f} -> {path}\n")
    for name, reason in errors:
        sys.stderr.write(f"treeclip calibrate: {name}: {reason}\n")
    if errors:
        raise InputError(f"{len(errors)} of {len(labelled.paths)} images could not be read (fitted on the rest)")
    return 0
