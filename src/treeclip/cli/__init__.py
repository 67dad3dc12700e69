"""The ``treeclip`` command line: one module per command, discovered lazily.

Every command module in this package defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Module top levels import only the standard library, so ``treeclip --help`` and
``treeclip CMD --help`` never load torch; heavy imports happen inside ``run``.

A command that needs optional packages declares them in one line, ``REQUIRES = (Requirement(EXTRA,
(MODULE, ...)),)`` (see `treeclip.cli._options.Requirement`); `main` checks them after parsing and before
``run``, so a missing extra is one line naming ``pip install 'treeclip[EXTRA]'`` and exit code 2, never a
traceback an hour into the job. `tests/test_cli.py` runs every command with its modules hidden.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from treeclip import __version__
from treeclip.cli._options import missing_requirement
from treeclip.cli._signals import EXIT_TERMINATED, Terminated, handle_sigterm
from treeclip.errors import InputError, UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _command_modules() -> dict[str, ModuleType]:
    """Import every command module of this package, keyed by command name."""
    modules = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        modules[getattr(module, "NAME", info.name.replace("_", "-"))] = module
    return dict(sorted(modules.items()))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module."""
    parser = _Parser(prog="treeclip", description="BioCLIP for the tree of life: build, train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"treeclip {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _command_modules().items():
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _requires=getattr(module, "REQUIRES", ()))
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command, and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return EXIT_USAGE
    _configure_logging(args.verbose)
    missing = missing_requirement(args._requires, args)
    if missing:
        sys.stderr.write(f"treeclip {args.command}: error: {missing}\n")
        return EXIT_USAGE
    handle_sigterm()
    try:
        return int(args._run(args) or EXIT_OK)
    except UsageError as error:
        sys.stderr.write(f"treeclip {args.command}: error: {error}\n")
        return EXIT_USAGE
    except InputError as error:
        sys.stderr.write(f"treeclip {args.command}: {error}\n")
        return EXIT_PARTIAL
    except Terminated:
        sys.stderr.write(f"treeclip {args.command}: terminated (SIGTERM)\n")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        sys.stderr.write(f"treeclip {args.command}: interrupted\n")
        return 130
