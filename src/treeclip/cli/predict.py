"""``treeclip predict``: name the organisms in photos, at any rank, from a label bank or custom labels."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from treeclip.cli._options import DEFAULT_MODEL, RAY_ENGINE, Requirement, add_engine_arguments, check_hub_model

ONNX_RUNTIME = Requirement("onnx", ("onnxruntime",), when=lambda args: getattr(args, "runtime", None) == "onnx")
OPENVINO_RUNTIME = Requirement("openvino", ("openvino",),
                               when=lambda args: getattr(args, "runtime", None) == "openvino")
REQUIRES = (RAY_ENGINE, ONNX_RUNTIME, OPENVINO_RUNTIME)
HELP = "identify organisms in images (tree of life at any rank, custom labels, checklists, roll-up)"
FORMATS = ("csv", "jsonl", "parquet", "dwc")
DEFAULT_WORKERS = 2
RUNTIMES = ("torch", "onnx", "openvino")


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --workers, --decode, --precision, --runtime, --device, --engine and --ray-address (shared
    with `treeclip embed`)."""
    parser.add_argument("--batch-size", type=int, default=32, help="images per model batch (default 32)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"image decoding threads or processes, ahead of the model (default {DEFAULT_WORKERS})")
    parser.add_argument("--decode", default="auto", choices=("auto", "threads", "processes", "device"),
                        help="decode in threads or worker processes; auto: processes on Linux for --workers above 2 "
                        "and at least 4 batches, as threads stop scaling at ~2 cores (benchmarks/RESULTS.md); "
                        "device: JPEGs decoded on --device (nvJPEG on CUDA), other images on the CPU (counted); "
                        "auto never picks device until benchmarks/gpu.py has measured it")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                        help="fp32, or int8 (dynamic quantisation of the image tower, CPU)")
    add_runtime_argument(parser)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_engine_arguments(parser, local="decoding threads feeding one model", shared_files="images")


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """--runtime (shared with `treeclip embed` and `treeclip serve`)."""
    parser.add_argument("--runtime", choices=RUNTIMES, help="torch, onnx (ONNX Runtime) or openvino (OpenVINO, CPU); "
                        "onnx and openvino run a folder from `treeclip export --format onnx` as --model. "
                        "Default: onnx for such a folder, else torch")


def check_runtime(model: str | None, runtime: str | None) -> None:
    """UsageError (exit 2) when the model cannot run on the asked runtime."""
    from treeclip.predict.runtime import resolve_runtime  # noqa: PLC0415

    resolve_runtime(model or DEFAULT_MODEL, runtime)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS",
                        help="image files, folders (recursive), glob patterns or @LIST files")
    parser.add_argument("--model", help="model id: hf-hub:ORG/NAME, a model folder or a checkpoint "
                        f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--bank", help="label bank folder (default: the model's released TreeOfLife bank)")
    parser.add_argument("--rank", default="species", help="rank to answer at: kingdom ... species (default species)")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="classify among these labels instead of the tree of life (labels, a,b,c or @FILE)")
    parser.add_argument("--bins", metavar="FILE", help="CSV label,group: sum label probabilities per group")
    parser.add_argument("--subset", metavar="FILE",
                        help="checklist CSV with rank columns (e.g. species binomials, genus): predict only these")
    parser.add_argument("--columns", metavar="ROLE=COLUMN[,...]",
                        help="--subset column names no rule recognises, e.g. species=binomial,genus=gen")
    parser.add_argument("--rollup", type=float, metavar="P",
                        help="answer at the deepest rank whose probability is >= P, else 'unknown'")
    parser.add_argument("--k", type=int, default=5, help="answers per image (default 5)")
    parser.add_argument("--min-prob", type=float, default=1e-9,
                        help="species probabilities at or below this are ignored when summing ranks")
    add_where_arguments(parser)
    parser.add_argument("--format", default="csv", choices=FORMATS, help="output format (default csv)")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="output file (default stdout); re-running with it resumes, skipping done images")
    add_batch_arguments(parser)


def add_where_arguments(parser: argparse.ArgumentParser) -> None:
    """--within, --abstain and the location prior's options (--prior, --lat/--lon/--date, --location)."""
    parser.add_argument("--within", action="append", metavar="CLADES",
                        help="only taxa inside these clades, e.g. Aves or 'Insecta,Arachnida' (repeatable; "
                        "combines with --subset)")
    parser.add_argument("--abstain", action="store_true", help="with --rollup: answer 'not-an-organism' or "
                        "'not-in-bank' for images unlike any organism of the bank")
    parser.add_argument("--prior", metavar="PRIOR", help="location prior from `treeclip prior build`: reweights "
                        "taxa by their records near each photo's location")
    parser.add_argument("--prior-weight", type=float, default=1.0, metavar="W",
                        help="mixing weight of the prior, 0 (ignore) .. 1 (full; default)")
    parser.add_argument("--lat", type=float, help="latitude of every photo (decimal degrees, with --lon)")
    parser.add_argument("--lon", type=float, help="longitude of every photo (decimal degrees, with --lat)")
    parser.add_argument("--date", help="date of every photo (YYYY-MM-DD), for a seasonal prior")
    parser.add_argument("--location", metavar="auto|FILE", help="'auto': each photo's EXIF GPS and date; or a "
                        "CSV with path, latitude, longitude (and date) columns")


