"""The demo's report: BioCLIP's claims, each measured on this run with a confidence interval and a verdict.

`findings` compares the mixed-text model with the alternative each claim names — always including the
strongest single-text-type model — through paired bootstrap intervals (`treeclip.demo.stats`): a finding is
PASS only when the interval of the difference excludes the alternative, FAIL when it excludes the claim, and
"not shown" otherwise. `winners` says which model won each metric. `summary` gathers every number
(``summary.json``, with versions, commit and absolute paths); `markdown` writes ``report.md``.

Further demo sections (e.g. geography) hook in through the pipeline's ``facts``: ``facts["extra_sections"]``
(Markdown strings, placed before the Run section) and ``facts["extra_summary"]`` (JSON-ready, under "extra").
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treeclip.atomic import atomic_write
from treeclip.demo.evidence import PAIRS, measures
from treeclip.demo.pipeline import MIXED, REPORT_FILE, SUMMARY_FILE, UNTRAINED, DemoSettings, StepTiming
from treeclip.demo.stats import CONFIDENCE, RESAMPLES, Interval, Measure, Resampled
from treeclip.eval.benchmarks import Benchmark
from treeclip.eval.report import ablation_grid, hierarchy_table, paper_table
from treeclip.taxonomy import RANK_NAMES

PASS, NOT_SHOWN, FAIL = "PASS", "not shown", "FAIL"
TIMES_CHANCE = 5.0  # treeclip's own bar for "well above chance"; BioCLIP sets none
DIRECT = "none: a direct comparison"
VERSIONED = ("torch", "open_clip_torch", "numpy", "scipy", "scikit-learn")
TEXT_TYPES = {"com": "common names", "sci": "scientific names", "taxon": "taxonomic names",
              "sci_com": "scientific + common names", "taxon_com": "taxonomic + common names"}


@dataclass(frozen=True)
class Finding:
    """One BioCLIP claim checked on this run: the claim, what treeclip measures for it, the figures with
    intervals, whose threshold decides, and the verdict from the interval of the difference."""

    key: str
    bioclip: str
    test: str
    measured: str
    threshold: str
    verdict: str
    difference: Interval


@dataclass(frozen=True)
class Metric:
    """A metric of the winners table: its evidence key, label, unit and direction."""

    key: str
    label: str
    percent: bool = True
    lower_is_better: bool = False


def verdict(difference: Interval) -> str:
    """PASS when the interval of (claimed better − alternative) lies above zero, FAIL below, else not shown."""
    if difference.low > 0:
        return PASS
    if difference.high < 0:
        return FAIL
    return NOT_SHOWN


class Bootstraps:
    """Each metric's models resampled together, on first use (`Resampled`)."""

    def __init__(self, evidence: Mapping[str, Mapping[str, Measure]], *, seed: int = 0,
                 resamples: int = RESAMPLES) -> None:
        self.evidence, self.seed, self.resamples = evidence, seed, resamples
        self._done: dict[str, Resampled] = {}

    def __getitem__(self, metric: str) -> Resampled:
        if metric not in self._done:
            self._done[metric] = self.resample(dict(self.evidence[metric]))
        return self._done[metric]

    def resample(self, named: dict[str, Measure]) -> Resampled:
        return Resampled(named, seed=self.seed, resamples=self.resamples)


