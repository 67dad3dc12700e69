"""Options shared by several commands (this module is not a command: its name starts with "_")."""

from __future__ import annotations

import argparse


def add_engine_arguments(parser: argparse.ArgumentParser, *, local: str, shared_files: str) -> None:
    """``--engine local|ray`` and ``--ray-address``; `local` says what the local engine runs on, and
    `shared_files` what a cluster's workers must see on a shared filesystem."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help=f"local ({local}; default) or Ray (pip install 'treeclip[ray]'); same output either way")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help=f"a running Ray cluster (auto, HOST:6379 or ray://HOST:10001; {shared_files} on a "
                             "shared filesystem); default: a local Ray runtime")
