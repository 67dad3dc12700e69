"""Options and start-up checks shared by several commands (not a command: its name starts with "_")."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def add_engine_arguments(parser: argparse.ArgumentParser, *, local: str, shared_files: str) -> None:
    """``--engine local|ray`` and ``--ray-address``; `local` says what the local engine runs on, and
    `shared_files` what a cluster's workers must see on a shared filesystem."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help=f"local ({local}; default) or Ray (pip install 'treeclip[ray]'); same output either way")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help=f"a running Ray cluster (auto, HOST:6379 or ray://HOST:10001; {shared_files} on a "
                             "shared filesystem); default: a local Ray runtime")


@dataclass(frozen=True)
class Requirement:
    """Optional modules a command needs, and the extra of ``pip install 'treeclip[EXTRA]'`` that provides them.

    A command module declares what it needs in one line, checked by `treeclip.cli.main` before the command
    starts any work (and before torch is imported)::

        REQUIRES = (Requirement("serve", ("fastapi", "uvicorn", "multipart")),)
        REQUIRES = (RAY_ENGINE,)                       # only when the user passes --engine ray

    `modules` are top-level import names (``multipart``, not ``python-multipart``); `when`, if given, says
    for which parsed arguments the requirement applies. A missing module ends the command with one line
    naming the extra to install and exit code 2.
    """

    extra: str
    modules: tuple[str, ...]
    when: Callable[[argparse.Namespace], bool] | None = None

    def missing(self, args: argparse.Namespace) -> list[str]:
        """The modules of this requirement that cannot be imported (none when it does not apply to `args`)."""
        if self.when is not None and not self.when(args):
            return []
        return [name for name in self.modules if importlib.util.find_spec(name) is None]


RAY_ENGINE = Requirement("ray", ("ray",), when=lambda args: getattr(args, "engine", "local") == "ray")


def missing_requirement(requirements: Sequence[Requirement], args: argparse.Namespace) -> str | None:
    """One line naming the missing modules and the extra to install, or None when all are importable."""
    for requirement in requirements:
        missing = requirement.missing(args)
        if missing:
            return (f"needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
                    f"pip install 'treeclip[{requirement.extra}]'")
    return None


HUB_HOST, HUB_TIMEOUT_S = "huggingface.co", 3.0
# The model predict, embed and serve use without --model: `treeclip.model.bank.DEFAULT_MODEL`, named here so the
# start-up check needs no torch (tests/test_cli.py asserts both agree).
DEFAULT_MODEL = "hf-hub:imageomics/bioclip-2"


def check_hub_model(model_id: str, *, option: str = "--model") -> None:
    """Fail in one line, before torch loads, when `model_id` is an ``hf-hub:`` id that cannot be fetched: not in
    the local Hugging Face cache while ``HF_HUB_OFFLINE`` is set, or huggingface.co unreachable within
    3 seconds (instead of the hub client's minutes of retries). Other ids (folders, checkpoints) pass."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from treeclip.errors import UsageError  # noqa: PLC0415

    if not model_id.startswith("hf-hub:") or _hub_cached(model_id[len("hf-hub:"):]):
        return
    advice = f"give {option} with a local model folder, or run `treeclip demo` for an offline one"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UsageError(f"{option} {model_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                         f"{advice}")
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        raise UsageError(f"{option} {model_id}: cannot reach {HUB_HOST} ({error.strerror or error}); {advice}") from None


def _hub_cached(repo_id: str) -> bool:
    """True when the hub cache holds a snapshot of model repo `repo_id` (``models--ORG--NAME/snapshots``)."""
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or Path(home) / "hub")
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())