def _fmt(interval: Interval, percent: bool = True) -> str:
    if percent:
        return f"{100 * interval.point:.1f}% [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"
    return f"{interval.point:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _fmt_diff(interval: Interval, percent: bool = True) -> str:
    if percent:
        return f"{100 * interval.point:+.1f} pp [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return f"{interval.point:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def _versus(r: Resampled, claimed: str, alternative: str, *, metric: Metric, key: str, bioclip: str, test: str,
            threshold: str = DIRECT, also: str = "") -> Finding:
    """The finding "`claimed` beats `alternative` on `metric`" (for a lower-is-better metric: is lower)."""
    first, second = (alternative, claimed) if metric.lower_is_better else (claimed, alternative)
    difference = r.difference(first, second)
    measured = (f"{claimed} {_fmt(r.value(claimed), metric.percent)} vs {alternative} "
                f"{_fmt(r.value(alternative), metric.percent)}; {'advantage' if metric.lower_is_better else 'difference'}"
                f" {_fmt_diff(difference, metric.percent)}{also}")
    return Finding(key, bioclip, test, measured, threshold, verdict(difference), difference)


def _also_single(r: Resampled, singles: Sequence[str], metric: Metric) -> str:
    """"; strongest single-type (X) …, mixed − X …" for findings whose alternative is another model."""
    best = r.best(singles, lower_is_better=metric.lower_is_better)
    first, second = (best, MIXED) if metric.lower_is_better else (MIXED, best)
    return (f"; strongest single-type model `{best}` {_fmt(r.value(best), metric.percent)}, mixed's advantage "
            f"over it {_fmt_diff(r.difference(first, second), metric.percent)}")


def findings(boot: Bootstraps, *, primary: str, test_types: Sequence[str], singles: Sequence[str],
             chance: float, shots: Sequence[int]) -> list[Finding]:
    """Each BioCLIP claim measured on this run (`primary`: the test text type; `chance`: 1 / unseen classes)."""
    unseen = Metric(f"zero_shot/unseen/{primary}", f"zero-shot top-1, unseen species, {primary} texts")
    r = boot[unseen.key]
    best = r.best(singles)
    above = r.difference(MIXED, chance, scale=TIMES_CHANCE)
    result = [
        Finding("unseen_vs_chance", "zero-shot naming of species never seen in training works (BioCLIP: 38.1% "
                "top-1 on Rare Species, 400 species, chance 0.25%)",
                f"mixed model, {unseen.label}: at least {TIMES_CHANCE:g}× chance",
                f"mixed {_fmt(r.value(MIXED))} vs {TIMES_CHANCE:g}× chance = {100 * TIMES_CHANCE * chance:.1f}%; "
                f"strongest single-type model `{best}` {_fmt(r.value(best))}",
                f"treeclip's own ({TIMES_CHANCE:g}× chance); BioCLIP sets none", verdict(above), above),
        _versus(r, MIXED, best, metric=unseen, key="unseen_vs_single",
                bioclip="training on mixed text types generalises best to unseen taxa (text-type ablation)",
                test=f"{unseen.label}: mixed vs the strongest single-type model"),
    ]
    grid = Metric("grid", "zero-shot top-1 over every test text type, unseen + seen species")
    r = boot[grid.key]
    result.append(_versus(r, MIXED, r.best(singles), metric=grid, key="grid_vs_single",
                          bioclip="training on mixed text types generalises best across test text types",
                          test=f"{grid.label}: mixed vs the strongest single-type model"))
    genus = Metric("open/genus", "open variant (every species a label): predicted genus right")
    r = boot[genus.key]
    result.append(_versus(r, MIXED, r.best(singles), metric=genus, key="open_genus_vs_single",
                          bioclip="taxonomic text places unseen species in the right part of the tree (argued "
                          "qualitatively; BioCLIP reports no rank accuracy)",
                          test=f"{genus.label}: mixed vs the strongest single-type model",
                          threshold=f"{DIRECT}; the metric is treeclip's own"))
    result.append(_best_test_type(boot, primary=primary, test_types=test_types))
    untrained_note = ("; the untrained model stands in for CLIP (treeclip has no general model offline) and "
                      "is a far weaker baseline")
    for k in (k for k in shots if k > 0):
        metric = Metric(f"few_shot/{k}", f"{k}-shot SimpleShot, unseen species")
        r = boot[metric.key]
        result.append(_versus(r, MIXED, UNTRAINED, metric=metric, key=f"few_shot_{k}",
                              bioclip="few-shot on unseen species beats general models (BioCLIP 44.9 / 65.7% "
                              "1- / 5-shot on Rare Species vs CLIP 28.5 / 46.1%)",
                              test=f"{metric.label}: mixed vs untrained", threshold=DIRECT + untrained_note,
                              also=_also_single(r, singles, metric)))
    hierarchy = "BioCLIP's image embedding follows the tree of life (t-SNE separates taxa at every rank; qualitative)"
    for metric, key in ((Metric(PAIRS, "Spearman ρ of embedding vs taxonomic distance, unseen species",
                                percent=False), "hierarchy_rho"),
                        (Metric("open/severity", "mistake severity (ranks) of wrong open-variant predictions",
                                percent=False, lower_is_better=True), "mistake_severity")):
        r = boot[metric.key]
        result.append(_versus(r, MIXED, UNTRAINED, metric=metric, key=key, bioclip=hierarchy,
                              test=f"{metric.label}: mixed vs untrained",
                              threshold=f"{DIRECT}; the metric is treeclip's own" + untrained_note,
                              also=_also_single(r, singles, metric)))
    return result


def _best_test_type(boot: Bootstraps, *, primary: str, test_types: Sequence[str]) -> Finding:
    """The mixed model's zero-shot with `primary` class texts against its best other test text type."""
    r = boot.resample({t: boot.evidence[f"zero_shot/unseen/{t}"][MIXED] for t in test_types})
    other = r.best([t for t in test_types if t != primary])
    return _versus(r, primary, other, metric=Metric("zero_shot/unseen/*", "zero-shot by test text type"),
                   key="best_test_type",
                   bioclip="taxonomic + common name is the best single test text type",
                   test=f"mixed model, zero-shot on unseen species: {primary} class texts vs its best other type")


METRICS = (
    Metric("zero_shot/unseen/{primary}", "zero-shot, unseen species"),
    Metric("grid", "zero-shot, mean over test text types (unseen + seen)"),
    Metric("open/species", "open variant: species right"),
    Metric("open/genus", "open variant: genus right"),
    Metric("few_shot/1", "1-shot, unseen species"),
    Metric("few_shot/5", "5-shot, unseen species"),
    Metric(PAIRS, "Spearman ρ (embedding vs tree)", percent=False),
    Metric("open/severity", "mistake severity (ranks; lower is better)", percent=False, lower_is_better=True),
)


def winners(boot: Bootstraps, *, primary: str) -> list[dict[str, Any]]:
    """Per metric: every model's interval, the winner (best point estimate), and mixed against the winner
    (or, when mixed wins, against the runner-up), with whether that contradicts BioCLIP."""
    rows = []
    for metric in METRICS:
        key = metric.key.format(primary=primary)
        if key not in boot.evidence:
            continue
        r = boot[key]
        winner = r.best(r.names, lower_is_better=metric.lower_is_better)
        rival = winner if winner != MIXED else r.best([n for n in r.names if n != MIXED],
                                                      lower_is_better=metric.lower_is_better)
        first, second = (rival, MIXED) if metric.lower_is_better else (MIXED, rival)
        advantage = r.difference(first, second)
        outcome = verdict(advantage)
        rows.append({"metric": key, "label": metric.label, "percent": metric.percent,
                     "values": {name: asdict(r.value(name)) for name in r.names}, "winner": winner,
                     "rival": rival, "mixed_advantage": asdict(advantage), "outcome": outcome,
                     "contradicts_bioclip": outcome == FAIL})
    return rows


# ---------------------------------------------------------------- summary.json


def _provenance() -> dict[str, Any]:
    """Versions of Python, treeclip and its main libraries, and the git commit of this checkout if any."""
    versions = {"python": platform.python_version()}
    for name in ("treeclip", *VERSIONED):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "commit": commit}


