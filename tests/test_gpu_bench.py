"""`benchmarks/gpu.py --cpu-smoke`: the GPU benchmark's code path (224 px shards, loader rate, treeclip's own
`train` with and without patch dropout, inference) on a CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["model"] == "treeclip-test" and figures["batch"] == 8
    assert figures["loader_samples_per_s_per_core"] > 0 and figures["inference_images_per_s"] > 0
    assert figures["loader_samples_per_cpu_s_2_workers"] > 0
    assert figures["failed"] == [] and figures["decode_images_per_s"] > 0 and figures["predict_images_per_s"] > 0
    # every predict decoder ran end to end and alone; the device decoder took every (plain) JPEG itself
    decoders = ["threads", "processes", "device"]
    assert list(figures["predict_by_decoder"]) == decoders and list(figures["decode_by_decoder"]) == decoders
    assert all(rate > 0 for rate in [*figures["predict_by_decoder"].values(), *figures["decode_by_decoder"].values()])
    assert figures["device_decode_fallbacks"] == 0
    assert 0 < figures["device_pixels_max_levels"] <= 3 and figures["device_pixels_mean_levels"] < 0.5
    assert figures["predict_images_per_s"] == figures["predict_by_decoder"][figures["predict_decoder"]]
    assert "--decode device" in done.stdout
    plain, dropped = figures["train"]
    assert (plain["patch_dropout"], dropped["patch_dropout"]) == (0.0, 0.5)
    assert plain["samples_per_s_per_gpu"] > 0 and plain["tflops_per_gpu"] > 0
    # the figures come from train's own records: FLOPs are counted per config, so patch dropout costs less
    per_sample = [run["tflops_per_gpu"] / run["samples_per_s_per_gpu"] for run in (plain, dropped)]
    assert per_sample[1] < per_sample[0]
    assert plain["mfu"] is None  # no peak is known for a CPU
    assert "| compile off, patch dropout 0.5 |" in done.stdout and "loader samples/s per core" in done.stdout
    # each variant also ran from one batch in host memory and one on the device (the compute-bound rate)
    assert all(run["pinned_batch_samples_per_s"] > 0 and run["device_batch_samples_per_s"] > 0
               for run in (plain, dropped))
    assert "| device batch: samples/s, MFU |" in done.stdout
    assert {"train compile=False patch_dropout=0.0", "train compile=False patch_dropout=0.5"} <= set(figures["wall_s"])


def test_phased_batches_switch_from_the_loader_to_one_batch_in_memory() -> None:
    """The loader's batches first, then its last batch as it is (host memory), then a copy on the device."""
    from benchmarks.gpu import PhasedBatches  # noqa: PLC0415 - imports torch and the test shards helper

    loader = iter({"image": torch.full((2, 3), float(i)), "text": torch.ones(2, 4), "__key__": [f"k{i}"]}
                  for i in range(10))
    stream = PhasedBatches(loader_steps=3, host_steps=2, device=torch.device("cpu"))(loader)
    got = [next(stream) for _ in range(8)]
    assert [b["__key__"] for b in got[:3]] == [["k0"], ["k1"], ["k2"]]
    assert got[3] is got[2] and got[4] is got[2]  # the host batch: the same pinned tensors, no loader
    assert all(torch.equal(b["image"], got[2]["image"]) and b["__key__"] == ["k2"] for b in got[5:])
    assert next(loader)["__key__"] == ["k3"]  # the loader is no longer drawn from
