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