def summary(*, settings: DemoSettings, facts: dict[str, Any], tasks: dict[str, Benchmark],
            timings: Sequence[StepTiming], out: Path) -> dict[str, Any]:
    """Every number the report shows, JSON-ready (points are means over the training seeds)."""
    evidence = measures(facts["evidence"])
    boot = Bootstraps(evidence, seed=settings.seed)
    primary, singles = settings.test_types[0], list(settings.baselines)
    chance = {task: 1.0 / len(benchmark.classes) for task, benchmark in tasks.items()}
    checks = findings(boot, primary=primary, test_types=settings.test_types, singles=singles,
                      chance=chance["unseen"], shots=settings.shots)
    models = list(evidence[f"zero_shot/unseen/{primary}"])

    def points(metric: str) -> dict[str, float]:
        return {model: m.point() for model, m in evidence[metric].items()}

    return {
        "settings": settings.to_json(), **_provenance(),
        "out": str(out.absolute()),
        "world": facts["world"], "shards": facts["shards"], "runs": facts["runs"],
        "tasks": {task: {"images": len(b.paths), "classes": len(b.classes)} for task, b in tasks.items()},
        "chance": chance,
        "confidence": CONFIDENCE, "resamples": RESAMPLES,
        "zero_shot": {task: {m: {t: evidence[f"zero_shot/{task}/{t}"][m].point() for t in settings.test_types
                                 if f"zero_shot/{task}/{t}" in evidence} for m in models}
                      for task in ("unseen", "seen")},
        "open_rank_accuracy": {m: {rank: points(f"open/{rank}")[m] for rank in ("species", "genus")} for m in models},
        "few_shot": {m: {str(k): points(f"few_shot/{k}")[m] for k in settings.shots if k > 0} for m in models},
        "hierarchy": {m: {"distance_spearman": points(PAIRS)[m], "mistake_severity": points("open/severity")[m]}
                      for m in models},
        "findings": [asdict(f) for f in checks],
        "verdicts": {v: sum(f.verdict == v for f in checks) for v in (PASS, NOT_SHOWN, FAIL)},
        "winners": winners(boot, primary=primary),
        "plots": [str(Path(p).absolute()) for p in facts["plots"]],
        "loss_plot": str(Path(facts["loss_plot"]).absolute()),
        "artifacts": {k: str(Path(v).absolute()) for k, v in (facts.get("artifacts") or {}).items()},
        "extra": facts.get("extra_summary", {}),
        "timings": [asdict(t) for t in timings],
    }


