"""The command line: discovery, help without heavy imports, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from treeclip.cli import _command_modules, main

HEAVY_MODULES = ("torch", "numpy", "PIL", "open_clip", "webdataset", "pyarrow")

_HELP_PROBE = """
import contextlib, io, sys
from treeclip.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as done:
            assert done.code == 0, (argv, done.code)
    assert "usage:" in out.getvalue(), argv
print(",".join(name for name in {heavy!r} if name in sys.modules))
"""


def _help_argvs() -> list[list[str]]:
    return [["--help"]] + [[name, "--help"] for name in _command_modules()]


def test_every_help_answers_without_heavy_imports() -> None:
    probe = _HELP_PROBE.format(argvs=_help_argvs(), heavy=HEAVY_MODULES)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"--help imported: {result.stdout.strip()}"


def test_python_dash_m_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "treeclip", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("treeclip ")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["no-such-command"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: treeclip" in capsys.readouterr().out
