"""scripts/demo.sh argument handling, with `python3` stubbed so nothing is installed: --venv picks the
virtualenv, every other argument reaches `treeclip demo`, TREECLIP_TORCH_INDEX installs PyTorch from that index
first, setup prints one line per stage, and a bare --venv is a one-line usage error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "demo.sh"
STUB = """#!/usr/bin/env bash
# python3 stand-in: `python3 -m venv DIR` makes DIR/bin/{python,treeclip} that only echo their arguments
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    printf '#!/usr/bin/env bash\\necho "python $*"\\n' > "$3/bin/python"
    printf '#!/usr/bin/env bash\\necho "treeclip $*"\\n' > "$3/bin/treeclip"
    chmod +x "$3/bin/python" "$3/bin/treeclip"
fi
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(STUB, encoding="utf-8")
    (bin_dir / "python3").chmod(0o755)
    inherited = {k: v for k, v in os.environ.items() if k != "TREECLIP_TORCH_INDEX"}
    environment = {**inherited, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=60)


def test_venv_option_and_demo_arguments(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = _run(tmp_path, "--venv", str(venv), "--quick", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"treeclip demo --out treeclip-demo --quick --out {tmp_path / 'demo'}"  # the last --out wins
    assert "python -m pip install --quiet -e ." in lines
    assert not any("index-url" in line for line in lines)
    stages = [line for line in lines if line.startswith("[setup] ")]
    assert len(stages) == 4 and stages[0].startswith(f"[setup] virtualenv {venv}")
    assert (venv / "bin" / "treeclip").is_file()


def test_cpu_only_torch_index(tmp_path: Path) -> None:
    index = "https://download.pytorch.org/whl/cpu"
    result = _run(tmp_path, "--venv", str(tmp_path / "venv"), TREECLIP_TORCH_INDEX=index)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    torch_line = lines.index(f"python -m pip install --quiet torch torchvision --index-url {index}")
    assert torch_line < lines.index("python -m pip install --quiet -e .")  # PyTorch first, then treeclip


@pytest.mark.parametrize("args", [["--venv"], ["--venv", ""]])
def test_venv_without_folder_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    result = _run(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "scripts/demo.sh: --venv needs a folder (usage: bash scripts/demo.sh [--venv DIR] [DEMO ARGS...])"]
    assert result.stdout == ""