# ---------------------------------------------------------------- report.md


def _headline(data: dict[str, Any]) -> list[str]:
    counts, total = data["verdicts"], len(data["findings"])
    contradicted = [row for row in data["winners"] if row["contradicts_bioclip"]]
    seeds = len(data["settings"]["train_seeds"])
    lines = ["## What this run shows", "",
             f"Of {total} findings, {counts[PASS]} are shown (PASS: the {100 * data['confidence']:.0f}% interval "
             f"of the difference excludes the alternative), {counts[NOT_SHOWN]} are not shown (the interval "
             f"includes it) and {counts[FAIL]} are contradicted (FAIL). Intervals: bootstrap over images"
             + (f" and over the {seeds} training seeds" if seeds > 1 else " (one training seed)") + "."]
    if contradicted:
        lines += ["", "Where this run contradicts BioCLIP (another model beat the mixed-text model and the interval "
                  "excludes a tie): " + "; ".join(f"{row['label']}: `{row['winner']}`" for row in contradicted) + "."]
    return lines + [""]


def _findings_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Findings", ""]
    for f in data["findings"]:
        lines += [f"- **{f['verdict']}** — *BioCLIP*: {f['bioclip']}.  ", f"  *Here*: {f['test']}: {f['measured']}.  ",
                  f"  *Threshold*: {f['threshold']}."]
    return lines + [""]


