"""The demo's steps: world → shards → three training runs → evaluation → t-SNE → export → report.

Output folder (``OUT/``): ``demo.json`` (the settings; a folder holds one demo), ``arch/`` (the model
architecture: a tiny config with a text context long enough for taxonomic captions), ``world/`` (`treeclip synth`),
``shards/`` (`treeclip build`), ``runs/seedS/{mixed,com,taxon}/`` (training runs, one set per training seed),
``cache/`` (image and text features), ``eval/seedS/`` (the evaluation library's own report), ``plots/`` (t-SNE
and training-loss PNGs), ``model/`` (the first seed's mixed model in open_clip's hub layout), ``bank/`` (a label
bank of every species of the world, unseen ones included), ``steps.json`` (each finished step's original
cost) and ``report.md`` + ``summary.json``.

Resumability: each step checks its completion marker — ``world/world.json``, ``shards/manifest.json``, a
run's final checkpoint, the hub config, the bank matrix — and reuses a finished step, reporting its original
cost from ``steps.json``; an unfinished run resumes from its newest checkpoint (a torn checkpoint of a killed
run is skipped by the loader, so partial output never blocks a re-run). Evaluation re-reads cached features,
so a re-run recomputes only the cheap metrics, plots and the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from treeclip.atomic import atomic_path, atomic_write
from treeclip.data.build import build_dataset
from treeclip.data.catalog import MANIFEST
from treeclip.data.synth import write_world
from treeclip.errors import UsageError
from treeclip.eval.benchmarks import Benchmark, load_task
from treeclip.eval.features import FeatureCache, model_fingerprint
from treeclip.eval.report import write_reports
from treeclip.eval.runner import EvalModel, EvalSettings, evaluate, image_features
from treeclip.eval.tsne import drilldown_plots
from treeclip.model import create_model, is_hub_dir, load_model, model_config, write_hub_config
from treeclip.model.bank import build_bank, is_bank_dir
from treeclip.predict.taxa import read_taxa
from treeclip.train.checkpoint import checkpoint_path
from treeclip.train.config import Config, load_config
from treeclip.train.export import export_checkpoint
from treeclip.train.loop import plan_run, train
from treeclip.train.metrics import read_metrics

ProgressFactory = Callable[[str, int], Callable[[int], Any]]  # (description, total) -> update(n)
MIXED, UNTRAINED = "mixed", "untrained"
TASKS = ("unseen", "open", "seen")
SETTINGS_FILE, REPORT_FILE, SUMMARY_FILE, STEPS_FILE = "demo.json", "report.md", "summary.json", "steps.json"


@dataclass(frozen=True)
class DemoSettings:
    """World, model, training and evaluation sizes of one demo (`demo_settings` gives the shipped ones)."""

    species: int = 200
    images_per_species: int = 20
    image_size: int = 32
    holdout: float = 0.2  # fraction of species held out (unseen: no training images)
    seed: int = 0  # world, shards, evaluation sampling
    train_seeds: tuple[int, ...] = (0, 1)  # one training run of each model per seed; intervals span the seeds
    model: str = "treeclip-tiny"
    context_length: int = 48  # text tokens: a taxon_com caption of the world takes up to ~45
    batch_size: int = 64  # small batches: more steps per sample, so CLIP leaves its initial plateau sooner
    epochs: int = 5  # 225 steps per model
    lr: float = 1e-3
    warmup_steps: int = 10
    baselines: tuple[str, ...] = ("com", "taxon")  # single-text-type runs; "com" must be one of them
    test_types: tuple[str, ...] = ("taxon_com", "sci", "com", "taxon", "sci_com")  # first = primary
    templates: str = "photo"
    shots: tuple[int, ...] = (0, 1, 5)
    hierarchy_pairs: int = 5000
    tsne_levels: int = 3
    workers: int = 2  # build worker processes
    export: bool = True  # write OUT/model and OUT/bank
    quick: bool = False  # only labels the report: its numbers are indicative

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


FULL = DemoSettings()
QUICK = DemoSettings(species=100, images_per_species=16, model="treeclip-test", batch_size=32, epochs=8,
                     lr=2e-3, hierarchy_pairs=2000, tsne_levels=2, train_seeds=(0,), quick=True)


def demo_settings(*, quick: bool = False, **changes: Any) -> DemoSettings:
    """The full (default) or quick settings, with `changes` applied (e.g. tinier ones for tests)."""
    return dataclasses.replace(QUICK if quick else FULL, **changes)


@dataclass(frozen=True)
class StepTiming:
    """One finished step: wall-clock and CPU seconds (this process and its children), reused or not; a reused
    step also carries the cost of the run that made it (`original_wall_s`, `original_cpu_s`) when known."""

    name: str
    wall_s: float
    cpu_s: float
    reused: bool
    detail: str = ""
    original_wall_s: float | None = None
    original_cpu_s: float | None = None


@dataclass
class DemoResult:
    """What a demo run wrote: the report, the summary (also as a dict) and every step's timing."""

    out: Path
    report: Path
    summary_path: Path
    summary: dict[str, Any]
    timings: list[StepTiming] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Where each step writes inside the demo folder."""

    root: Path

    @property
    def arch(self) -> Path:
        return self.root / "arch"

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def bank(self) -> Path:
        return self.root / "bank"

    @property
    def steps(self) -> Path:
        return self.root / STEPS_FILE

    def run(self, seed: int, name: str) -> Path:
        return self.root / "runs" / f"seed{seed}" / name


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class Steps:
    """Times each step, reports it through `on_step`, and keeps each finished step's cost in `record` (a
    JSON file) so that a later run that reuses the step can still report what it originally cost."""

    def __init__(self, on_step: Callable[[StepTiming], None] | None, record: Path) -> None:
        self.on_step, self.timings, self.record = on_step, [], record
        self.costs = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        info: dict[str, Any] = {"reused": False, "detail": ""}
        wall, cpu = time.perf_counter(), _cpu_seconds()
        yield info
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        if info["reused"]:
            original = self.costs.get(name, {})
            timing = StepTiming(name, wall, cpu, True, info["detail"], original.get("wall_s"), original.get("cpu_s"))
        else:
            timing = StepTiming(name, wall, cpu, False, info["detail"])
            self.costs[name] = {"wall_s": wall, "cpu_s": cpu}
            atomic_write(self.record, json.dumps(self.costs, indent=1) + "\n")
        self.timings.append(timing)
        if self.on_step is not None:
            self.on_step(timing)


# ---------------------------------------------------------------- settings, world, shards


def _claim_folder(layout: Layout, settings: DemoSettings, *, fresh: bool) -> None:
    """Record the settings in OUT/demo.json. A folder holding a demo with other settings is refused unless
    `fresh` (which deletes that demo); a non-empty folder holding no demo is always refused."""
    path = layout.root / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != settings.to_json() and not fresh:
            raise UsageError(f"--out {layout.root}: holds a demo with other settings (see {path}); choose "
                             "another --out or pass --fresh to start over")
        if fresh:
            shutil.rmtree(layout.root)
    elif layout.root.is_dir() and any(layout.root.iterdir()):
        raise UsageError(f"--out {layout.root}: is not empty and holds no demo; choose an empty or new folder")
    atomic_write(path, json.dumps(settings.to_json(), indent=2) + "\n")


def _bar(progress: ProgressFactory | None, desc: str) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that opens a progress bar on its first call."""
    state: dict[str, Any] = {"done": 0}

    def report(done: int, total: int) -> None:
        if progress is None:
            return
        if "update" not in state:
            state["update"] = progress(desc, total)
        state["update"](done - state["done"])
        state["done"] = done

    return report


