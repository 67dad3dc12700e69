"""The demo's report: BioCLIP's findings as checks with pass/fail, computed from this run's numbers.

`findings` measures each claim; `summary` gathers the numbers (``summary.json``); `markdown` writes
``report.md`` with the sections the issue asks for: zero-shot on unseen species by test text type (and the
open variant), the train-type × test-type grid, few-shot and hierarchy metrics against the untrained model,
and the t-SNE plots. Tables come from `treeclip.eval.report`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_write
from treeclip.demo.pipeline import MIXED, REPORT_FILE, SUMMARY_FILE, UNTRAINED, DemoSettings, StepTiming
from treeclip.eval.benchmarks import Benchmark
from treeclip.eval.report import ablation_grid, hierarchy_table, paper_table

UNSEEN_TIMES_CHANCE, UNSEEN_TIMES_COMMON = 5.0, 2.0


@dataclass(frozen=True)
class Finding:
    """One claim of BioCLIP checked on this run: what was measured, the goal, and whether it was met."""

    key: str
    claim: str
    measured: str
    goal: str
    passed: bool


class Numbers:
    """Lookups into the evaluation results (model × task dicts of `treeclip.eval.runner.evaluate`)."""

    def __init__(self, results: Sequence[dict[str, Any]]) -> None:
        self.index = {(r["model"], r["task"]): r for r in results}

    def top1(self, model: str, task: str, text_type: str) -> float:
        return self.index[(model, task)]["zero_shot"][text_type]["top1"]

    def rank(self, model: str, task: str, rank: str) -> float:
        return self.index[(model, task)]["hierarchy"]["rank_accuracy"][rank]

    def hierarchy(self, model: str, task: str, metric: str) -> float | None:
        return self.index[(model, task)]["hierarchy"].get(metric)

    def shot(self, model: str, k: int) -> float:
        return self.index[(model, "unseen")]["simpleshot"][str(k)]["mean"]

    def grid_mean(self, model: str, types: Sequence[str]) -> float:
        """Zero-shot top-1 averaged over test types and the unseen and seen tasks."""
        values = [self.top1(model, task, t) for task in ("unseen", "seen") for t in types]
        return sum(values) / len(values)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _ge(value: float | None, other: float | None) -> bool:
    return value is not None and other is not None and value >= other


def findings(numbers: Numbers, settings: DemoSettings, chance: dict[str, float]) -> list[Finding]:
    """Each BioCLIP claim measured on this run (primary test text type = the first of `settings.test_types`)."""
    primary, types = settings.test_types[0], settings.test_types
    mixed = numbers.top1(MIXED, "unseen", primary)
    common = numbers.top1("com", "unseen", "com")
    singles = list(settings.baselines)
    grid = {model: numbers.grid_mean(model, types) for model in (MIXED, *singles)}
    best_single = max(singles, key=grid.__getitem__)
    open_rank = {(m, r): numbers.rank(m, "open", r) for m in (MIXED, "com") for r in ("species", "genus")}
    rho = {m: numbers.hierarchy(m, "unseen", "distance_spearman") for m in (MIXED, UNTRAINED)}
    severity = {m: numbers.hierarchy(m, "open", "mistake_severity") for m in (MIXED, UNTRAINED)}
    shots = [k for k in settings.shots if k > 0]
    return [
        Finding("unseen_vs_chance", f"Zero-shot on unseen species: the mixed model ({primary} class texts) "
                f"reaches ≥ {UNSEEN_TIMES_CHANCE:g}× chance", f"{_pct(mixed)} = {mixed / chance['unseen']:.1f}× "
                f"chance ({_pct(chance['unseen'])})", f"≥ {_pct(UNSEEN_TIMES_CHANCE * chance['unseen'])}",
                mixed >= UNSEEN_TIMES_CHANCE * chance["unseen"]),
        Finding("unseen_vs_common", "Zero-shot on unseen species: mixed ≥ "
                f"{UNSEEN_TIMES_COMMON:g}× the common-names-only model (com class texts)",
                f"{_pct(mixed)} vs {_pct(common)}", f"≥ {_pct(UNSEEN_TIMES_COMMON * common)}",
                mixed >= UNSEEN_TIMES_COMMON * common and mixed > common),
        Finding("open_ranks", "Open variant (all species as labels): mixed beats common-only at species and "
                "genus rank", ", ".join(f"{r} {_pct(open_rank[(MIXED, r)])} vs {_pct(open_rank[('com', r)])}"
                                        for r in ("species", "genus")),
                "mixed > common at both ranks",
                all(open_rank[(MIXED, r)] > open_rank[("com", r)] for r in ("species", "genus"))),
        Finding("grid_mixed_best", "Text-type grid: mixed training generalises best across test text types "
                "(mean zero-shot top-1 over test types, unseen + seen species)",
                f"mixed {_pct(grid[MIXED])} vs best single-type ({best_single}) {_pct(grid[best_single])}",
                "mixed ≥ every single-type model", all(grid[MIXED] >= v for v in grid.values())),
        Finding("fewshot_vs_untrained", "Few-shot (SimpleShot) on unseen species: mixed beats the untrained model",
                ", ".join(f"{k}-shot {_pct(numbers.shot(MIXED, k))} vs {_pct(numbers.shot(UNTRAINED, k))}"
                          for k in shots), "mixed > untrained at every k",
                all(numbers.shot(MIXED, k) > numbers.shot(UNTRAINED, k) for k in shots)),
        Finding("hierarchy_vs_untrained", "Hierarchy: the mixed model's embedding follows the tree (higher "
                "distance correlation, milder mistakes than the untrained model)",
                f"Spearman ρ {_fmt(rho[MIXED])} vs {_fmt(rho[UNTRAINED])}; mistake severity (open) "
                f"{_fmt(severity[MIXED])} vs {_fmt(severity[UNTRAINED])} ranks",
                "ρ higher and severity lower",
                _ge(rho[MIXED], rho[UNTRAINED]) and _ge(severity[UNTRAINED], severity[MIXED])),
    ]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _chance(tasks: dict[str, Benchmark]) -> dict[str, float]:
    return {task: 1.0 / len(benchmark.classes) for task, benchmark in tasks.items()}


def summary(*, settings: DemoSettings, facts: dict[str, Any], results: Sequence[dict[str, Any]],
            tasks: dict[str, Benchmark], timings: Sequence[StepTiming], out: Path) -> dict[str, Any]:
    """Every number the report shows, JSON-ready."""
    numbers, chance = Numbers(results), _chance(tasks)
    models = list(dict.fromkeys(r["model"] for r in results))
    checks = findings(numbers, settings, chance)
    shots = [k for k in settings.shots if k > 0]
    return {
        "settings": settings.to_json(),
        "world": facts["world"], "shards": facts["shards"], "runs": facts["runs"],
        "tasks": {task: {"images": len(b.paths), "classes": len(b.classes)} for task, b in tasks.items()},
        "chance": chance,
        "zero_shot": {task: {m: {t: numbers.top1(m, task, t) for t in numbers.index[(m, task)]["zero_shot"]}
                             for m in models} for task in tasks},
        "open_rank_accuracy": {m: numbers.index[(m, "open")]["hierarchy"]["rank_accuracy"] for m in models},
        "few_shot": {m: {str(k): numbers.shot(m, k) for k in shots} for m in models},
        "hierarchy": {m: {task: {k: v for k, v in numbers.index[(m, task)]["hierarchy"].items() if k != "rank_accuracy"}
                          for task in ("unseen", "open")} for m in models},
        "findings": [asdict(f) for f in checks],
        "all_passed": all(f.passed for f in checks),
        "plots": [os.path.relpath(p, out) for p in facts["plots"]],
        "artifacts": facts.get("artifacts"),
        "timings": [asdict(t) for t in timings],
    }


def _findings_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Findings", "", f"{sum(f['passed'] for f in data['findings'])} of {len(data['findings'])} "
             "findings reproduced on this run" + ("." if data["all_passed"] else "; those marked FAIL did "
             "not reproduce on this run."), ""]
    for f in data["findings"]:
        lines.append(f"- **{'PASS' if f['passed'] else 'FAIL'}** — {f['claim']}: {f['measured']} (goal: {f['goal']})")
    return lines + [""]


def _intro(data: dict[str, Any], settings: DemoSettings) -> list[str]:
    world, tasks = data["world"], data["tasks"]
    runs = ", ".join(f"`{name}` ({run['text_type']}, {run['steps']} steps)" for name, run in data["runs"].items())
    lines = ["# treeclip demo: BioCLIP's findings on the miniature tree of life", ""]
    if settings.quick:
        lines += ["> **Quick mode**: a smaller world, model and training; its numbers are indicative only.", ""]
    return lines + [
        f"World: {world['species']['seen'] + world['species']['unseen']} species "
        f"({world['species']['unseen']} unseen: no training images, their relatives seen), "
        f"{settings.images_per_species} images each at {settings.image_size} px; taxa per rank "
        f"{world['taxa']}. Model `{settings.model}`, batch {settings.batch_size}, {settings.epochs} epochs: {runs}; "
        f"plus `untrained` (the same architecture, randomly initialised). Zero-shot class texts use the "
        f"`{settings.templates}` templates; accuracies are top-1 (%). Tasks: unseen ({tasks['unseen']['images']} "
        f"images, {tasks['unseen']['classes']} classes), open ({tasks['open']['classes']} classes), seen "
        f"({tasks['seen']['images']} val images of {tasks['seen']['classes']} training species).", ""]


def _timing_line(t: dict[str, Any]) -> str:
    reused, detail = " (reused)" if t["reused"] else "", f" — {t['detail']}" if t["detail"] else ""
    return f"- {t['name']}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU{reused}{detail}"


def _by_task(results: Sequence[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [r for r in results if r["task"] == task]


def markdown(data: dict[str, Any], settings: DemoSettings, results: Sequence[dict[str, Any]]) -> str:
    """The whole report.md."""
    chance, primary = data["chance"], settings.test_types[0]
    lines = _intro(data, settings) + _findings_section(data) + [
        "## 1. Zero-shot on unseen species", "",
        f"Label set = the {data['tasks']['unseen']['classes']} unseen species (as BioCLIP's Rare Species); "
        f"chance = {100 * chance['unseen']:.1f}%. Rows: training text type; columns: test text type.", "",
        ablation_grid(_by_task(results, "unseen")), "",
        "### Open variant", "",
        f"The same images, label set = all {data['tasks']['open']['classes']} species (chance "
        f"{100 * chance['open']:.2f}%), `{primary}` class texts; accuracy of the predicted species' lineage at "
        "each rank (species = exact species, genus = right genus).", "",
        hierarchy_table(_by_task(results, "open")), "",
        "## 2. Text-type grid: mixed vs single-type training", "",
        "Unseen species: the table of section 1. Seen species (val images of training species, label set = "
        f"the {data['tasks']['seen']['classes']} seen species, chance {100 * chance['seen']:.1f}%):", "",
        ablation_grid(_by_task(results, "seen")), "",
        "Mean over both tasks:", "", ablation_grid([r for r in results if r["task"] in ("unseen", "seen")]), "",
        "## 3. Few-shot and hierarchy metrics against the untrained model", "",
        "Unseen species; zero-shot with `" + primary + "` texts; k-shot = SimpleShot nearest centroid, mean "
        "over 5 seeded runs.", "", paper_table(_by_task(results, "unseen"), text_type=primary), "",
        "Hierarchy metrics on the unseen species (rank accuracy of zero-shot predictions, mean taxonomic "
        "distance of wrong predictions, Spearman correlation of embedding vs taxonomic distance):", "",
        hierarchy_table(_by_task(results, "unseen")), "",
        "## 4. t-SNE of the unseen species' images", "",
        "Drill-down: all images by kingdom, then the largest group one rank lower.", "",
        *[f"![{Path(p).stem}]({p})" for p in data["plots"]], "",
        "## Run", "",
        *[_timing_line(t) for t in data["timings"]],
    ]
    if data.get("artifacts"):
        art = data["artifacts"]
        lines += ["", f"The mixed model is exported to `{art['model']}` (open_clip hub layout) with a label bank of "
                  f"every species at `{art['bank']}`: `treeclip predict IMAGE --model {art['model']} --bank "
                  f"{art['bank']}`."]
    return "\n".join(lines) + "\n"


def write_demo_report(out: Path, *, settings: DemoSettings, facts: dict[str, Any], results: Sequence[dict[str, Any]],
                      tasks: dict[str, Benchmark], timings: Sequence[StepTiming]) -> tuple[Path, Path, dict[str, Any]]:
    """Write report.md and summary.json into `out`; returns their paths and the summary."""
    data = summary(settings=settings, facts=facts, results=results, tasks=tasks, timings=timings, out=out)
    report, summary_path = out / REPORT_FILE, out / SUMMARY_FILE
    atomic_write(summary_path, json.dumps(data, indent=1) + "\n")
    atomic_write(report, markdown(data, settings, results))
    return report, summary_path, data


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The short summary the CLI prints: key numbers and one line per finding."""
    primary = data["settings"]["test_types"][0]
    zero = data["zero_shot"]["unseen"]
    lines = [f"{'model':<10} {'unseen ' + primary:>20} {'open genus':>11} " + " ".join(
        f"{k + '-shot':>7}" for k in next(iter(data["few_shot"].values())))]
    for model, types in zero.items():
        genus = data["open_rank_accuracy"][model].get("genus")
        lines.append(f"{model:<10} {_pct(types[primary]):>20} {_pct(genus):>11} "
                     + " ".join(f"{_pct(v):>7}" for v in data["few_shot"][model].values()))
    lines.append(f"chance: unseen {_pct(data['chance']['unseen'])}, open {_pct(data['chance']['open'])}")
    lines += [f"{'PASS' if f['passed'] else 'FAIL'}  {f['claim']}: {f['measured']}" for f in data["findings"]]
    return lines