def _winners_section(data: dict[str, Any]) -> list[str]:
    models = list(data["winners"][0]["values"]) if data["winners"] else []
    lines = ["## Which model won each metric", "",
             "Point estimate [95% interval] per model (means over training seeds); the last column is the mixed "
             "model's advantage over the winner (or, where mixed wins, over the runner-up).", "",
             "| metric | " + " | ".join(models) + " | winner | mixed's advantage |",
             "|---|" + "---|" * (len(models) + 2)]
    for row in data["winners"]:
        cells = [_fmt(Interval(**row["values"][m]), row["percent"]) for m in models]
        advantage = _fmt_diff(Interval(**row["mixed_advantage"]), row["percent"])
        note = {PASS: "", NOT_SHOWN: " (tie not excluded)", FAIL: " (contradicts BioCLIP)"}[row["outcome"]]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | `{row['winner']}` | {advantage}{note} |")
    return lines + [""]


def _taxa_counts(taxa: Mapping[str, int]) -> str:
    return ", ".join(f"{rank} {taxa[rank]}" for rank in RANK_NAMES if rank in taxa)


def _intro(data: dict[str, Any], settings: DemoSettings) -> list[str]:
    world, tasks = data["world"], data["tasks"]
    lines = ["# treeclip demo: BioCLIP's findings on the miniature tree of life", ""]
    if settings.quick:
        lines += ["> **Quick mode**: a smaller world, model and training; its numbers are indicative only.", ""]
    return lines + [
        f"World: {world['species']['seen'] + world['species']['unseen']} species "
        f"({world['species']['unseen']} unseen: no training images, their relatives seen), "
        f"{settings.images_per_species} images each at {settings.image_size} px; taxa per rank: "
        f"{_taxa_counts(world['taxa'])}. Model `{settings.model}`, batch {settings.batch_size}, {settings.epochs} "
        f"epochs, training seeds {', '.join(map(str, settings.train_seeds))}: `mixed` (BioCLIP's mixed text types), "
        f"{', '.join(f'`{b}` ({TEXT_TYPES.get(b, b)} only)' for b in settings.baselines)}, and `untrained` (the same "
        f"architecture, randomly initialised). The world's common names are partly informative, as real ones are: "
        f"relatives tend to share the head noun, at the rates measured on the eBird bird taxonomy (90% of same-genus "
        f"pairs). Zero-shot class texts use the `{settings.templates}` templates; accuracies are "
        f"top-1. Tasks: unseen ({tasks['unseen']['images']} images, {tasks['unseen']['classes']} classes), open "
        f"({tasks['open']['classes']} classes), seen ({tasks['seen']['images']} val images of "
        f"{tasks['seen']['classes']} training species).", "",
        "What the demo model can identify: the miniature world's own generated species, from its rendered "
        f"{settings.image_size} px images, at any rank. What it cannot: any real organism or photograph — it has "
        "never seen one; use a released BioCLIP model (`--model hf-hub:imageomics/bioclip-2`) for real photos.", ""]


def _timing_line(t: dict[str, Any]) -> str:
    detail = f" — {t['detail']}" if t["detail"] else ""
    if not t["reused"]:
        return f"- {t['name']}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU{detail}"
    original = (f"originally {t['original_wall_s']:.1f} s wall, {t['original_cpu_s']:.1f} s CPU"
                if t.get("original_wall_s") is not None else "original cost not recorded")
    return f"- {t['name']}: reused ({original}; {t['wall_s']:.1f} s this time){detail}"


