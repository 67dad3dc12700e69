"""Load on `treeclip serve` over loopback: latency, throughput, the effect of batching, and overload.

Starts `treeclip serve` in a subprocess (its own interpreter, as in production) on a generated model and
bank, then runs concurrent clients (the load client of ``tests/test_serve_load.py``: each request uploads
one or two known images to /v1/predict or /v1/embed, and every answer is checked against a direct
computation). Scenarios, each on a fresh server:

1. batched: queue large enough for every client, up to `--max-batch` images per model call;
2. unbatched: the same with one image per model call;
3. overload: a queue of 8 for all the clients (503 + Retry-After expected, nothing else).

Prints p50/p95 latency of answered requests, answered requests/s and images/s per scenario.

Usage: ``python benchmarks/serve_load.py [--clients 32] [--seconds 20] [--arch treeclip-test]``
(``--arch ViT-B-16`` serves BioCLIP's architecture with random weights; much slower on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_predict_fixtures import LOGIT_SCALE, random_taxa, tiny_bank  # noqa: E402
from test_serve_api import png_bytes  # noqa: E402
from test_serve_load import Known, run_load  # noqa: E402

from treeclip.model import create_model, export_model  # noqa: E402
from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402


def make_world(root: Path, arch: str, n_species: int) -> tuple[Path, Path]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(arch)[0]
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model_dir = export_model(model, out_dir=root / "model", model_name=arch)
    tiny_bank(model_dir, random_taxa(n_species), root / "bank")
    return model_dir, root / "bank"


@contextlib.contextmanager
def server(model: Path, bank: Path, *options: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "treeclip", "serve", "--model", str(model), "--bank", str(bank),
               "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(command)}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--arch", default="treeclip-test")
    parser.add_argument("--species", type=int, default=200)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, bank = make_world(Path(tmp), args.arch, args.species)
        known = Known.compute(TreeOfLifeClassifier.from_pretrained(str(model), str(bank)),
                              [png_bytes(seed, size=(320, 240)) for seed in range(8)])
        scenarios = {
            "batched": ["--queue-size", str(2 * args.clients), "--max-batch", str(args.max_batch)],
            "unbatched": ["--queue-size", str(2 * args.clients), "--max-batch", "1"],
            "overload": ["--queue-size", "8", "--max-batch", str(args.max_batch)],
        }
        print(f"{args.clients} clients x {args.seconds:g} s per scenario, model {args.arch}, {args.species} taxa, "
              f"{os.cpu_count()} CPUs")
        print(f"{'scenario':<10} {'requests':>8} {'ok':>6} {'503':>5} {'p50 ms':>8} {'p95 ms':>8} {'ok/s':>7} "
              f"{'img/s':>7}  problems")
        for name, options in scenarios.items():
            with server(model, bank, *options) as url:
                result = run_load(url, known, clients=args.clients, seconds=args.seconds)
            s = result.summary()
            other = {code: n for code, n in result.statuses.items() if code not in (200, 503)}
            problems = len(result.wrong) + len(result.failures) + sum(other.values())
            print(f"{name:<10} {s['requests']:>8} {s['ok']:>6} {s['busy_503']:>5} {s['p50_ms']:>8.0f} "
                  f"{s['p95_ms']:>8.0f} {s['ok_per_s']:>7.1f} {s['images_per_s']:>7.1f}  "
                  f"{problems or 'none'}{f' {other}' if other else ''}")
            for problem in (result.wrong + result.failures)[:3]:
                print(f"  {problem}")


if __name__ == "__main__":
    main()
