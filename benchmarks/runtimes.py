"""Inference runtimes, compact banks and decoding, side by side in one run; writes its section of RESULTS.md.

1. **Runtimes** — images/s of `treeclip predict`'s code path (threaded decode + preprocess, model, bank,
   rows) on the same JPEGs for torch fp32, torch int8 (dynamic quantisation), ONNX Runtime fp32 and int8, and
   OpenVINO fp32 and int8 (`--runtime openvino`, reading the same exported files), for ViT-B-16 (BioCLIP's
   architecture, random weights: speed only) and treeclip-tiny; plus each image tower alone on pre-decoded
   tensors, and the tower alone of OpenVINO candidates not wired into treeclip (bf16; NNCF's static int8 when
   nncf is installed). All variants are loaded first, then timed in rounds whose order alternates (ABAB…), so
   the shared machine's load falls on each alike; medians of the rounds.
2. **Agreement** — on *trained* small models (`--trained MODEL [--trained MODEL2] --bank BANK --images DIR`,
   e.g. the demo's model trained on the miniature tree), each fast path's species top-1 agreement with torch
   fp32 on every image of DIR, with its 95% Wilson interval, how many of the flips were near-ties in fp32
   (top-1 and top-2 probabilities within 0.001), and the mean cosine of the image features; also ONNX int8
   with every weight product quantised (what the export wrote before it kept the first and last in float32),
   and the OpenVINO candidates (NNCF calibrated on every 10th image of DIR).
   Written to its own section; ``--agreement-only`` runs just this part.
3. **Banks** — memory of a 400K-taxon bank (dim 768) stored fp32/fp16/int8, time to score a batch, and
   top-1 agreement with fp32 at species and genus rank (random hierarchical bank: species of a genus close
   together; synthetic queries at cosine 0.4 to a random taxon).
4. **Decoding** — JPEG decode + preprocess per CPU-second (one thread) at 1024x768 and 4000x3000, with and
   without JPEG draft mode (DCT scaling to >= 2x the model input before the resize).

Usage: ``python benchmarks/runtimes.py --trained M --bank B --images DIR [--agreement-only | --skip-agreement] [--jpegs 100]
[--rounds 3]`` (needs the onnx and openvino extras; the NNCF row is skipped, with a note, without the bench extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import openvino  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.results import write_section  # noqa: E402
from treeclip.data.images import decode_image  # noqa: E402
from treeclip.model import create_model, export_model  # noqa: E402
from treeclip.model.bank import LabelBank, load_bank, save_bank  # noqa: E402
from treeclip.model.onnx import (FOLDER_RUNTIMES, IMAGE_INT8_ONNX, IMAGE_ONNX, ONNX_CONFIG, TEXT_ONNX,  # noqa: E402
                                 export_onnx)
from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.predict.quantize import bank_agreement, synthetic_queries  # noqa: E402
from treeclip.predict.inputs import expand_inputs  # noqa: E402
from treeclip.predict.runtime import load_for_inference  # noqa: E402

DRAFT_NOTE = ("Draft mode scales a JPEG down by 1/2, 1/4 or 1/8 only while both sides stay >= the draft size, so a "
              "1024x768 photo (half: 512x384 < 448) decodes in full either way: its two rows measure the same work, "
              "and their gap is this shared machine's noise.")
NEAR_TIE = 1e-3  # fp32 probability gap between top-1 and top-2 under which an answer is a near-tie
# every (runtime, precision) treeclip offers: torch's two, then each exported folder runtime's
VARIANTS = (("torch", "fp32"), ("torch", "int8"),
            *((runtime, precision) for runtime, precisions in FOLDER_RUNTIMES.items() for precision in precisions))
Tower = Callable[[torch.Tensor], torch.Tensor]  # preprocessed pixels -> image features


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """The shortest wall time of `runs` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """Smooth random photos (compress like real ones, unlike noise) as JPEG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.BICUBIC)
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def tiny_bank(dim: int, n: int = 1000, seed: int = 0) -> LabelBank:
    rng = np.random.default_rng(seed)
    matrix = F.normalize(torch.from_numpy(rng.standard_normal((dim, n)).astype(np.float32)), dim=0).numpy()
    lineages = [("K", "P", "C", "O", "F", f"G{i // 10}", f"s{i}") for i in range(n)]
    return LabelBank(matrix, lineages, [""] * n)


# ---------------------------------------------------------------- 1. runtimes


def export_both(arch: str, root: Path) -> tuple[Path, Path, float]:
    """(hub folder, ONNX folder, export seconds) of a randomly initialised architecture."""
    model, _, preprocess, tokenizer = create_model(arch)
    model.eval()
    hub = export_model(model, out_dir=root / arch, model_name=arch)
    start = time.perf_counter()
    onnx_dir = export_onnx(model, model_id=str(hub), out_dir=root / f"{arch}-onnx", preprocess=preprocess,
                           tokenizer=tokenizer)
    return hub, onnx_dir, time.perf_counter() - start


def bench_runtimes(arch: str, root: Path, jpegs: list[str], batch: int, rounds: int) -> list[dict[str, Any]]:
    """Every variant loaded first, then `rounds` rounds, each timing every variant (folder end to end, then the
    tower alone) in an order that alternates round by round; median images/s per variant."""
    hub, onnx_dir, export_s = export_both(arch, root)
    bank = tiny_bank(_embed_dim(hub))
    classifiers = {}
    for runtime, precision in VARIANTS:
        model_id = str(hub if runtime == "torch" else onnx_dir)
        net, preprocess, tokenizer = load_for_inference(model_id, runtime=runtime, precision=precision)
        classifiers[(runtime, precision)] = TreeOfLifeClassifier(model=net, preprocess=preprocess,
                                                                 tokenizer=tokenizer, bank=bank, model_id=model_id)
    pixels = torch.stack([classifiers[VARIANTS[0]].preprocess(decode_image(path)) for path in jpegs[:batch]])
    towers: dict[tuple[str, str], Tower] = {key: c.encode_images for key, c in classifiers.items()}
    towers.update(openvino_candidates(onnx_dir / IMAGE_ONNX, pixels))
    for key, tower in towers.items():  # warm-up (allocations, first runs)
        if key in classifiers:
            classifiers[key].predict(jpegs[:batch], batch_size=batch)
        tower(pixels)
    folder_s: dict[tuple[str, str], list[float]] = {key: [] for key in classifiers}
    tower_s: dict[tuple[str, str], list[float]] = {key: [] for key in towers}
    loads = []
    for round_ in range(rounds):
        for key in list(towers) if round_ % 2 == 0 else list(reversed(towers)):
            if key in classifiers:
                folder_s[key].append(seconds(lambda c=classifiers[key]: c.predict(jpegs, batch_size=batch, workers=2)))
            tower_s[key].append(seconds(lambda t=towers[key]: t(pixels)))
        loads.append(os.getloadavg()[0])
    rows = [{"arch": arch, "runtime": key[0], "precision": key[1],
             "folder_ips": len(jpegs) / statistics.median(folder_s[key]) if key in folder_s else None,
             "tower_ips": batch / statistics.median(tower_s[key])} for key in towers]
    rows[0]["note"] = (f"{arch}: ONNX export (fp32 + int8) {export_s:.0f} s, 1-minute load during the rounds "
                       f"{min(loads):.1f}-{max(loads):.1f}")
    return rows


def seconds(fn: Callable[[], Any]) -> float:
    """The wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def openvino_candidates(image_onnx: Path, calibration: torch.Tensor) -> dict[tuple[str, str], Tower]:
    """Image towers OpenVINO could run that treeclip does not offer, measured to decide: bf16 (OpenVINO's default
    on CPUs with bf16 instructions) and, when nncf is installed, NNCF's static int8 (transformer preset,
    calibrated on `calibration`)."""
    core = openvino.Core()
    candidates = {("openvino", "bf16 (not offered)"): _openvino_tower(core.compile_model(
        str(image_onnx), "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}))}
    try:
        import nncf  # noqa: PLC0415 - the bench extra
    except ImportError:
        log_note("nncf is not installed (pip install 'treeclip[bench]'): no NNCF int8 row")
        return candidates
    batches = [calibration[i : i + 32].numpy() for i in range(0, len(calibration), 32)]
    quantized = nncf.quantize(core.read_model(str(image_onnx)), nncf.Dataset(batches),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
    candidates[("openvino", "int8 NNCF static (not offered)")] = _openvino_tower(core.compile_model(
        quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}))
    return candidates


def _openvino_tower(compiled: Any) -> Tower:
    request = compiled.create_infer_request()
    return lambda pixels: F.normalize(torch.from_numpy(request.infer({0: pixels.numpy()})[0].copy()), dim=-1)


def log_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _embed_dim(hub: Path) -> int:
    return int(json.loads((hub / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"])


# ---------------------------------------------------------------- 2. agreement on a trained model


def bench_agreement(model: str, bank_dir: str, images: str, root: Path, batch: int) -> list[dict[str, Any]]:
    """Top-1 agreement with torch fp32 (with a 95% interval), flips at near-ties and mean feature cosine of each
    fast path on a trained model; plus ONNX int8 with every weight product quantised (the earlier export) and
    the OpenVINO candidates (NNCF calibrated on every 10th image)."""
    net, preprocess, tokenizer = load_for_inference(model)
    tag = "-".join(Path(model).resolve().parts[-2:])  # two models may share a folder name ("model")
    onnx_dir = export_onnx(net, model_id=model, out_dir=root / f"trained-onnx-{tag}", preprocess=preprocess,
                           tokenizer=tokenizer)
    every = onnx_dir.with_name(onnx_dir.name + "-every")  # the same folder, its int8 tower quantised throughout
    every.mkdir()
    for name in (IMAGE_ONNX, TEXT_ONNX, ONNX_CONFIG):
        os.link(onnx_dir / name, every / name)
    quantize_dynamic(onnx_dir / IMAGE_ONNX, every / IMAGE_INT8_ONNX, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    paths = expand_inputs([images])
    truth = _truth(paths, load_bank(bank_dir))
    batches = [torch.stack([preprocess(decode_image(p)) for p in paths[i : i + batch]])
               for i in range(0, len(paths), batch)]
    reference = TreeOfLifeClassifier.from_pretrained(model, bank_dir)
    towers: dict[tuple[str, str], Tower] = {}
    for runtime, precision in (*VARIANTS, ("onnx", "int8, every product")):
        model_id = model if runtime == "torch" else str(every if "every" in precision else onnx_dir)
        towers[(runtime, precision)] = TreeOfLifeClassifier.from_pretrained(
            model_id, bank_dir, precision=precision.split(",")[0], runtime=runtime).encode_images
    towers.update(openvino_candidates(onnx_dir / IMAGE_ONNX, torch.cat(batches)[::10]))
    results, fp32 = [], None
    for (runtime, precision), tower in towers.items():
        features = torch.cat([tower(pixels) for pixels in batches])
        probabilities = reference.probabilities(features)
        top1 = probabilities.argmax(dim=1)
        if fp32 is None:
            top2 = probabilities.topk(2, dim=1).values
            fp32 = (features, top1, top2[:, 0] - top2[:, 1])
        same = top1 == fp32[1]
        name = "/".join(Path(model).resolve().parts[-2:])
        results.append({"model": name, "runtime": runtime, "precision": precision, "images": len(paths),
                        "agree": int(same.sum()), "interval": wilson_interval(int(same.sum()), len(paths)),
                        "near_tie_flips": int((~same & (fp32[2] < NEAR_TIE)).sum()),
                        "cosine": float((features * fp32[0]).sum(dim=1).mean()),
                        "accuracy": float((top1 == truth).float().mean()) if truth is not None else None,
                        "reference_gap": float(fp32[2].median())})
    return results


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96)."""
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _truth(paths: list[str], bank: LabelBank) -> torch.Tensor | None:
    """True bank columns from synth folder names (``images/Genus_epithet/...``), when every image has one."""
    column = {f"{lineage[5]}_{lineage[6]}": i for i, lineage in enumerate(bank.lineages)}
    found = [column.get(Path(path).parent.name) for path in paths]
    return None if None in found else torch.tensor(found)


# ---------------------------------------------------------------- 3. banks


def hierarchical_bank(n_taxa: int, dim: int, *, per_genus: int = 8, seed: int = 0) -> LabelBank:
    """Unit columns, species of a genus close together (cosine ~0.8), genera of a family related."""
    rng = np.random.default_rng(seed)
    n_genera = -(-n_taxa // per_genus)
    families = rng.standard_normal((dim, -(-n_genera // 10))).astype(np.float32)
    genera = np.repeat(families, 10, axis=1)[:, :n_genera] + rng.standard_normal((dim, n_genera)).astype(np.float32)
    matrix = np.repeat(genera, per_genus, axis=1)[:, :n_taxa]
    matrix += 0.7 * rng.standard_normal((dim, n_taxa)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    lineages = [("K", "P", "C", "O", f"F{i // (per_genus * 10)}", f"G{i // per_genus}", f"s{i}")
                for i in range(n_taxa)]
    return LabelBank(matrix, lineages, [""] * n_taxa)


def bench_banks(root: Path, n_taxa: int, dim: int, n_queries: int) -> list[dict[str, Any]]:
    reference = load_bank(save_bank(hierarchical_bank(n_taxa, dim), root / "bank-fp32"))
    queries = synthetic_queries(reference, n_queries)
    rows = []
    for dtype in ("fp32", "fp16", "int8"):
        bank = reference if dtype == "fp32" else load_bank(save_bank(reference, root / f"bank-{dtype}", dtype=dtype))
        matrix = bank.matrix()
        seconds = best_of(2, lambda m=matrix: queries[:32] @ m)
        agreement = bank_agreement(reference, bank, queries)
        rows.append({"dtype": dtype, "mb": bank.nbytes / 2**20, "score_ms": 1000 * seconds, **agreement})
    return rows


# ---------------------------------------------------------------- 4. decoding


def bench_decoding(root: Path) -> list[dict[str, Any]]:
    """Decode + preprocess (ViT-B-16's) per CPU-second of this process, one thread, with and without draft mode."""
    _, _, preprocess, _ = create_model("ViT-B-16")
    rows = []
    for size, count in (((1024, 768), 40), ((4000, 3000), 8)):
        paths = write_jpegs(root / f"jpeg-{size[0]}", count, size)
        for draft in (None, preprocess.draft_size):
            start = time.process_time()
            for path in paths:
                preprocess(decode_image(path, draft_size=draft))
            cpu = time.process_time() - start
            rows.append({"size": f"{size[0]}x{size[1]}", "draft": draft, "per_cpu_s": count / cpu})
    return rows


# ---------------------------------------------------------------- report


def markdown(runtimes: list[dict], banks: list[dict], decoding: list[dict], settings: dict[str, Any]) -> str:
    lines = ["## Inference runtimes, compact banks, decoding (`python benchmarks/runtimes.py`)", "",
             "One run, side by side on the same inputs. " + ", ".join(f"{k}: {v}" for k, v in settings.items()), "",
             "| model | runtime | precision | folder images/s | vs torch fp32 | vs onnx fp32 | tower alone images/s "
             "| vs torch fp32 | vs onnx fp32 |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for arch in dict.fromkeys(row["arch"] for row in runtimes):
        group = {(row["runtime"], row["precision"]): row for row in runtimes if row["arch"] == arch}
        torch_fp32, onnx_fp32 = group[("torch", "fp32")], group[("onnx", "fp32")]
        for row in group.values():
            lines.append(f"| {arch} | {row['runtime']} | {row['precision']} | "
                         f"{_rate(row, torch_fp32, onnx_fp32, 'folder_ips')} | "
                         f"{_rate(row, torch_fp32, onnx_fp32, 'tower_ips')} |")
    notes = [row["note"] for row in runtimes if row.get("note")]
    lines += ["", "Per model: " + "; ".join(notes) + ". \"not offered\": measured to decide, not wired into treeclip."]
    lines += ["", "| bank storage | memory MB | score 32 queries ms | top-1 species agreement | top-1 genus agreement "
              "| score-vector cosine |", "|---|---:|---:|---:|---:|---:|"]
    for row in banks:
        lines.append(f"| {row['dtype']} | {row['mb']:.0f} | {row['score_ms']:.0f} | {row['top1_species']:.2%} | "
                     f"{row['top1_genus']:.2%} | {row['score_cosine']:.6f} |")
    lines += ["", "| JPEG | draft mode | decode + preprocess images per CPU-second (1 thread) |", "|---|---|---:|"]
    for row in decoding:
        draft = f"on (>= {row['draft']} px)" if row["draft"] else "off"
        lines.append(f"| {row['size']} | {draft} | {row['per_cpu_s']:.1f} |")
    lines += ["", DRAFT_NOTE]
    return "\n".join(lines) + "\n"


def _rate(row: dict[str, Any], torch_fp32: dict[str, Any], onnx_fp32: dict[str, Any], key: str) -> str:
    """Three table cells: images/s and its ratios to torch fp32 and ONNX fp32 (n/a for a tower-only row)."""
    if row[key] is None:
        return "n/a | | "
    return f"{row[key]:.1f} | {row[key] / torch_fp32[key]:.2f}x | {row[key] / onnx_fp32[key]:.2f}x"


def agreement_markdown(agreement: list[dict], settings: dict[str, Any]) -> str:
    lines = ["## Int8, bf16 and other runtimes' answers against torch fp32 on trained models "
             "(`python benchmarks/runtimes.py --agreement-only`)", "",
             "One run, every path on the same images. " + ", ".join(f"{k}: {v}" for k, v in settings.items()), "",
             "| trained model | runtime | precision | images | same top-1 | agreement (95% interval) | "
             f"flips where fp32's top-2 gap < {NEAR_TIE} | mean feature cosine | top-1 accuracy |",
             "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for row in agreement:
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "n/a"
        low, high = row["interval"]
        lines.append(f"| {row['model']} | {row['runtime']} | {row['precision']} | {row['images']} | {row['agree']} | "
                     f"{row['agree'] / row['images']:.2%} ({low:.2%}-{high:.2%}) | "
                     f"{row['near_tie_flips']} of {row['images'] - row['agree']} | {row['cosine']:.6f} | {accuracy} |")
    gaps = ", ".join(f"{row['model']} {row['reference_gap']:.4f}" for row in agreement if row["precision"] == "fp32"
                     and row["runtime"] == "torch")
    lines += ["", f"Median fp32 probability gap between the top-1 and top-2 species: {gaps}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", required=True, action="append",
                        help="a trained small model (hub folder or checkpoint); repeat for several on the same bank")
    parser.add_argument("--bank", required=True, action="append",
                        help="its label bank; one per --trained, in the same order, or one for all")
    parser.add_argument("--images", required=True, help="folder of images of the bank's taxa")
    parser.add_argument("--jpegs", type=int, default=100)
    parser.add_argument("--taxa", type=int, default=400_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per variant (order alternating)")
    parser.add_argument("--archs", default="ViT-B-16,treeclip-tiny")
    parser.add_argument("--agreement-only", action="store_true",
                        help="measure and write only the agreement section (no speed, bank or decoding runs)")
    parser.add_argument("--skip-agreement", action="store_true",
                        help="leave the agreement section as it is; measure speed, banks and decoding only")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="treeclip-onnx-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_agreement:
            if len(args.bank) not in (1, len(args.trained)):
                parser.error("give one --bank, or one per --trained")
            banks = args.bank * len(args.trained) if len(args.bank) == 1 else args.bank
            agreement = [row for model, bank in zip(args.trained, banks, strict=True)
                         for row in bench_agreement(model, bank, args.images, root, args.batch)]
            print(agreement, flush=True)
            write_section("runtimes.py: agreement", agreement_markdown(agreement, _settings(load, args)))
        if args.agreement_only:
            return
        jpegs = write_jpegs(root / "photos", args.jpegs, (640, 480))
        runtimes = [row for arch in args.archs.split(",") for row in bench_runtimes(arch, root, jpegs, args.batch,
                                                                                     args.rounds)]
        print(runtimes, flush=True)
        banks = bench_banks(root, args.taxa, 768, args.queries)
        print(banks, flush=True)
        decoding = bench_decoding(root)
        print(decoding, flush=True)
    settings = {**_settings(load, args),
                "photos": f"{args.jpegs} JPEGs 640x480, batch {args.batch}, 2 decoding threads, median of "
                          f"{args.rounds} rounds in alternating order",
                "bank": f"{args.taxa:,} taxa x 768, {args.queries} synthetic queries"}
    write_section("runtimes.py", markdown(runtimes, banks, decoding, settings))


def _settings(load: tuple[float, float, float], args: argparse.Namespace) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "torch threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version().split("-")[0],
            "CPU": platform.processor() or platform.machine(),
            "load at start": " ".join(f"{x:.1f}" for x in load),
            "load at end": " ".join(f"{x:.1f}" for x in os.getloadavg())}


if __name__ == "__main__":
    main()