def make_world(layout: Layout, settings: DemoSettings, progress: ProgressFactory | None) -> tuple[dict, bool]:
    """The world's counts from ``world/world.json``, generating the world first unless it is finished."""
    marker = layout.world / "world.json"
    reused = marker.is_file()
    if not reused:
        shutil.rmtree(layout.shards, ignore_errors=True)  # shards of an interrupted earlier world are stale
        write_world(layout.world, species=settings.species, images_per_species=settings.images_per_species,
                    image_size=settings.image_size, seed=settings.seed, holdout=settings.holdout,
                    overwrite=True, progress=_bar(progress, "world"))
    return json.loads(marker.read_text(encoding="utf-8"))["counts"], reused


def make_shards(layout: Layout, settings: DemoSettings, progress: ProgressFactory | None) -> tuple[dict, bool]:
    """The shard manifest's counts, building (or resuming the build of) the shards unless finished."""
    marker = layout.shards / MANIFEST
    reused = marker.is_file()
    if not reused:
        done = {"n": 0}
        bar = _bar(progress, "shards")

        def report(finished: int, total: int) -> None:
            done["n"] += finished
            bar(done["n"], total)

        build_dataset(sources=[f"csv:{layout.world / 'catalog.csv'}"], out=layout.shards,
                      image_size=settings.image_size, shard_size=500, workers=settings.workers,
                      val_fraction=0.1, seed=settings.seed, resume=layout.shards.exists(), progress=report)
    return json.loads(marker.read_text(encoding="utf-8"))["counts"], reused


