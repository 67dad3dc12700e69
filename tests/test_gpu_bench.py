"""`benchmarks/gpu.py --cpu-smoke`: the GPU benchmark's code path (train step, FLOP count, inference) on a CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["model"] == "treeclip-test" and figures["batch"] == 4
    assert figures["train_samples_per_s"] > 0 and figures["inference_images_per_s"] > 0
    # a CLIP step costs at least forward + backward of both towers: far more than a few kFLOP per sample
    assert figures["flops_per_sample"] > 1e5 and figures["achieved_tflops"] > 0
    assert figures["mfu"] is None  # no peak is known for a CPU
    assert "| train samples/s |" in done.stdout and "| MFU |" in done.stdout