def locator(args: argparse.Namespace) -> Any:
    """The photos' locations from --lat/--lon/--date or --location (None without them)."""
    from treeclip.predict.location import AUTO, parse_location, read_location_table  # noqa: PLC0415

    if args.lat is not None:
        return parse_location(args.lat, args.lon, args.date, source="--lat/--lon")
    if args.location == AUTO:
        return AUTO
    return read_location_table(args.location) if args.location else None


def _check_where(args: argparse.Namespace) -> None:
    from treeclip.errors import UsageError  # noqa: PLC0415

    if (args.lat is None) != (args.lon is None):
        raise UsageError("--lat and --lon go together; give both (decimal degrees)")
    located = args.lat is not None or args.location or args.date
    if located and not args.prior:
        raise UsageError("a location (--lat/--lon, --date or --location) needs a prior: add --prior PRIOR "
                         "(make one with `treeclip prior build`)")
    if args.lat is not None and args.location:
        raise UsageError("give either --lat/--lon or --location, not both")
    if args.abstain and args.rollup is None:
        raise UsageError("--abstain applies to roll-up answers; add --rollup P (e.g. 0.5)")
    if (args.within or args.prior) and (args.labels or _uses_probe(args)):
        raise UsageError("--within and --prior filter a tree-of-life bank; they cannot be combined with --labels "
                         "or a probe model")


def progress_bar(total: int, done: int, *, command: str = "predict") -> Any:
    """Images done: a tqdm bar on a terminal, plain periodic lines when stderr is piped."""
    from treeclip.cli._progress import progress  # noqa: PLC0415

    return progress(total=total, initial=done, unit="images", label=f"treeclip {command}")


def report_errors(command: str, errors: list[tuple[str, str]], total: int, output: str | None, *,
                  rows_hold_errors: bool = True) -> None:
    """Print each unreadable image with its reason; InputError (exit 1) when there were any. When the output
    has no error rows (Darwin Core), the images are listed in ``OUTPUT.problems.csv`` (file, line, reason)."""
    from treeclip.atomic import atomic_write  # noqa: PLC0415
    from treeclip.errors import InputError  # noqa: PLC0415
    from treeclip.formats.problems import Problem, problems_csv  # noqa: PLC0415

    for name, reason in errors:
        sys.stderr.write(f"treeclip {command}: {name}: {reason}\n")
    if not errors:
        return
    where = f" (error rows in {output})" if output and rows_hold_errors else ""
    if output and not rows_hold_errors:
        problems = f"{output}.problems.csv"
        atomic_write(problems, problems_csv(Problem(name, reason) for name, reason in errors))
        where = f" (listed in {problems})"
    raise InputError(f"{len(errors)} of {total} images could not be read{where}")


def _check_bank_model(classifier: Any) -> None:
    """Warn (one line) when the bank's ``bank.json`` names another model than the one predicting: its text
    vectors then live in another embedding space and the scores mean little."""
    from treeclip.model.hub import resolvable_model_id  # noqa: PLC0415

    bank = getattr(classifier, "full_bank", None)
    built_with = bank.meta.get("model") if bank is not None else None
    if built_with and resolvable_model_id(built_with) != classifier.model_id:
        sys.stderr.write(f"treeclip predict: warning: the label bank was built with model {built_with}, not "
                         f"{classifier.model_id}; rebuild it with `treeclip bank build --model "
                         f"{classifier.model_id}` unless both share one text tower\n")


def output_metadata(model_id: str, *, bank: Any = None, bank_dir: str | None = None) -> dict[str, str]:
    """What an output records about its making: the model as a resolvable id (with the hub revision) and the
    label bank (its folder and its own bank.json record)."""
    import os  # noqa: PLC0415

    from treeclip.model.hub import model_provenance  # noqa: PLC0415

    meta = model_provenance(model_id)
    if bank is not None:
        meta["bank"] = os.path.abspath(bank_dir) if bank_dir else f"the released bank of {meta['model']}"
        meta.update({f"bank_{key}": str(value) for key, value in bank.meta.items()
                     if key in ("model", "model_revision", "text_type", "templates", "n_taxa")})
    return meta


