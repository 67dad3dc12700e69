"""Evaluation reports: ``results.json`` (everything), ``results.csv`` (one row per number) and ``report.md``
(a BioCLIP paper-style table: models × tasks per setting with a mean column; the train-type × test-type
ablation grid; hierarchy metrics). All accuracies are reported in percent in the tables, each with its spread:
``± std`` over the seeded few-shot runs, and for a single deterministic figure (zero-shot, rank accuracy) the
binomial standard error ``sqrt(p (1 - p) / n_images)``; a Mean is given ± the standard error of the mean of
the task figures. Every table of accuracies has a ``chance`` row (1 / number of classes), and a task table
gives each task's image and class counts and the ranks its classes are named at; hierarchy metrics use only
those ranks (the others are ``–`` and listed as missing)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treeclip.atomic import atomic_write
from treeclip.taxonomy import RANK_NAMES

if TYPE_CHECKING:
    from treeclip.eval.benchmarks import Benchmark

CSV_COLUMNS = ("model", "task", "metric", "text_type", "k", "value", "std")
FEW_SHOT_METHODS = ("simpleshot", "linear_probe")


def _clean(value: Any) -> Any:
    """NaN → None, recursively (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _rows(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Flat (metric, text type, k, value, std) rows of one model × task result."""
    base = {"model": result["model"], "task": result["task"]}
    for text_type, zero in result.get("zero_shot", {}).items():
        for metric in ("top1", "top5"):
            yield {**base, "metric": f"zero_shot_{metric}", "text_type": text_type, "k": 0, "value": zero[metric]}
        if zero.get("ece") is not None:
            yield {**base, "metric": "zero_shot_ece", "text_type": text_type, "k": 0, "value": zero["ece"]}
    for method in FEW_SHOT_METHODS:
        for k, few in result.get(method, {}).items():
            yield {**base, "metric": method, "k": k, "value": few["mean"], "std": few["std"]}
    hierarchy = result.get("hierarchy", {})
    for rank, value in hierarchy.get("rank_accuracy", {}).items():
        yield {**base, "metric": f"rank_accuracy_{rank}", "value": value}
    for metric in ("mistake_severity", "distance_spearman"):
        if metric in hierarchy:
            yield {**base, "metric": metric, "value": hierarchy[metric]}


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if len(present) == len(values) and present else None


def _cell(value: float | None, spread: float | None) -> str:
    """A percentage with its spread, e.g. ``72.1 ± 0.4``."""
    if spread is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return _pct(value)
    return f"{_pct(value)} ± {100 * spread:.1f}"


def _binomial_error(p: float | None, n: int | None) -> float | None:
    """Standard error of a proportion `p` measured on `n` images."""
    if p is None or not n or (isinstance(p, float) and math.isnan(p)):
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def _mean_error(errors: Sequence[float | None]) -> float | None:
    """Standard error of a mean of independent figures with these errors."""
    return math.sqrt(sum(e * e for e in errors)) / len(errors) if errors and None not in errors else None


def _chance(result: dict[str, Any] | None) -> float | None:
    return 1 / result["n_classes"] if result and result.get("n_classes") else None


def _ranks_present(result: dict[str, Any]) -> list[str]:
    return [rank for rank in RANK_NAMES if rank in result.get("hierarchy", {}).get("rank_accuracy", {})]


def task_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per task: images, classes, chance level and the ranks its classes are named at."""
    rows, seen = [], set()
    for r in results:
        if r["task"] in seen:
            continue
        seen.add(r["task"])
        ranks = _ranks_present(r)
        types = ", ".join(f"`{t}`" for t in r.get("zero_shot", {}))
        rows.append([r["task"], str(r.get("n_images", "–")), str(r.get("n_classes", "–")), _pct(_chance(r)),
                     ", ".join(ranks) if ranks else "–", types or "–"])
    return _table(["Task", "Images", "Classes", "Chance (%)", "Ranks of its classes", "Zero-shot text type(s)"], rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _own_type(result: dict[str, Any], text_type: str | None) -> str | None:
    """`text_type`, or (None) the task's own first zero-shot text type: its default or the first asked."""
    return text_type or next(iter(result.get("zero_shot", {})), None)


def _shared_type(results: Sequence[dict[str, Any]], text_type: str | None) -> str | None:
    """`text_type`, else the one first text type all tasks share, else None (each task its own)."""
    own = {_own_type(r, None) for r in results if "zero_shot" in r}
    return text_type or (own.pop() if len(own) == 1 else None)


def _setting_value(result: dict[str, Any], setting: str, text_type: str | None, method: str) -> float | None:
    if setting == "zero-shot":
        return result.get("zero_shot", {}).get(_own_type(result, text_type), {}).get("top1")
    return result.get(method, {}).get(setting.split("-")[0], {}).get("mean")


def _setting_spread(result: dict[str, Any], setting: str, text_type: str | None, method: str) -> float | None:
    """± of a table figure: std over the few-shot runs, the binomial standard error for zero-shot."""
    if setting == "zero-shot":
        return _binomial_error(_setting_value(result, setting, text_type, method), result.get("n_images"))
    return result.get(method, {}).get(setting.split("-")[0], {}).get("std")


def paper_table(results: Sequence[dict[str, Any]], *, text_type: str | None = None, method: str = "simpleshot",
                zero_shot: bool = True) -> str:
    """Rows model × setting (zero-shot with `text_type`, by default each task's own first text type; then each
    k-shot of `method`), columns tasks + Mean (top-1 %)."""
    text_type = _shared_type(results, text_type)
    models = list(dict.fromkeys(r["model"] for r in results))
    tasks = list(dict.fromkeys(r["task"] for r in results))
    index = {(r["model"], r["task"]): r for r in results}
    ks = sorted({int(k) for r in results for k in r.get(method, {})})
    with_zero = zero_shot and any("zero_shot" in r for r in results)
    settings = (["zero-shot"] if with_zero else []) + [f"{k}-shot" for k in ks]
    first = {task: next(r for r in results if r["task"] == task) for task in tasks}
    chance = [_chance(first[t]) for t in tasks]
    rows = [["chance", "–", *map(_pct, chance), _pct(_mean(chance))]]
    for model in models:
        for setting in settings:
            found = [index.get((model, t)) for t in tasks]
            values = [_setting_value(r, setting, text_type, method) if r else None for r in found]
            spreads = [_setting_spread(r, setting, text_type, method) if r else None for r in found]
            cells = [_cell(v, e) for v, e in zip(values, spreads, strict=True)]
            rows.append([model, setting, *cells, _cell(_mean(values), _mean_error(spreads))])
    headers = tasks if text_type or not with_zero else [f"{t} ({_own_type(first[t], None)})" for t in tasks]
    return _table(["Model", "Setting", *headers, "Mean"], rows)


def ablation_grid(results: Sequence[dict[str, Any]]) -> str:
    """Rows = models (their training text type), columns = test text types: zero-shot top-1 % averaged over
    tasks."""
    models = list(dict.fromkeys(r["model"] for r in results))
    test_types = list(dict.fromkeys(t for r in results for t in r.get("zero_shot", {})))
    rows = []
    for model in models:
        mine = [r for r in results if r["model"] == model]
        values = [_mean([r.get("zero_shot", {}).get(t, {}).get("top1") for r in mine]) for t in test_types]
        rows.append([model, *map(_pct, values), _pct(_mean(values))])
    return _table(["Model (train type) \\ test type", *test_types, "Mean"], rows)


def hierarchy_table(results: Sequence[dict[str, Any]]) -> str:
    """Per model × task: accuracy at each rank (%), mistake severity (ranks) and distance correlation."""
    with_tree = [r for r in results if "hierarchy" in r]
    present = {rank for r in with_tree for rank in _ranks_present(r)}
    ranks = [rank for rank in RANK_NAMES if rank in present]  # rank order, kingdom first
    rows = []
    for r in with_tree:
        h = r["hierarchy"]
        severity, rho = h.get("mistake_severity"), h.get("distance_spearman")
        accuracy = h.get("rank_accuracy", {})
        cells = [_cell(accuracy.get(k), _binomial_error(accuracy.get(k), r.get("n_images"))) for k in ranks]
        rows.append([r["model"], r["task"], *cells,
                     "–" if severity is None else f"{severity:.2f}", "–" if rho is None else f"{rho:.3f}"])
    table = _table(["Model", "Task", *ranks, "Mistake severity", "Spearman ρ"], rows)
    missing = {r["task"]: [k for k in ranks if k not in _ranks_present(r)] for r in with_tree}
    notes = [f"- {task}: its classes are not named at {', '.join(gone)}, so its hierarchy metrics use the other "
             "ranks only" for task, gone in missing.items() if gone]
    return "\n".join([table, *([""] + notes if notes else [])])


def calibration_table(results: Sequence[dict[str, Any]], *, text_type: str | None = None) -> str:
    """Per model × task: expected calibration error of zero-shot top-1 probabilities and selective accuracy
    (top-1 % on the most confident 30/50/80/100 % of images)."""
    coverages = ("0.3", "0.5", "0.8", "1.0")
    rows = []
    for r in results:
        zero = r.get("zero_shot", {}).get(_own_type(r, text_type), {})
        if zero.get("ece") is not None:
            curve = zero.get("accuracy_coverage", {})
            rows.append([r["model"], r["task"], _pct(zero["ece"]), *(_pct(curve.get(c)) for c in coverages)])
    return _table(["Model", "Task", "ECE (%)", *(f"acc @ {float(c):.0%} coverage" for c in coverages)], rows)


def _texts_said(text_type: str | None) -> str:
    return f"`{text_type}`" if text_type else "each task's own first text type (Tasks table)"


def markdown_report(results: Sequence[dict[str, Any]], *, text_type: str | None = None,
                    title: str = "Evaluation") -> str:
    """The whole Markdown report."""
    text_type = _shared_type(results, text_type)
    parts = [f"# {title}", "", "## Tasks", "", task_table(results), "", "## Accuracy", "",
             f"Top-1 accuracy (%); zero-shot class texts: {_texts_said(text_type)}, ± the binomial standard error; "
             "few-shot: SimpleShot nearest centroid, mean ± std over 5 seeded runs; Mean ± its standard error.", "",
             paper_table(results, text_type=text_type)]
    if any("zero_shot" in r for r in results):
        parts += ["", "## Train type × test type (zero-shot top-1 %, mean over tasks)", "", ablation_grid(results)]
    if any(r.get("zero_shot", {}).get(_own_type(r, text_type), {}).get("ece") is not None for r in results):
        parts += ["", "## Calibration and selective accuracy", "", "Expected calibration error of the zero-shot "
                  "top-1 softmax probability (15 bins) and top-1 % when answering only the most confident "
                  "images.", "", calibration_table(results, text_type=text_type)]
    if any("linear_probe" in r for r in results):
        parts += ["", "## Linear probe (logistic regression, top-1 %)", "",
                  paper_table(results, text_type=text_type, method="linear_probe", zero_shot=False)]
    if any("hierarchy" in r for r in results):
        parts += ["", "## Hierarchy", "", "Rank accuracy of zero-shot species predictions (%), mean taxonomic "
                  "distance of the wrong ones, and Spearman correlation of embedding vs taxonomic distance.", "",
                  hierarchy_table(results)]
    return "\n".join(parts) + "\n"


def write_reports(results: Sequence[dict[str, Any]], out_dir: str | Path, *, text_type: str | None = None,
                  title: str = "Evaluation") -> dict[str, Path]:
    """Write results.json, results.csv and report.md into `out_dir` (atomically); returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "report.md"}
    atomic_write(paths["json"], json.dumps(_clean(list(results)), indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerows(_clean(row) for row in _rows(result))
    atomic_write(paths["csv"], buffer.getvalue())
    atomic_write(paths["markdown"], markdown_report(results, text_type=text_type, title=title))
    return paths


def write_classes(benchmark: Benchmark, path: str | Path, text_types: Sequence[str]) -> Path:
    """``classes.csv``: every class (its label, ranks and common name) with the exact text used for each text
    type, so that what was scored can be audited."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", *RANK_NAMES, "common", *text_types])
    columns = [benchmark.texts(kind) for kind in text_types]
    for index, (name, taxon) in enumerate(zip(benchmark.class_names, benchmark.classes, strict=True)):
        writer.writerow([name, *taxon.lineage, taxon.common, *(texts[index] for texts in columns)])
    atomic_write(path, buffer.getvalue())
    return Path(path)
