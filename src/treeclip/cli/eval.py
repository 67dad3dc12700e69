"""``treeclip eval``: zero-shot, few-shot and hierarchy evaluation of one or more models on benchmark tasks."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from treeclip.errors import UsageError

HELP = "Evaluate models zero-shot, few-shot and against the taxonomy on benchmark tasks; write a report."
TEXT_TYPES = ("asis", "sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")
TASK_HELP = ("task(s), comma-separated, as [NAME=]KIND:PATH[,EXTRA]: rare:DIR (Rare Species, BioCLIP's or the "
             "downloaded metadata.csv), bioclip-csv:FILE (,filepath,class), metaalbum:DIR (labels.csv + info.json + "
             "images/), inat21:DIR (val class folders [+ val.json]), csv:FILE, folder:DIR[,TAXONOMY], "
             "synth:DIR[:unseen|seen|open]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL[,...]",
                        help="model id(s): a hub-layout folder, a checkpoint, hf-hub:ORG/NAME or an architecture; "
                             "LABEL= names it in the report (e.g. its training text type); repeatable")
    parser.add_argument("--task", action="append", required=True, metavar="[NAME=]KIND:PATH[,...]", help=TASK_HELP)
    parser.add_argument("--shots", default="0,1,5", help="comma-separated k values; 0 = zero-shot (default 0,1,5)")
    parser.add_argument("--text-type", default=None, metavar="T[,T]",
                        help=f"zero-shot class text type(s): {', '.join(TEXT_TYPES)} (default: each task's BioCLIP "
                             "default, asis for Meta-Album/label-only tasks, taxon_com otherwise; several give the "
                             "train-type x test-type grid)")
    parser.add_argument("--columns", default=None, metavar="ROLE=COLUMN[,...]",
                        help="column names for task tables no rule recognises, e.g. class=cls,species=epithet,label=y")
    parser.add_argument("--templates", choices=("openai", "photo"), default="openai",
                        help="openai = the 80 ImageNet templates (BioCLIP), photo = 'a photo of {}.'")
    parser.add_argument("--out", required=True, type=Path, help="report folder (report.md, results.json/.csv)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default 0)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default $TREECLIP_CACHE_DIR or ~/.cache/treeclip/features)")
    parser.add_argument("--no-cache", action="store_true", help="always recompute features")
    parser.add_argument("--no-linear-probe", action="store_true", help="skip the logistic-regression probe")
    parser.add_argument("--tsne", action="store_true", help="also write drill-down t-SNE plots (PNG)")
    parser.add_argument("--hierarchy-pairs", type=int, default=5000, help="image pairs for the distance correlation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sampling and t-SNE")


def _split(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _shots(text: str) -> list[int]:
    try:
        shots = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise UsageError(f"--shots {text!r}: expected comma-separated integers such as 0,1,5") from None
    if not shots or shots[0] < 0:
        raise UsageError(f"--shots {text!r}: expected non-negative integers such as 0,1,5")
    return shots


def _text_types(text: str) -> list[str]:
    types = _split([text])
    bad = [t for t in types if t not in TEXT_TYPES]
    if bad or not types:
        raise UsageError(f"--text-type {text!r}: expected one or more of {', '.join(TEXT_TYPES)}")
    return types


def _model_specs(values: list[str]) -> list[tuple[str, str]]:
    """(label, model id) pairs from ``[LABEL=]ID`` items."""
    specs = []
    for item in _split(values):
        label, eq, model_id = item.partition("=")
        specs.append((label.strip(), model_id.strip()) if eq else (Path(item).name or item, item))
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--model: labels {labels} repeat; name each model with LABEL=MODEL")
    return specs


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    default = os.environ.get("TREECLIP_CACHE_DIR") or Path.home() / ".cache" / "treeclip" / "features"
    return args.cache_dir or Path(default)


def _load(label: str, model_id: str, device: str) -> Any:
    from treeclip.eval.features import model_fingerprint  # noqa: PLC0415
    from treeclip.eval.runner import EvalModel  # noqa: PLC0415
    from treeclip.model import load_model  # noqa: PLC0415

    model, _, preprocess, tokenizer = load_model(model_id, device=device)
    return EvalModel(label=label, fingerprint=model_fingerprint(model_id, model), model=model,
                     preprocess=preprocess, tokenizer=tokenizer)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def run(args: argparse.Namespace) -> int:
    from treeclip.cli._options import check_hub_model  # noqa: PLC0415
    from treeclip.cli._progress import progress as progress_bar  # noqa: PLC0415
    from treeclip.eval.benchmarks import load_task, split_task_specs  # noqa: PLC0415
    from treeclip.eval.report import paper_table, write_classes, write_reports  # noqa: PLC0415
    from treeclip.formats import parse_column_map  # noqa: PLC0415

    # Every argument, task folder and model id is checked before torch loads (tests/test_cli.py).
    if args.batch_size < 1 or args.workers < 0 or args.hierarchy_pairs < 1:
        raise UsageError("--batch-size and --hierarchy-pairs must be at least 1, --workers at least 0")
    shots, default_types = _shots(args.shots), _text_types(args.text_type or "taxon_com")
    specs = _model_specs(args.model)
    for _, model_id in specs:
        check_hub_model(model_id)
    columns = parse_column_map(args.columns)
    benchmarks = [load_task(spec, columns) for spec in split_task_specs(args.task)]
    text_types_of = {b.name: _text_types(args.text_type or b.default_text_type) for b in benchmarks}
    for benchmark in benchmarks:
        classes = write_classes(benchmark, args.out / _safe(benchmark.name) / "classes.csv", TEXT_TYPES)
        print(f"{benchmark.name}: {len(benchmark.classes)} classes, texts used: {classes}")
        for text_type in text_types_of[benchmark.name]:  # two classes with one text: fail before any model
            benchmark.class_strings(text_type)

    from treeclip.eval.features import FeatureCache  # noqa: PLC0415
    from treeclip.eval.runner import EvalSettings, evaluate, image_features  # noqa: PLC0415
    from treeclip.eval.tsne import drilldown_plots  # noqa: PLC0415

    settings = EvalSettings(shots=shots, text_types=default_types, templates=args.templates,
                            batch_size=args.batch_size, device=args.device, num_workers=args.workers,
                            linear_probe=not args.no_linear_probe, hierarchy_pairs=args.hierarchy_pairs,
                            seed=args.seed)
    settings_of = {name: replace(settings, text_types=types) for name, types in text_types_of.items()}
    cache = FeatureCache(_cache_dir(args))
    bars: list[Any] = []

    def progress(desc: str, total: int) -> Any:  # one phase at a time: the previous one has ended
        for bar in bars:
            bar.close()
        bars[:] = [progress_bar(total=total, unit="items", label=f"treeclip eval: {desc}", desc=desc)]
        return bars[-1].update

    results = []
    for label, model_id in specs:
        model = _load(label, model_id, args.device)
        for benchmark in benchmarks:
            task_settings = settings_of[benchmark.name]
            features = image_features(model, benchmark, cache=cache, settings=task_settings, progress=progress)
            results.append(evaluate(model, benchmark, cache=cache, settings=task_settings, progress=progress,
                                    features=features))
            if args.tsne and benchmark.taxonomic:
                drilldown_plots(features, benchmark.taxa(), args.out / "plots", seed=args.seed,
                                prefix=f"tsne_{_safe(label)}_{_safe(benchmark.name)}")
    for bar in bars:
        bar.close()
    paths = write_reports(results, args.out)  # each task's zero-shot figure with its own text type
    print(paper_table(results))
    print(f"report: {paths['markdown']}")
    return 0