# ---------------------------------------------------------------- training


def make_architecture(layout: Layout, settings: DemoSettings) -> Path:
    """OUT/arch: `settings.model` with a text context of `settings.context_length` tokens, as a hub folder
    without weights (a randomly initialised model). The packaged tiny configs' 16/32 tokens would cut the
    world's taxonomic captions (~31 tokens, ~37 and up to ~45 with the common name) before genus and species."""
    if not is_hub_dir(layout.arch):
        config = model_config(settings.model)
        config["text_cfg"]["context_length"] = settings.context_length
        model = create_model(settings.model)[0]
        write_hub_config(layout.arch, model_cfg=config, preprocess_cfg=model.visual.preprocess_cfg)
    return layout.arch


def train_config(layout: Layout, settings: DemoSettings, text_type: str | None, seed: int) -> Config:
    """The tiny preset sized by `settings`; `text_type` trains on one text type, None on the mix."""
    overrides = [f"model.name={layout.arch}", f"train.batch_size={settings.batch_size}",
                 f"train.epochs={settings.epochs}", f"train.seed={seed}", f"optim.lr={settings.lr}",
                 f"optim.warmup_steps={settings.warmup_steps}", "data.shuffle_buffer=1000", "eval.every_steps=0",
                 "log.tensorboard=false", "checkpoint.keep_last=1"]
    if text_type is not None:
        overrides.append(f"data.text_type={text_type}")
    return load_config(preset="tiny", overrides=overrides)


def plan_steps(config: Config, data_dir: Path) -> int:
    """Optimizer steps the run will take on `data_dir`."""
    return plan_run(config, data_dir, world_size=1).stop_step