def _check(args: argparse.Namespace) -> Any:
    """Validate option combinations; returns the parsed rank."""
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.taxonomy import Rank  # noqa: PLC0415

    if args.rollup is not None and not 0 < args.rollup <= 1:
        raise UsageError(f"--rollup must be a probability in (0, 1], got {args.rollup}")
    if args.k < 1:
        raise UsageError(f"--k must be at least 1, got {args.k}")
    if args.labels and (args.bank or args.subset or args.rollup is not None):
        raise UsageError("--labels classifies among your labels; "
                         "it cannot be combined with --bank, --subset or --rollup")
    if args.bins and not args.labels:
        raise UsageError("--bins groups custom labels; give the labels with --labels")
    _check_where(args)
    if (args.subset or args.rollup is not None) and _uses_probe(args):
        raise UsageError(f"--model {args.model} holds a probe head (its own classes); --subset and --rollup "
                         "apply to a tree-of-life bank: add --bank BANK to use one")
    try:
        return Rank.parse(args.rank)
    except ValueError as exc:
        raise UsageError(f"--rank: {exc}") from exc


def _uses_probe(args: argparse.Namespace) -> bool:
    """A model folder with a probe head (`treeclip probe`) classifies among its classes unless --labels or
    --bank asks otherwise."""
    from treeclip.predict.probe import has_probe  # noqa: PLC0415

    return not args.labels and not args.bank and has_probe(args.model)


def _checklist(args: argparse.Namespace) -> list | None:
    """The --subset taxa (read with --columns), before any model loads; None without --subset."""
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.formats import parse_column_map  # noqa: PLC0415

    columns = parse_column_map(args.columns)
    if columns and not args.subset:
        raise UsageError("--columns names the columns of a --subset checklist; add --subset FILE")
    if not args.subset:
        return None
    from treeclip.predict.filters import read_checklist  # noqa: PLC0415

    return read_checklist(args.subset, columns=columns)


def _classifier(args: argparse.Namespace, checklist: list | None) -> Any:
    from treeclip.predict import classifier, filters  # noqa: PLC0415
    from treeclip.predict.probe import ProbeClassifier  # noqa: PLC0415

    if _uses_probe(args):
        return ProbeClassifier.from_pretrained(args.model, precision=args.precision, device=args.device,
                                               runtime=args.runtime)
    if args.labels:
        bins = filters.read_bins(args.bins) if args.bins else None
        return classifier.CustomLabelsClassifier.from_pretrained(
            args.model, labels=filters.read_labels(args.labels), bins=bins, precision=args.precision,
            device=args.device, runtime=args.runtime)
    within = filters.split_clades(args.within) if args.within else None
    return classifier.TreeOfLifeClassifier.from_pretrained(args.model, args.bank, checklist=checklist, within=within,
                                                           prior=args.prior, prior_weight=args.prior_weight,
                                                           precision=args.precision, device=args.device,
                                                           runtime=args.runtime)


def _columns(args: argparse.Namespace, rank: Any) -> list[str]:
    from treeclip.predict.classifier import (CLASSIFICATION, FILE_NAME, PRIOR, RANK, SCORE,  # noqa: PLC0415
                                             tol_columns)
    from treeclip.taxonomy import Rank  # noqa: PLC0415

    if args.labels or _uses_probe(args):
        return [FILE_NAME, CLASSIFICATION, SCORE]
    prior = [PRIOR] if args.prior else []
    if args.rollup is not None:
        return [FILE_NAME, *tol_columns(Rank.SPECIES), RANK, SCORE, *prior]
    return [FILE_NAME, *tol_columns(rank), SCORE, *prior]


def run(args: argparse.Namespace) -> int:
    import functools  # noqa: PLC0415

    from treeclip.data.engines import check_engine  # noqa: PLC0415
    from treeclip.predict.inputs import expand_inputs  # noqa: PLC0415

    items = expand_inputs(args.images)  # user mistakes end here, in one line, before torch loads
    rank = _check(args)
    checklist = _checklist(args)
    check_hub_model(args.model or DEFAULT_MODEL)
    check_engine(args.engine, args.ray_address)
    from treeclip.predict.runner import run_to_writer  # noqa: PLC0415
    from treeclip.predict.writers import RowWriter  # noqa: PLC0415

    check_runtime(args.model, args.runtime)
    model = _classifier(args, checklist)
    _check_bank_model(model)
    score = functools.partial(model.rows, rank=rank, k=args.k, min_prob=args.min_prob, rollup=args.rollup)
    if args.abstain or args.prior:
        from treeclip.predict.location import make_locator  # noqa: PLC0415

        score = functools.partial(score, abstain=args.abstain, locate=make_locator(locator(args)))
    metadata = output_metadata(model.model_id, bank=getattr(model, "full_bank", None), bank_dir=args.bank)
    with RowWriter(args.output, fmt=args.format, columns=_columns(args, rank), model_id=model.model_id,
                   metadata=metadata) as writer:
        done = sum(item in writer.done for item in items)
        with progress_bar(len(items), done) as bar:
            errors = run_to_writer(items, score=score, preprocess=model.preprocess, writer=writer,
                                   batch_size=args.batch_size, workers=args.workers, draft_size=model.draft_size,
                                   progress=bar.update, engine=args.engine, ray_address=args.ray_address,
                                   **model.decoding(args.decode))
    report_errors("predict", errors, len(items), args.output, rows_hold_errors=args.format != "dwc")
    return 0