def _by_task(results: Sequence[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [r for r in results if r["task"] == task]


def _details(data: dict[str, Any], settings: DemoSettings, results: Sequence[dict[str, Any]]) -> list[str]:
    chance, primary, seed = data["chance"], settings.test_types[0], settings.train_seeds[0]
    return [
        f"## Details of training seed {seed}", "",
        "### Zero-shot on unseen species", "",
        f"Label set = the {data['tasks']['unseen']['classes']} unseen species (as BioCLIP's Rare Species); "
        f"chance = {100 * chance['unseen']:.1f}%. Rows: training text type; columns: test text type.", "",
        ablation_grid(_by_task(results, "unseen")), "",
        "### Open variant", "",
        f"The same images, label set = all {data['tasks']['open']['classes']} species (chance "
        f"{100 * chance['open']:.2f}%), `{primary}` class texts; accuracy of the predicted species' lineage at "
        "each rank (species = exact species, genus = right genus).", "",
        hierarchy_table(_by_task(results, "open")), "",
        "### Seen species (val images of training species)", "",
        f"Label set = the {data['tasks']['seen']['classes']} seen species, chance {100 * chance['seen']:.1f}%.", "",
        ablation_grid(_by_task(results, "seen")), "",
        "### Few-shot and hierarchy metrics, unseen species", "",
        f"Zero-shot with `{primary}` texts; k-shot = SimpleShot nearest centroid, mean over 5 seeded runs.", "",
        paper_table(_by_task(results, "unseen"), text_type=primary), "",
        hierarchy_table(_by_task(results, "unseen")), ""]


def markdown(data: dict[str, Any], settings: DemoSettings, results: Sequence[dict[str, Any]],
             extra_sections: Sequence[str] = ()) -> str:
    """The whole report.md (`results`: the first training seed's, for the detail tables)."""
    lines = _intro(data, settings) + _headline(data) + _findings_section(data) + _winners_section(data)
    lines += _details(data, settings, results)
    lines += ["## Training loss", "", f"![training loss](plots/{Path(data['loss_plot']).name})",
              "", "## t-SNE of the unseen species' images", "",
              "Drill-down: all images by kingdom, then the largest group one rank lower; each title names the model.",
              "", *[f"![{Path(p).stem}](plots/{Path(p).name})" for p in data["plots"]], ""]
    lines += list(extra_sections)
    lines += ["## Run", "", *[_timing_line(t) for t in data["timings"]]]
    if data.get("artifacts"):
        art = data["artifacts"]
        lines += ["", f"The mixed model (training seed {settings.train_seeds[0]}) is exported to `{art['model']}` "
                  f"(open_clip hub layout) with a label bank of every species at `{art['bank']}`: "
                  f"`treeclip predict IMAGE --model {art['model']} --bank {art['bank']}`."]
    return "\n".join(lines) + "\n"


def write_demo_report(out: Path, *, settings: DemoSettings, facts: dict[str, Any], results: Sequence[dict[str, Any]],
                      tasks: dict[str, Benchmark], timings: Sequence[StepTiming]) -> tuple[Path, Path, dict[str, Any]]:
    """Write report.md and summary.json into `out`; returns their paths and the summary."""
    data = summary(settings=settings, facts=facts, tasks=tasks, timings=timings, out=out)
    report, summary_path = out / REPORT_FILE, out / SUMMARY_FILE
    atomic_write(summary_path, json.dumps(data, indent=1) + "\n")
    atomic_write(report, markdown(data, settings, results, facts.get("extra_sections", ())))
    return report, summary_path, data


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The short summary the CLI prints: key numbers with intervals and one line per finding."""
    lines = []
    for row in data["winners"]:
        values = ", ".join(f"{m} {_fmt(Interval(**v), row['percent'])}" for m, v in row["values"].items())
        lines.append(f"{row['label']}: {values}; winner {row['winner']}")
    lines.append(f"chance: unseen {100 * data['chance']['unseen']:.1f}%, open {100 * data['chance']['open']:.2f}%")
    lines += [f"{f['verdict']:<9}  {f['key']}: {f['measured']}" for f in data["findings"]]
    counts = data["verdicts"]
    lines.append(f"findings: {counts[PASS]} PASS, {counts[NOT_SHOWN]} not shown, {counts[FAIL]} FAIL")
    return lines
