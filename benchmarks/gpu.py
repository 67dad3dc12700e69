"""GPU training speed of treeclip's own `train` on generated 224 px shards, the loader's rate per core, inference.

One prepared script for a GPU machine (no downloads: random weights, generated shards), a few minutes:

- loader: samples per CPU-second of `make_loader` on ONE core (no workers, one torch thread) decoding 224 px
  JPEGs with the model's random-crop training augmentation and tokenising captions, handing over uint8
  batches as the training loop asks; and the same with 2 worker processes at the training batch, per
  CPU-second of the workers and the main process (what training pays: it adds handing each batch over
  through shared memory); a host must supply (GPUs x samples/s per GPU) / this rate cores;
- training: `treeclip.train.loop.train` itself (the real loader with workers, prefetch and pinned memory,
  bf16 autocast, fused AdamW, the CLIP loss) for each variant of `train.compile` x `train.patch_dropout`;
  the figures are the loop's own per-step records (median after the warm-up steps): samples/s per GPU and
  MFU (model FLOPs counted once by FlopCounterMode, over the GPU's dense bf16 peak; see
  `treeclip.train.throughput`). Each variant's run goes on, in the same process and compiled model, for
  two in-memory phases (`train`'s ``batch_stream``): the loader's last batch repeated from pinned host
  memory (the model + the host-to-device copy, no loader), then the same batch resident on the device (the
  model alone: the compute-bound rate). Loader-fed / device-batch near 1 means compute-bound; well below 1,
  the loader (or the copy: compare the pinned figure) is the ceiling;
- inference: image-tower images/s at bf16 (`encode_image`, inference mode), and `treeclip predict`'s path end
  to end from JPEG files (uint8 batches normalised on the device, pinned-memory copies, bf16 autocast, the bank
  matmul and top-k on the device) over a 100K-taxon bank, as a share of the tower-alone rate (goal >= 0.8), for
  each decoder: threads and worker processes (PIL, JPEG draft mode) and device (nvJPEG via torchvision, resize
  and crop by torch on the GPU), each also alone (decoding without the model) on the same files.

It prints a table and writes the figures as JSON, with the wall seconds of each part (``wall_s``).
``--cpu-smoke`` runs the same code path on the CPU with a tiny model, a small batch and two steps (compile
off), to test the script itself where there is no GPU.

Budget: the previous version (40 loader-fed steps per variant) took about 280 s on the H200 host; the two
in-memory phases add 2 x (3 + 15) steps per variant, at most ~5 s per variant at the step times measured
there (87-139 ms), and the 2-worker loader figure a few seconds, so the training part adds ~25 s at most and
the run stays near 300 s plus whatever the predict decoders add, within one device call (600 s);
``--memory-steps``, ``--steps`` and ``--no-compile`` trim it; ``wall_s`` in the JSON says where it went.

    python benchmarks/gpu.py [--model ViT-B-16] [--batch 256] [--steps 30] [--warmup 10] [--memory-steps 15]
                             [--json gpu_results.json]
    python benchmarks/gpu.py --cpu-smoke --json /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _shards import write_shards  # noqa: E402 - the test helper that writes shards of generated images

from benchmarks.loader import worker_rate  # noqa: E402

from treeclip.atomic import atomic_write  # noqa: E402
from treeclip.data.loader import make_loader  # noqa: E402
from treeclip.model import create_model  # noqa: E402
from treeclip.train import loop  # noqa: E402
from treeclip.train.config import load_config  # noqa: E402

IMAGE_PX = 224
VARIANTS = ((False, 0.0), (True, 0.0), (False, 0.5), (True, 0.5))  # (train.compile, train.patch_dropout)


@dataclass(frozen=True)
class Setup:
    model: str
    batch: int
    steps: int
    warmup: int
    workers: int
    device: str
    variants: tuple[tuple[bool, float], ...]
    memory_steps: int = 15  # timed steps of each in-memory phase (pinned host batch, device batch)
    settle: int = 3  # untimed steps at the start of each in-memory phase (the loader's workers wind down)


@dataclass
class TrainFigures:
    compile: bool
    patch_dropout: float
    samples_per_s_per_gpu: float
    step_ms: float
    tflops_per_gpu: float
    mfu: float | None
    pinned_batch_samples_per_s: float  # one batch from pinned host memory, repeated: the model + the copy
    pinned_batch_mfu: float | None
    device_batch_samples_per_s: float  # one batch resident on the device, repeated: the model alone
    device_batch_mfu: float | None


@dataclass
class Results:
    device_name: str
    model: str
    batch: int
    loader_workers: int
    loader_samples_per_s_per_core: float
    loader_samples_per_cpu_s_2_workers: float  # 2 worker processes at the training batch: workers' + main CPU
    train: list[TrainFigures] = field(default_factory=list)
    inference_images_per_s: float = 0.0
    predict_images_per_s: float = 0.0  # with the decoder `--decode auto` picks on this host
    decode_images_per_s: float = 0.0  # that decoder alone (decode + preprocessing), same images and workers
    predict_decoder: str = ""  # the decoder auto picks here
    predict_by_decoder: dict[str, float] = field(default_factory=dict)  # images/s end to end per --decode
    decode_by_decoder: dict[str, float] = field(default_factory=dict)  # images/s of each decoder alone
    device_decode_fallbacks: int = 0  # images the device decoder left to the CPU (0 expected: plain JPEGs)
    device_pixels_max_levels: float = 0.0  # device-decoded batch vs the PIL path at full resolution, in 8-bit levels
    device_pixels_mean_levels: float = 0.0
    failed: list[str] = field(default_factory=list)  # training variants that raised, with the error
    wall_s: dict[str, float] = field(default_factory=dict)  # wall seconds of each part of the run
    torch: str = torch.__version__
    python: str = platform.python_version()


def loader_rate_per_core(shards: Path, *, model: str, batch: int, batches: int, train_batch: int
                         ) -> tuple[float, float]:
    """Samples/s of the training loader in this process on one thread (decode, augment, tokenise, batch as
    the training loop asks: uint8 pixels where the transform allows), and per CPU-second with 2 worker
    processes at `train_batch` over the first 4 shards (`benchmarks.loader.worker_rate`)."""
    _, preprocess_train, _, tokenizer = create_model(model)
    urls = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    normalize = loop.deferred_normalization(preprocess_train) is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch_iter = iter(make_loader(urls, transform=preprocess_train, tokenizer=tokenizer, batch_size=batch,
                                      shuffle_buffer=0, partial=False, normalize=normalize))
        next(batch_iter)  # opening the first shard is not part of the rate
        start = time.process_time()  # CPU time of this one-threaded work: other processes' load does not count
        for _ in range(batches):
            next(batch_iter)
        in_process = batch * batches / (time.process_time() - start)
        path = "new" if normalize else "uint8"  # the loader's current path; uint8 batches where allowed
        return in_process, worker_rate(urls[:4], preprocess_train, tokenizer, batch=train_batch, path=path)
    finally:
        torch.set_num_threads(threads)


class PhasedBatches:
    """`train`'s batch stream for one run in three phases: the loader's batches for `loader_steps` steps, then
    its last batch repeated from (pinned) host memory for `host_steps`, then that batch on `device` ever after."""

    def __init__(self, *, loader_steps: int, host_steps: int, device: torch.device) -> None:
        self.loader_steps, self.host_steps, self.device = loader_steps, host_steps, device

    def __call__(self, batches: Iterator[dict]) -> Iterator[dict]:
        batch: dict = {}
        for _ in range(self.loader_steps):
            batch = next(batches)
            yield batch
        for _ in range(self.host_steps):
            yield batch
        resident = {key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                    for key, value in batch.items()}
        while True:
            yield resident


def _median_figures(records: list[dict]) -> tuple[float, float, float | None]:
    """Median samples/s per device, TFLOP/s per device and MFU (None without a known peak) of `records`."""
    mfus = [r["mfu"] for r in records if "mfu" in r]
    return (statistics.median(r["samples_per_s_per_device"] for r in records),
            statistics.median(r["tflops_per_device"] for r in records), statistics.median(mfus) if mfus else None)


def train_run(shards: Path, out: Path, setup: Setup, *, compile_model: bool, patch_dropout: float) -> TrainFigures:
    """`treeclip train` for warm-up + timed loader-fed steps, then the two in-memory phases (`PhasedBatches`),
    each after `setup.settle` untimed steps; the medians of the loop's own per-step figures in each phase."""
    loader_steps = setup.warmup + setup.steps
    memory_phase = setup.settle + setup.memory_steps
    total = loader_steps + 2 * memory_phase
    config = load_config(overrides=[
        f"model.name={setup.model}", f"train.batch_size={setup.batch}", f"train.max_steps={total}",
        f"train.device={setup.device}", f"train.compile={str(compile_model).lower()}",
        f"train.patch_dropout={patch_dropout}", f"data.num_workers={setup.workers}", "data.shuffle_buffer=0",
        "eval.every_steps=0", f"checkpoint.every_steps={total}", "checkpoint.keep_last=1",
        f"log.every_steps={total}", "log.tensorboard=false", "optim.warmup_steps=1",
    ])
    records: list[dict] = []
    phases = PhasedBatches(loader_steps=loader_steps, host_steps=memory_phase, device=torch.device(setup.device))
    loop.train(config, data_dir=shards, out_dir=out, on_step=records.append, batch_stream=phases)
    rate, tflops, mfu = _median_figures(records[setup.warmup:loader_steps])
    pinned_start = loader_steps + setup.settle
    pinned_rate, _, pinned_mfu = _median_figures(records[pinned_start:pinned_start + setup.memory_steps])
    device_rate, _, device_mfu = _median_figures(records[pinned_start + memory_phase:])
    return TrainFigures(compile=compile_model, patch_dropout=patch_dropout, samples_per_s_per_gpu=rate,
                        step_ms=setup.batch / rate * 1e3, tflops_per_gpu=tflops, mfu=mfu,
                        pinned_batch_samples_per_s=pinned_rate, pinned_batch_mfu=pinned_mfu,
                        device_batch_samples_per_s=device_rate, device_batch_mfu=device_mfu)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(fn: Callable[[], object], *, calls: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call over `calls` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def inference_rate(setup: Setup) -> float:
    device = torch.device(setup.device)
    model = create_model(setup.model, device=device)[0].eval()
    size = model.visual.image_size
    images = torch.randn(setup.batch, 3, *((size, size) if isinstance(size, int) else size), device=device)

    @torch.inference_mode()
    def encode() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model.encode_image(images)

    return setup.batch / timed_calls(encode, calls=setup.steps, warmup=setup.warmup, device=device)


PREDICT_DECODERS = ("threads", "processes", "device")


def predict_rate(setup: Setup, work: Path, results: Results, *, taxa: int = 100_000) -> None:
    """Per decoder (`PREDICT_DECODERS`): images/s of `TreeOfLifeClassifier.predict` from 640x480 JPEG files (two
    batches per decoding worker, after one warm-up batch; enough for auto to use worker processes), and of the
    decoder alone on the same files (what bounds it on a fast device); `results.predict_images_per_s` is the
    decoder auto picks here; a decoder that fails is listed in `results.failed` and the others still run."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from treeclip.model.bank import LabelBank  # noqa: PLC0415
    from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: PLC0415
    from treeclip.predict.runner import use_processes  # noqa: PLC0415

    model, _, preprocess, _ = create_model(setup.model, device=setup.device)
    rng = np.random.default_rng(0)
    dim = model.text_projection.shape[1] if model.text_projection is not None else model.visual.output_dim
    matrix = rng.standard_normal((dim, taxa)).astype(np.float32)
    bank = LabelBank(matrix / np.linalg.norm(matrix, axis=0), [("K", "P", "C", "O", "F", f"G{i // 8}", f"s{i}")
                                                               for i in range(taxa)], [""] * taxa)
    classifier = TreeOfLifeClassifier(model=model.eval(), preprocess=preprocess, bank=bank, device=setup.device)
    (work / "jpegs").mkdir(exist_ok=True)
    workers = max(2, os.cpu_count() or 2)
    paths = []
    for i in range((1 + 2 * workers) * setup.batch):
        path = work / "jpegs" / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((640, 480)).save(path, quality=90)
        paths.append(str(path))
    timed = paths[setup.batch :]
    for decoder in PREDICT_DECODERS:
        try:
            decoder_rates(classifier, paths, decoder, setup=setup, workers=workers, results=results)
        except Exception as exc:  # noqa: BLE001 - one failing decoder must not lose the others' figures
            print(f"predict --decode {decoder} failed: {exc!r}", flush=True)
            results.failed.append(f"predict --decode {decoder}: {exc!r}")
    try:
        results.device_pixels_max_levels, results.device_pixels_mean_levels = device_pixel_levels(
            classifier, paths[: setup.batch], workers=workers)
    except Exception as exc:  # noqa: BLE001 - as above
        print(f"device pixel check failed: {exc!r}", flush=True)
        results.failed.append(f"device pixel check: {exc!r}")
    auto = "processes" if use_processes("auto", images=len(timed), batch_size=setup.batch, workers=workers) \
        else "threads"
    results.predict_decoder = auto
    results.predict_images_per_s = results.predict_by_decoder.get(auto, 0.0)
    results.decode_images_per_s = results.decode_by_decoder.get(auto, 0.0)


def decoder_rates(classifier: object, paths: list[str], decoder: str, *, setup: Setup, workers: int,
                  results: Results) -> None:
    """`predict_rate` for one decoder: end to end after a warm-up batch, then the decoder alone."""
    from collections import Counter  # noqa: PLC0415

    from treeclip.predict.decode_device import ON_DEVICE  # noqa: PLC0415
    from treeclip.predict.runner import decoded_batches  # noqa: PLC0415

    device, timed = torch.device(setup.device), paths[setup.batch :]
    classifier.predict(paths[: setup.batch], batch_size=setup.batch, workers=workers, decoder=decoder)
    synchronize(device)
    start = time.perf_counter()
    classifier.predict(timed, batch_size=setup.batch, workers=workers, decoder=decoder)
    synchronize(device)
    results.predict_by_decoder[decoder] = len(timed) / (time.perf_counter() - start)
    report: Counter = Counter()
    start = time.perf_counter()
    for batch in decoded_batches(timed, timed, preprocess=classifier.preprocess, batch_size=setup.batch,
                                 workers=workers, draft_size=classifier.draft_size, report=report,
                                 **classifier.decoding(decoder)):
        if batch.pixels is not None:
            batch.pixels.to(device, non_blocking=True)  # the copy to the device is part of feeding it
    synchronize(device)
    results.decode_by_decoder[decoder] = len(timed) / (time.perf_counter() - start)
    if decoder == "device":
        results.device_decode_fallbacks = sum(n for how, n in report.items() if how != ON_DEVICE)


def device_pixel_levels(classifier: object, paths: list[str], *, workers: int) -> tuple[float, float]:
    """(max, mean) difference in 8-bit levels between one batch decoded on the device (nvJPEG on CUDA) and the
    same files through the PIL float path at full resolution: the decoders' own agreement, which random
    weights cannot show in the features."""
    from treeclip.predict.runner import decoded_batches  # noqa: PLC0415

    def pixels(decoder: str) -> torch.Tensor:
        (batch,) = decoded_batches(paths, paths, preprocess=classifier.preprocess, batch_size=len(paths),
                                   workers=workers, draft_size=None, decoder=decoder, device=classifier.device)
        return batch.pixels.to(classifier.device).float()

    steps = classifier.preprocess.steps
    std = torch.tensor(steps.std, device=classifier.device).view(1, 3, 1, 1)
    levels = (pixels("device") - pixels("threads")).abs() * std * 255
    return float(levels.max()), float(levels.mean())


def run(setup: Setup, work: Path) -> Results:
    started = time.perf_counter()
    device = torch.device(setup.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    # one shard of two batches per loader worker: each worker batches its own shard, so each needs full batches
    parts = max(1, setup.workers)
    loader_batch, loader_batches = min(setup.batch, 32), max(3, setup.steps // 5)
    train_samples = max(parts * 2 * setup.batch, (loader_batches + 1) * loader_batch)
    per_species = {"train": -(-train_samples // 9), "val": 1}
    shards = write_shards(work / "shards", n_species=9, per_species=per_species, shards={"train": parts, "val": 1},
                          image_size=IMAGE_PX)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    in_process, with_workers = loader_rate_per_core(shards, model=setup.model, batch=loader_batch,
                                                    batches=loader_batches, train_batch=setup.batch)
    results = Results(device_name=name, model=setup.model, batch=setup.batch, loader_workers=setup.workers,
                      loader_samples_per_s_per_core=in_process, loader_samples_per_cpu_s_2_workers=with_workers)
    results.wall_s["shards + loader"] = time.perf_counter() - started
    print(f"loader: {in_process:,.1f} samples per CPU-second per core; {with_workers:,.1f} with 2 workers at batch "
          f"{setup.batch}", flush=True)
    # inference first: short, and its figures survive a time-out during the (compiling) training variants
    results.inference_images_per_s = inference_rate(setup)
    predict_rate(setup, work, results, taxa=1000 if setup.device == "cpu" else 100_000)
    results.wall_s["inference + predict"] = time.perf_counter() - started - sum(results.wall_s.values())
    print(f"inference: tower {results.inference_images_per_s:,.1f} images/s; predict from JPEGs per --decode: "
          + ", ".join(f"{decoder} {rate:,.1f} (decoding alone {results.decode_by_decoder[decoder]:,.1f})"
                      for decoder, rate in results.predict_by_decoder.items()), flush=True)
    for index, (compile_model, patch_dropout) in enumerate(setup.variants):
        variant_start = time.perf_counter()
        try:
            figures = train_run(shards, work / f"run{index}", setup, compile_model=compile_model,
                                patch_dropout=patch_dropout)
        except Exception as exc:  # noqa: BLE001 - one failing variant (say, compile) must not lose the others
            print(f"train: compile={compile_model} patch_dropout={patch_dropout} failed: {exc!r}", flush=True)
            results.failed.append(f"compile={compile_model} patch_dropout={patch_dropout}: {exc!r}")
            continue
        finally:
            shutil.rmtree(work / f"run{index}", ignore_errors=True)  # a ViT-B-16 checkpoint with AdamW is ~2 GB
            results.wall_s[f"train compile={compile_model} patch_dropout={patch_dropout}"] = \
                time.perf_counter() - variant_start
        print(f"train: {asdict(figures)}", flush=True)  # partial results survive a time-out
        results.train.append(figures)
    return results


def table(results: Results) -> str:
    rows = [("device", results.device_name), ("model", f"{results.model}, random weights, bf16 autocast on CUDA"),
            ("train batch (per GPU)", str(results.batch)), ("loader workers", str(results.loader_workers)),
            ("loader samples/s per core (224 px, augmented)", f"{results.loader_samples_per_s_per_core:,.1f}"),
            (f"loader samples per CPU-second, 2 worker processes at batch {results.batch} (workers + main)",
             f"{results.loader_samples_per_cpu_s_2_workers:,.1f}"),
            ("inference images/s (image tower)", f"{results.inference_images_per_s:,.1f}"),
            *[(f"predict images/s, --decode {decoder}{' (auto here)' if decoder == results.predict_decoder else ''}"
               " (JPEG files to top-5, bank on the device)",
               f"{rate:,.1f} ({rate / results.inference_images_per_s:.2f}x the tower alone); decoding alone "
               f"{results.decode_by_decoder[decoder]:,.1f}")
              for decoder, rate in results.predict_by_decoder.items()],
            ("images the device decoder left to the CPU", str(results.device_decode_fallbacks)),
            ("device-decoded pixels vs PIL at full resolution (8-bit levels, max / mean)",
             f"{results.device_pixels_max_levels:.2f} / {results.device_pixels_mean_levels:.3f}")]
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| treeclip train | samples/s per GPU | step (ms) | TFLOP/s per GPU | MFU | pinned batch: samples/s, "
              "MFU | device batch: samples/s, MFU | loader-fed / device batch |", "|---|---|---|---|---|---|---|---|"]
    for figures in results.train:
        label = f"compile {'on' if figures.compile else 'off'}, patch dropout {figures.patch_dropout:g}"
        lines.append(f"| {label} | {figures.samples_per_s_per_gpu:,.1f} | {figures.step_ms:,.1f} | "
                     f"{figures.tflops_per_gpu:,.2f} | {_share(figures.mfu)} | "
                     f"{figures.pinned_batch_samples_per_s:,.1f}, {_share(figures.pinned_batch_mfu)} | "
                     f"{figures.device_batch_samples_per_s:,.1f}, {_share(figures.device_batch_mfu)} | "
                     f"{figures.samples_per_s_per_gpu / figures.device_batch_samples_per_s:.2f} |")
    lines += [f"| FAILED: {failure} | | | | | | | |" for failure in results.failed]
    lines += ["", "wall seconds: " + ", ".join(f"{part} {seconds:.0f}" for part, seconds in results.wall_s.items())]
    return "\n".join(lines)


def _share(mfu: float | None) -> str:
    return f"{mfu:.1%}" if mfu is not None else "n/a (no known peak)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    parser.add_argument("--memory-steps", type=int, default=15,
                        help="timed steps per variant of each in-memory phase (pinned host batch, device batch)")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                        help="loader worker processes")
    parser.add_argument("--no-compile", action="store_true", help="skip the train.compile variants")
    parser.add_argument("--json", type=Path, default=Path("gpu_results.json"), help="where to write the figures")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model and batch on the CPU: tests this script's code path, not a GPU figure")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        setup = Setup(model="treeclip-test", batch=8, steps=2, warmup=1, workers=0, device="cpu",
                      variants=((False, 0.0), (False, 0.5)), memory_steps=2, settle=1)
    elif not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; run on a GPU machine, or pass --cpu-smoke to test the script")
    else:
        variants = tuple(v for v in VARIANTS if not (args.no_compile and v[0]))
        setup = Setup(model=args.model, batch=args.batch, steps=args.steps, warmup=args.warmup,
                      workers=args.workers, device="cuda", variants=variants, memory_steps=args.memory_steps)
    with tempfile.TemporaryDirectory(prefix="treeclip-gpu-") as tmp:
        results = run(setup, Path(tmp))
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(asdict(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
