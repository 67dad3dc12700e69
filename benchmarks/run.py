"""The benchmark suite: treeclip against the tool a user would pick instead, side by side, in one run.

Every comparison runs in this process on the same generated inputs, one after the other, and lands in one
table with the ratio treeclip / peer (above 1: treeclip is faster):

- build: `treeclip build` with 1 and 2 workers and on Ray (a local Ray runtime with 2 CPUs, started before
  the clock) against a plain single-process decode → resize → JPEG-encode loop (`benchmarks/build.py`), per
  wall second and per CPU-second ("per core"), and the 2-worker build against the 1-worker one (scaling);
- loader: samples/s of the training loader against plain webdataset decoding (the same shards, transform,
  tokenizer and batch size; one process);
- train: samples/s of `treeclip train` against a minimal open_clip loop, same config (`benchmarks/train.py`);
- predict: images/s of folder prediction (`treeclip predict`'s code path) against pybioclip's
  `TreeOfLifeClassifier.predict` on the same weights and bank saved locally, and against the model's
  forward pass alone on pre-decoded tensors;
- rank aggregation: genus/family answers over a large generated bank against pybioclip's own
  ``format_grouped_probs`` (the same probabilities; the peer is timed on a few images and scaled);
- bank build: taxa/s of `build_bank` against the text tower's forward pass alone;
- catalog: peak memory of reading, make-benchmark and plan (+ exclude) on a generated TreeOfLife-10M-sized
  catalog against reading it into Python dicts (`benchmarks/catalog_memory.py`; ratio below 1: less memory).

The machine (CPU, cores, torch, load averages at start and end) is recorded with the table in
``benchmarks/RESULTS.md``, in its own section (the other benchmarks' sections are kept). ``--quick`` shrinks
every size (a small model instead of ViT-B-16) to finish in a few minutes on 2 cores.

    python -m benchmarks [--quick] [--only build,loader,train,predict,ranks,catalog] [--results FILE]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import build as build_bench  # noqa: E402
from benchmarks import catalog_memory  # noqa: E402
from benchmarks.results import RESULTS, write_section  # noqa: E402
from benchmarks import predict as predict_bench  # noqa: E402
from benchmarks import train as train_bench  # noqa: E402
from treeclip.data.loader import make_loader  # noqa: E402
from treeclip.model import create_model, export_model  # noqa: E402
from treeclip.model.bank import build_bank, encode_class_texts  # noqa: E402
from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.predict.runner import run_batches  # noqa: E402
from treeclip.taxonomy import Rank, Taxon, get_templates  # noqa: E402

SECTIONS = ("build", "loader", "train", "predict", "ranks", "catalog")


@dataclass(frozen=True)
class Sizes:
    build_images: int
    shard_size: int
    loader_batches: int
    train_model: str
    train_steps: int
    repeats: int
    predict_model: str
    photos: int
    predict_batch: int
    bank_taxa: int
    rank_taxa: int
    rank_images: int
    rank_baseline_images: int


QUICK = Sizes(build_images=200, shard_size=40, loader_batches=4, train_model="treeclip-tiny", train_steps=12,
              repeats=2, predict_model="treeclip-small", photos=32, predict_batch=16,
              bank_taxa=2000, rank_taxa=100_000, rank_images=64, rank_baseline_images=2)
FULL = Sizes(build_images=5000, shard_size=250, loader_batches=20, train_model="treeclip-tiny", train_steps=25,
             repeats=3, predict_model="ViT-B-16", photos=64, predict_batch=16,
             bank_taxa=10_000, rank_taxa=400_000, rank_images=100, rank_baseline_images=3)


@dataclass
class Row:
    """One comparison: what is measured, treeclip's and the peer's figures (same unit), and notes."""

    area: str
    treeclip: str
    peer: str
    unit: str
    ours: float
    theirs: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs if self.theirs else float("nan")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------ build


_BUILD_NOTE = ("{n} " + build_bench.IMAGE_NOTE + " to 224 px; the whole build (source passes, sha256, decode, "
               "tar, catalog, journal) vs decode-resize-encode only, 1 process; 1-min load before: {load:.1f}")


def bench_build(root: Path, sizes: Sizes, notes: list[str]) -> tuple[list[Row], Path]:
    """Wall and per-CPU-second rates against the plain loop, and worker scaling; returns the rows and the
    shards of the 1-worker build (reused by the loader benchmark)."""
    catalog, paths = build_bench.make_images(root / "src", sizes.build_images)
    plain = build_bench.time_plain(paths, 224)
    drafted = build_bench.time_plain(paths, 224, draft=True)
    notes.append(f"build: the plain loop with Image.draft does {drafted.per_cpu_second:.1f} images/CPU-s "
                 f"({drafted.per_cpu_second / plain.per_cpu_second:.2f}x the plain loop's "
                 f"{plain.per_cpu_second:.1f}); load before the plain loop {plain.load:.1f}")
    options = {"images": len(paths), "image_size": 224, "shard_size": sizes.shard_size}
    rows, timing = [], {}
    for workers in (1, 2):
        timing[workers] = build_bench.time_build(catalog, root / f"build{workers}", workers=workers, **options)
        name = f"treeclip build, {workers} worker{'s' * (workers > 1)}"
        note = _BUILD_NOTE.format(n=len(paths), load=timing[workers].load)
        rows.append(Row("build", name, "plain PIL loop", "images/s", timing[workers].per_second, plain.per_second,
                        note))
        rows.append(Row("build per core", name, "plain PIL loop", "images/CPU-s", timing[workers].per_cpu_second,
                        plain.per_cpu_second, "CPU seconds of this process and its workers; same images"))
    rows.append(Row("build scaling", "treeclip build, 2 workers", "treeclip build, 1 worker", "images/s",
                    timing[2].per_second, timing[1].per_second,
                    f"2.00x is linear; {os.cpu_count()} cores, 1-min load before: {timing[1].load:.1f} and "
                    f"{timing[2].load:.1f} (a busy machine scales less); CPU efficiency of 2 workers vs 1: "
                    f"{timing[2].per_cpu_second / timing[1].per_cpu_second:.2f}x"))
    ray_row = _bench_build_ray(root, catalog, options, plain.per_second, notes)
    if ray_row is not None:
        rows.append(ray_row)
    return rows, root / "build1"


def _bench_build_ray(root: Path, catalog: Path, options: dict[str, int], plain: float,
                     notes: list[str]) -> Row | None:
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        notes.append("build on Ray: skipped, Ray is not installed (pip install 'treeclip[ray]')")
        return None
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    notes.append(f"Ray {ray.__version__}: local runtime with 2 CPUs, started in {time.perf_counter() - start:.1f} s "
                 "before the build's clock")
    try:
        timing = build_bench.time_build(catalog, root / "build-ray", workers=2, engine="ray", **options)
    finally:
        ray.shutdown()
    same = build_bench_shards(root / "build-ray") == build_bench_shards(root / "build2")
    notes.append(f"Ray build's shards byte-identical to the local build's: {same}")
    return Row("build", "treeclip build --engine ray (2 CPUs)", "plain PIL loop", "images/s",
               timing.per_second, plain, _BUILD_NOTE.format(n=options["images"], load=timing.load))


def build_bench_shards(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))}


# ------------------------------------------------------------------ loader


def bench_loader(shards: Path, sizes: Sizes) -> list[Row]:
    """Training loader vs plain webdataset, same shards/transform/tokenizer/batch; best of two passes each."""
    _, _, preprocess = open_clip.create_model_and_transforms("treeclip-tiny")
    tokenizer = open_clip.get_tokenizer("treeclip-tiny")
    urls = sorted(str(p) for p in (shards / "train").glob("shard-*.tar"))
    batch = 32

    def ours() -> int:
        loader = make_loader(urls, transform=preprocess, tokenizer=tokenizer, batch_size=batch, shuffle_buffer=0)
        return _count(loader, sizes.loader_batches)

    def plain() -> int:
        return _count(_plain_webdataset(urls, preprocess, tokenizer, batch), sizes.loader_batches)

    best = {"ours": 0.0, "plain": 0.0}
    for _ in range(2):
        for name, fn in (("ours", ours), ("plain", plain)):
            start = time.perf_counter()
            count = fn()
            best[name] = max(best[name], rate(count, time.perf_counter() - start))
    return [Row("loader", "make_loader (decode, transform, text mix, tokenize)", "plain webdataset pipeline",
                "samples/s", best["ours"], best["plain"],
                f"build's 224 px shards, batch {batch}, one process, {sizes.loader_batches} batches, best of 2")]


def _plain_webdataset(urls: list[str], transform: Callable, tokenizer: Callable, batch: int) -> Iterator[Any]:
    """The pipeline a webdataset user writes: decode to PIL, transform, one caption, batch, tokenize."""
    import webdataset as wds  # noqa: PLC0415

    dataset = (wds.WebDataset(urls, shardshuffle=False).decode("pil")
               .map(lambda s: (transform(s["jpg"]), s["sci.txt"])).batched(batch, partial=True))
    for images, captions in dataset:
        yield {"image": images, "text": tokenizer(list(captions))}


def _count(loader: Any, batches: int) -> int:
    samples = 0
    for index, batch in enumerate(loader):
        samples += len(batch["image"])
        if index + 1 == batches:
            break
    return samples


# ------------------------------------------------------------------ train


def bench_train(root: Path, sizes: Sizes) -> list[Row]:
    shards = train_bench.write_shards(root / "train-shards", n_species=9, per_species={"train": 64, "val": 2})
    ours, theirs = train_bench.compare(shards, root / "train-run", model=sizes.train_model, batch=32,
                                       steps=sizes.train_steps)
    note = f"{sizes.train_model}, batch 32, {sizes.train_steps} steps with the two loops in lockstep " \
           f"({train_bench.WARMUP} warm-up), median step, 1 thread"
    return [Row("train", "treeclip train (wall)", "minimal open_clip loop", "samples/s", ours[0], theirs[0], note),
            Row("train", "treeclip train (per CPU-second)", "minimal open_clip loop", "samples/CPU-s", ours[1],
                theirs[1], "the same, per CPU-second of the process")]


# ------------------------------------------------------------------ predict + bank build


def bench_predict(root: Path, sizes: Sizes, notes: list[str]) -> list[Row]:
    """Folder prediction vs forward only vs pybioclip, interleaved for `sizes.repeats` rounds (best of each)."""
    model_dir, bank_dir, bank_row = _export_model_and_bank(root, sizes)
    paths = predict_bench.make_photos(_mkdir(root / "photos"), sizes.photos)
    cache = root / "hf-cache"
    hub_id = predict_bench.released_layout(cache, model_dir=model_dir, bank_dir=bank_dir)
    with predict_bench.hub_offline(cache):  # both packages load it as a user's hf-hub: id (see benchmarks/predict)
        clf = TreeOfLifeClassifier.from_pretrained(hub_id)
        peer = _pybioclip_predictor(hub_id, paths[:2], notes) if clf.preprocess.size == (224, 224) else None
    if peer is None and clf.preprocess.size != (224, 224):
        notes.append(f"predict vs pybioclip: skipped, pybioclip feeds the released BioCLIP ids 224 px and "
                     f"{sizes.predict_model} takes {clf.preprocess.size[0]} px (run without --quick)")
    decoded = torch.stack([clf.preprocess(Image.open(p).convert("RGB")) for p in paths])
    batch = sizes.predict_batch
    clf.rows(decoded[:2], ["a", "b"])  # warm-up
    runs: dict[str, Callable[[], Any]] = {
        "forward": lambda: [clf.encode_images(decoded[s : s + batch]) for s in range(0, len(paths), batch)],
        "ours": lambda: [row for rows in run_batches(paths, score=functools.partial(clf.rows, k=5),
                                                     preprocess=clf.preprocess, batch_size=batch, workers=2,
                                                     draft_size=clf.draft_size) for row in rows],
    }
    if peer is not None:
        runs["pybioclip"] = lambda: peer(paths, batch)
    best, outputs = _best_of(runs, sizes.repeats)
    speed = {name: rate(len(paths), seconds) for name, seconds in best.items()}
    note = f"{sizes.predict_model}, random weights, batch {batch}, best of {sizes.repeats}"
    rows = [Row("predict", "treeclip predict (folder, species top-5)", "model forward only, pre-decoded",
                "images/s", speed["ours"], speed["forward"], note)]
    if peer is not None:
        agree = _top1_agreement(outputs["ours"], outputs["pybioclip"])
        rows.append(Row("predict", "treeclip predict (folder, species top-5)", "pybioclip TreeOfLifeClassifier",
                        "images/s", speed["ours"], speed["pybioclip"],
                        f"{note}; same weights and bank; top-1 agreement {agree:.0%}"))
    return rows + [bank_row]


def _best_of(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best seconds of each run over `repeats` interleaved rounds, and each run's last output."""
    best = dict.fromkeys(runs, float("inf"))
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _export_model_and_bank(root: Path, sizes: Sizes) -> tuple[Path, Path, Row]:
    """A seeded random model in the hub layout, and a bank of generated taxa built with it (timed)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, _, _, tokenizer = create_model(sizes.predict_model)
    model_dir = export_model(model, out_dir=root / "model", model_name=sizes.predict_model)
    taxa = [Taxon(lineage=lineage, common=common) for lineage, common in
            zip(*_generated_names(sizes.bank_taxa), strict=True)]
    model.eval()
    seconds = timed(lambda: build_bank(model=model, tokenizer=tokenizer, taxa=taxa, out=root / "bank",
                                       model_id=str(model_dir), text_type="taxon_com", templates="photo"))
    texts = [f"a photo of {t.taxonomic} with common name {t.common}." for t in taxa[:512]]
    encode_class_texts(model, tokenizer, texts[:8], get_templates("photo"))  # warm-up
    forward = timed(lambda: encode_class_texts(model, tokenizer, texts, get_templates("photo"), batch_size=256))
    row = Row("bank build", "build_bank (taxon_com, 1 template)", "text tower forward only", "taxa/s",
              rate(len(taxa), seconds), rate(len(texts), forward), f"{sizes.bank_taxa} taxa, {sizes.predict_model}")
    return model_dir, root / "bank", row


def _generated_names(count: int) -> tuple[list[tuple[str, ...]], list[str]]:
    bank = predict_bench.generated_bank(count)
    return [tuple(lineage) for lineage in bank.lineages], list(bank.commons)


def _pybioclip_predictor(hub_id: str, warmup: list[str],
                         notes: list[str]) -> Callable[[list[str], int], list[dict]] | None:
    """pybioclip on the same model and bank, loaded by the same hf-hub: id from the same offline cache, and
    warmed up (its torch.compile runs on the first call)."""
    try:
        from bioclip import __about__  # noqa: PLC0415
        from bioclip.predict import Rank as BioRank  # noqa: PLC0415
        from bioclip.predict import TreeOfLifeClassifier as BioTreeOfLife  # noqa: PLC0415
    except ImportError:
        notes.append("predict vs pybioclip: skipped, pybioclip is not installed (pip install pybioclip)")
        return None

    def predict(paths: list[str], batch: int) -> list[dict]:
        return peer.predict(paths, rank=BioRank.SPECIES, k=5, batch_size=batch, callback=lambda *_: None)

    start = time.perf_counter()
    peer = BioTreeOfLife(model_str=hub_id)
    predict(warmup, 2)
    notes.append(f"pybioclip {__about__.__version__}: model load + torch.compile warm-up "
                 f"{time.perf_counter() - start:.1f} s (excluded); both packages load {hub_id} and its bank "
                 "from the same offline Hugging Face cache, so each preprocesses as for the released BioCLIP "
                 "(squash to 224 px); treeclip applies EXIF orientation and pybioclip does not (the generated "
                 "photos have no EXIF)")
    return predict


def _top1_agreement(ours: list[dict], theirs: list[dict]) -> float:
    def top1(rows: list[dict]) -> dict[str, str]:
        best: dict[str, str] = {}
        for row in rows:
            best.setdefault(row["file_name"], row["species"])
        return best

    a, b = top1(ours), top1(theirs)
    return float(np.mean([a[name] == b.get(name) for name in a])) if a else float("nan")


# ------------------------------------------------------------------ rank aggregation


def bench_ranks(sizes: Sizes, notes: list[str]) -> list[Row]:
    """Genus/family top-5 from the same probabilities: treeclip's index_add against pybioclip's loop."""
    try:
        from bioclip.predict import Rank as BioRank  # noqa: PLC0415
        from bioclip.predict import TreeOfLifeClassifier as BioTreeOfLife  # noqa: PLC0415
    except ImportError:
        notes.append("rank aggregation vs pybioclip: skipped, pybioclip is not installed")
        return []
    bank = predict_bench.generated_bank(sizes.rank_taxa)
    clf = TreeOfLifeClassifier(model=predict_bench.FeatureModel(), preprocess=None, bank=bank)
    clf.index  # noqa: B018 - the one-off grouping, built once per bank
    generator = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(sizes.rank_images, predict_bench.DIM, generator=generator), dim=-1)
    names = [str(i) for i in range(sizes.rank_images)]
    clf.rows_from_features(features[:2], names[:2])  # warm-up
    txt_names = [[list(lineage), common] for lineage, common in zip(bank.lineages, bank.commons, strict=True)]
    peer = SimpleNamespace(get_current_txt_names=lambda: txt_names)
    peer.get_classification_dict = functools.partial(BioTreeOfLife.get_classification_dict, peer)
    probs = clf.probabilities(features[: sizes.rank_baseline_images])
    rows = []
    for rank in (Rank.GENUS, Rank.FAMILY):
        ours = timed(lambda r=rank: predict_bench._batched(clf, features, names, r))
        bio_rank = BioRank[rank.name]
        theirs_rows: list[dict] = []
        theirs = timed(lambda b=bio_rank: theirs_rows.extend(
            row for i, p in enumerate(probs) for row in BioTreeOfLife.format_grouped_probs(peer, str(i), p, b)))
        mine = clf.rows_from_features(features[:1], names[:1], rank=rank, k=1)[0]
        assert mine[rank.name.lower()] == theirs_rows[0][rank.name.lower()], "treeclip and pybioclip disagree"
        rows.append(Row("rank aggregation", f"treeclip {rank.name.lower()} top-5",
                        "pybioclip format_grouped_probs", "images/s", rate(len(names), ours),
                        rate(len(probs), theirs),
                        f"{sizes.rank_taxa:,} taxa; peer timed on {len(probs)} images; same top-1"))
    return rows


# ------------------------------------------------------------------ catalog memory


def bench_catalog(sizes: Sizes) -> list[Row]:
    """Peak memory on a TreeOfLife-10M-sized generated catalog (`benchmarks/catalog_memory.py`)."""
    mode = "quick" if sizes == QUICK else "full"
    return [Row("catalog memory", str(r["treeclip"]), "csv.DictReader into a list (the old readers)",
                "peak MB (lower is better)", float(r["ours"]), float(r["theirs"]), str(r["note"]))
            for r in catalog_memory.suite_rows(mode)]


# ------------------------------------------------------------------ report


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"CPU": cpu, "cores": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "ray": _version("ray"), "pybioclip": _version("pybioclip")}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def table(rows: list[Row]) -> str:
    lines = ["| area | treeclip | peer | unit | treeclip | peer | ratio | notes |",
             "|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r.area} | {r.treeclip} | {r.peer} | {r.unit} | {_figure(r.ours)} | {_figure(r.theirs)} | "
              f"{r.ratio:.2f}x | {r.note} |" for r in rows]
    return "\n".join(lines)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def report(rows: list[Row], info: dict[str, str], notes: list[str], *, mode: str, seconds: float) -> str:
    details = "\n".join(f"- {key}: {value}" for key, value in info.items())
    command = "python -m benchmarks" + (" --quick" if mode == "quick" else "")
    return (f"## The suite: treeclip against its peers (`{command}`)\n\n"
            f"Regenerated by `{command}` ({mode} mode, {seconds:.0f} s). "
            "Ratio = treeclip / peer: above 1, treeclip is faster. Every pair was measured side by side in the "
            "same run on the same inputs. The machine is shared: load averages (1, 5, 15 min) at start and end "
            "are listed, and wall-clock rates move with them.\n\n"
            f"{details}\n\n{table(rows)}\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def run_suite(sizes: Sizes, sections: tuple[str, ...]) -> tuple[list[Row], dict[str, str], list[str]]:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine(), "load at start": load()}
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="treeclip-suite-") as tmp:
        root = Path(tmp)
        shards = None
        if "build" in sections or "loader" in sections:
            build_rows, shards = bench_build(root, sizes, notes)
            rows += build_rows if "build" in sections else []
        for name, fn in (("loader", lambda: bench_loader(shards, sizes)), ("train", lambda: bench_train(root, sizes)),
                         ("predict", lambda: bench_predict(root, sizes, notes)),
                         ("ranks", lambda: bench_ranks(sizes, notes)),
                         ("catalog", lambda: bench_catalog(sizes))):
            if name in sections:
                print(f"[benchmarks] {name} ... (load {load()})", file=sys.stderr, flush=True)
                rows += fn()
    info["load at end"] = load()
    return rows, info, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 cores")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    start = time.perf_counter()
    rows, info, notes = run_suite(QUICK if args.quick else FULL, sections)
    text = report(rows, info, notes, mode="quick" if args.quick else "full", seconds=time.perf_counter() - start)
    write_section("run.py", text, args.results)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