def train_run(layout: Layout, settings: DemoSettings, name: str, text_type: str | None, seed: int,
              progress: ProgressFactory | None) -> tuple[Path, int, bool]:
    """(final checkpoint, steps, reused) of one run; an unfinished run resumes from its newest checkpoint."""
    config = train_config(layout, settings, text_type, seed)
    steps = plan_steps(config, layout.shards)
    config.checkpoint.every_steps = max(1, steps // 3)
    run_dir = layout.run(seed, name)
    final = checkpoint_path(run_dir, steps)
    if final.is_file():
        return final, steps, True
    bar: dict[str, Any] = {}

    def on_step(metrics: dict[str, Any]) -> None:
        if progress is None:
            return
        if "update" not in bar:
            bar["update"] = progress(f"train {name} seed {seed}", metrics["total_steps"])
        bar["update"](1)

    result = train(config, data_dir=layout.shards, out_dir=run_dir, resume="latest", on_step=on_step)
    if result.last_checkpoint != final:
        raise RuntimeError(f"training run {run_dir} ended without its final checkpoint {final}")
    return final, steps, False


# ---------------------------------------------------------------- evaluation


def _eval_model(label: str, checkpoint: Path | None, layout: Layout, seed: int, device: str) -> EvalModel:
    """A trained model from its checkpoint, or (no checkpoint) the architecture's random init with `seed`."""
    if checkpoint is not None:
        model, _, preprocess, tokenizer = load_model(checkpoint, device=device)
        return EvalModel(label, model_fingerprint(str(checkpoint), model), model, preprocess, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess, tokenizer = create_model(layout.arch, device=device, config_only_ok=True)
    model.eval()
    return EvalModel(label, model_fingerprint(f"untrained:{layout.arch}:{seed}", model), model, preprocess,
                     tokenizer)


def _task_settings(settings: DemoSettings, task: str, device: str) -> EvalSettings:
    """unseen: zero-shot per test type + few-shot; open: primary type only; seen: every test type."""
    shots = tuple(settings.shots) if task == "unseen" else (0,)
    types = settings.test_types[:1] if task == "open" else settings.test_types
    return EvalSettings(shots=shots, text_types=types, templates=settings.templates, device=device,
                        linear_probe=False, hierarchy_pairs=settings.hierarchy_pairs, seed=settings.seed)


def load_tasks(layout: Layout) -> dict[str, Benchmark]:
    """The three synth tasks of the world: unseen species, the open variant, seen species' val images."""
    return {task: load_task(f"{task}=synth:{layout.world}:{task}") for task in TASKS}


def evaluate_models(layout: Layout, settings: DemoSettings, checkpoints: dict[str, Path | None], seed: int,
                    tasks: dict[str, Benchmark], progress: ProgressFactory | None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(every model × task result, unseen-task image features per model) of one training seed, with features
    cached in OUT/cache."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = FeatureCache(layout.cache)
    results, features = [], {}
    for label, checkpoint in checkpoints.items():
        model = _eval_model(label, checkpoint, layout, seed, device)
        for task, benchmark in tasks.items():
            task_settings = _task_settings(settings, task, device)
            images = image_features(model, benchmark, cache=cache, settings=task_settings, progress=progress)
            results.append(evaluate(model, benchmark, cache=cache, settings=task_settings, progress=progress,
                                    features=images))
            if task == "unseen":
                features[label] = images
    write_reports(results, layout.eval / f"seed{seed}", text_type=settings.test_types[0],
                  title=f"treeclip demo: evaluation (training seed {seed})")
    return results, features


def tsne_plots(layout: Layout, settings: DemoSettings, benchmark: Benchmark,
               features: dict[str, Any]) -> list[Path]:
    """Drill-down t-SNE plots of the unseen species' images for the mixed and the untrained model."""
    paths = []
    for label in (MIXED, UNTRAINED):
        paths += drilldown_plots(features[label], benchmark.taxa(), layout.plots, levels=settings.tsne_levels,
                                 seed=settings.seed, prefix=f"tsne_{label}", model=f"{label} model")
    return paths


# ---------------------------------------------------------------- export


def export_artifacts(layout: Layout, settings: DemoSettings, checkpoint: Path,
                     progress: ProgressFactory | None) -> tuple[dict[str, str], bool]:
    """OUT/model (the mixed model, hub layout) and OUT/bank (every species of the world, taxon_com)."""
    reused = is_hub_dir(layout.model) and is_bank_dir(layout.bank)
    if not is_hub_dir(layout.model):
        export_checkpoint(checkpoint, out_dir=layout.model)
    if not is_bank_dir(layout.bank):
        taxa = read_taxa(layout.world / "taxonomy.csv", keep_partial=False)
        model, _, _, tokenizer = load_model(layout.model)
        bar = _bar(progress, "bank")
        done = {"n": 0}

        def report(count: int) -> None:
            done["n"] += count
            bar(done["n"], len(taxa))

        build_bank(model=model, tokenizer=tokenizer, taxa=taxa, out=layout.bank, model_id=str(layout.model),
                   text_type=settings.test_types[0], templates=settings.templates, progress=report)
    return {"model": str(layout.model), "bank": str(layout.bank)}, reused


def add_geo_section(layout: Layout, settings: DemoSettings, facts: dict[str, Any]) -> None:
    """The exported model's "where and how sure" numbers (`treeclip.demo.geo`) into the summary and report."""
    from treeclip.demo import geo  # noqa: PLC0415 - geo imports the predict layer

    numbers = geo.run_geo(layout.root, model=layout.model, bank=layout.bank, world=layout.world,
                          image_size=settings.image_size, seed=settings.seed)
    facts.setdefault("extra_summary", {})["geo"] = numbers
    facts.setdefault("extra_sections", []).append(geo.markdown(numbers))


# ---------------------------------------------------------------- the whole demo


def training_loss_plot(layout: Layout, runs: dict[str, dict[str, Any]]) -> Path:
    """OUT/plots/training_loss.png: each run's loss per step, from its ``metrics.jsonl``."""
    import matplotlib  # noqa: PLC0415 - heavy; imported when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, run in runs.items():
        records = [r for r in read_metrics(Path(run["dir"])) if "loss" in r and "step" in r]
        axes.plot([r["step"] for r in records], [r["loss"] for r in records], label=label, linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss per run (metrics.jsonl)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = layout.plots / "training_loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)
    return path


def run_demo(out: str | Path, *, settings: DemoSettings | None = None, fresh: bool = False,
             progress: ProgressFactory | None = None,
             on_step: Callable[[StepTiming], None] | None = None) -> DemoResult:
    """Run (or resume) the demo into `out`; returns the report's path, the summary and the step timings.

    `progress(description, total)` opens a progress bar and returns its ``update(n)``; `on_step` receives
    each finished step's timing. Raises `UsageError` when `out` holds something else.
    """
    from treeclip.demo.evidence import seed_evidence  # noqa: PLC0415
    from treeclip.demo.report import write_demo_report  # noqa: PLC0415 - report imports this module

    settings = settings or demo_settings()
    if "com" not in settings.baselines:
        raise UsageError("demo settings: the baselines must include 'com' (the common-names-only model)")
    layout = Layout(Path(out).absolute())
    _claim_folder(layout, settings, fresh=fresh)
    steps = Steps(on_step, layout.steps)
    facts: dict[str, Any] = {"runs": {}, "evidence": []}
    with steps.step("world") as info:
        facts["world"], info["reused"] = make_world(layout, settings, progress)
    with steps.step("shards") as info:
        facts["shards"], info["reused"] = make_shards(layout, settings, progress)
    make_architecture(layout, settings)
    with steps.step("load tasks"):
        tasks = load_tasks(layout)
    first: dict[str, Any] = {}
    for seed in settings.train_seeds:
        checkpoints: dict[str, Path | None] = {}
        for name, text_type in [(MIXED, None), *((b, b) for b in settings.baselines)]:
            with steps.step(f"train {name} seed {seed}") as info:
                checkpoints[name], steps_done, info["reused"] = train_run(layout, settings, name, text_type, seed,
                                                                          progress)
                info["detail"] = f"{steps_done} steps"
                facts["runs"][f"{name} seed {seed}"] = {"model": name, "seed": seed, "steps": steps_done,
                                                        "text_type": text_type or "mixed",
                                                        "dir": str(layout.run(seed, name))}
        checkpoints[UNTRAINED] = None
        with steps.step(f"evaluate seed {seed}"):
            results, features = evaluate_models(layout, settings, checkpoints, seed, tasks, progress)
            facts["evidence"].append(seed_evidence(
                results, tasks, features, test_types=settings.test_types, shots=settings.shots,
                hierarchy_pairs=settings.hierarchy_pairs, seed=settings.seed))
        first = first or {"results": results, "features": features, "checkpoints": checkpoints}
    with steps.step("plots"):
        facts["plots"] = tsne_plots(layout, settings, tasks["unseen"], first["features"])
        facts["loss_plot"] = training_loss_plot(layout, facts["runs"])
    if settings.export:
        with steps.step("export model + bank") as info:
            facts["artifacts"], info["reused"] = export_artifacts(layout, settings, first["checkpoints"][MIXED],
                                                                  progress)
        with steps.step("location prior, calibration, abstention"):
            add_geo_section(layout, settings, facts)
    with steps.step("report"):
        report, summary_path, summary = write_demo_report(layout.root, settings=settings, facts=facts,
                                                          results=first["results"], tasks=tasks,
                                                          timings=steps.timings)
    return DemoResult(layout.root, report, summary_path, summary, steps.timings)
