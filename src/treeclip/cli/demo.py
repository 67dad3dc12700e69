"""``treeclip demo``: the project's main job — BioCLIP's findings, measured on the miniature tree of life."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Run the whole system offline on the miniature tree of life and report BioCLIP's findings."
SIZES = ("species", "epochs", "images_per_species")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"repeated seed in {text!r}")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("treeclip-demo"),
                        help="demo folder (default ./treeclip-demo); re-running with it reuses finished steps")
    parser.add_argument("--quick", action="store_true",
                        help="smaller world, model and training, one training seed; numbers are indicative")
    parser.add_argument("--fresh", action="store_true", help="delete an earlier demo in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--train-seeds", type=_seeds, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--species", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images-per-species", type=int, default=None, help=argparse.SUPPRESS)


def _check_arguments(args: argparse.Namespace) -> dict:
    """The settings changes the options ask for; `UsageError` for a bad value or an --out that is a file.
    Runs before torch is imported, so a mistake costs no start-up time."""
    from treeclip.errors import UsageError  # noqa: PLC0415 - light

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder (new, empty, or an earlier demo's)")
    changes: dict = {"seed": args.seed}
    for key in SIZES:
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be at least 1")
            changes[key] = getattr(args, key)
    if args.train_seeds is not None:
        changes["train_seeds"] = args.train_seeds
    return changes


def _progress_factory(disabled: bool):  # noqa: ANN202 - tqdm is imported lazily
    from tqdm import tqdm  # noqa: PLC0415

    bars: list = []

    def progress(desc: str, total: int):  # noqa: ANN202
        for bar in bars:
            bar.close()
        bars[:] = [tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, disable=disabled)]
        return bars[0].update

    def close() -> None:
        for bar in bars:
            bar.close()

    return progress, close


def _step_line(timing) -> str:  # noqa: ANN001 - treeclip.demo is imported lazily
    detail = f" ({timing.detail})" if timing.detail else ""
    line = f"[demo] {timing.name:<24} {'reused' if timing.reused else 'done':<6} {timing.wall_s:7.1f} s wall " \
           f"{timing.cpu_s:7.1f} s CPU{detail}"
    if timing.reused and timing.original_wall_s is not None:
        line += f"; originally {timing.original_wall_s:.1f} s wall"
    return line


def run(args: argparse.Namespace) -> int:
    changes = _check_arguments(args)
    from treeclip.demo import demo_settings, run_demo  # noqa: PLC0415
    from treeclip.demo.report import summary_lines  # noqa: PLC0415

    settings = demo_settings(quick=args.quick, **changes)
    progress, close = _progress_factory(args.no_progress)

    def on_step(timing) -> None:  # noqa: ANN001
        close()
        print(_step_line(timing), flush=True)

    try:
        result = run_demo(args.out, settings=settings, fresh=args.fresh, progress=progress, on_step=on_step)
    finally:
        close()
    print("\n".join(summary_lines(result.summary)))
    reused = [t.name for t in result.timings if t.reused]
    if reused:
        print(f"reused from an earlier run: {', '.join(reused)}")
    total_wall = sum(t.wall_s for t in result.timings)
    total_cpu = sum(t.cpu_s for t in result.timings)
    print(f"total: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU")
    print(f"report: {result.report}")
    return 0
