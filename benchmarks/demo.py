"""Time `treeclip demo --quick` and the full `treeclip demo` from scratch; print a table per step.

Each demo runs as its own `treeclip` process in a fresh folder. Wall-clock seconds swing with other people's
load on a shared machine, so CPU seconds (the process and its children, all threads) are reported too; the
budget on 2 cores is ≤ 3 min for --quick and ≤ 10 min for the full demo.

    python benchmarks/demo.py [--only quick|full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = {"quick": 180, "full": 600}


def run_demo(mode: str, out: Path) -> dict:
    """Run one demo; returns its summary.json with the process's wall and CPU seconds added."""
    command = [sys.executable, "-m", "treeclip", "demo", "--out", str(out), "--fresh", "--no-progress"]
    command += ["--quick"] if mode == "quick" else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {**summary, "process": {"wall_s": wall, "cpu_s": cpu}}


def table(mode: str, summary: dict) -> str:
    rows = [f"{'step':<22} {'wall s':>8} {'CPU s':>8}"]
    rows += [f"{t['name']:<22} {t['wall_s']:8.1f} {t['cpu_s']:8.1f}" for t in summary["timings"]]
    process = summary["process"]
    rows.append(f"{'total (process)':<22} {process['wall_s']:8.1f} {process['cpu_s']:8.1f}"
                f"   budget {BUDGET_S[mode]} s")
    passed = sum(f["passed"] for f in summary["findings"])
    rows.append(f"findings reproduced: {passed} of {len(summary['findings'])}")
    return f"== treeclip demo{' --quick' if mode == 'quick' else ''} ==\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(BUDGET_S), help="time one mode only")
    parser.add_argument("--keep", type=Path, help="write the demos here (default: a deleted temporary folder)")
    args = parser.parse_args()
    modes = [args.only] if args.only else list(BUDGET_S)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        tables = [table(mode, run_demo(mode, root / f"demo-{mode}")) for mode in modes]
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
