"""The command line: discovery, help without heavy imports, exit codes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from treeclip.cli import _command_modules, main
from treeclip.cli._options import Requirement

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


# ---------------------------------------------------------------- start-up checks of optional extras

_HIDE_MODULES = """
import os, sys
for name in os.environ.get("TREECLIP_TEST_HIDE", "").split(","):
    if name:
        sys.modules[name] = None  # `import name` raises ImportError and importlib.util.find_spec returns None
"""

# One argv per command that declares REQUIRES; a new declaration without an entry here fails the test below.
# The paths need not exist: the start-up check answers before any file is read.
REQUIREMENT_ARGVS: dict[str, list[str]] = {
    "serve": ["serve", "--model", "m", "--bank", "b"],
    "index": ["index", "emb.parquet", "--out", "idx"],
    "search": ["search", "idx", "--text", "a moth"],
    "build": ["build", "--source", "csv:c.csv", "--out", "shards", "--engine", "ray"],
    "predict": ["predict", "x.jpg", "--model", "m", "--engine", "ray"],
    "embed": ["embed", "x.jpg", "--model", "m", "-o", "e.parquet", "--engine", "ray"],
    "export": ["export", "run", "--out", "model", "--format", "onnx"],
    "download": ["download", "urls.csv", "--out", "dl"],
}


def _declared() -> dict[str, tuple]:
    return {name: module.REQUIRES for name, module in _command_modules().items() if getattr(module, "REQUIRES", ())}


def _run_hidden(argv: list[str], hidden: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(_HIDE_MODULES, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "TREECLIP_TEST_HIDE": ",".join(hidden)}
    return subprocess.run([sys.executable, "-m", "treeclip", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_every_declared_requirement_has_a_probe_and_a_real_extra() -> None:
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["optional-dependencies"]
    declared = _declared()
    assert set(declared) == set(REQUIREMENT_ARGVS), "add an argv for each command that declares REQUIRES"
    for requirements in declared.values():
        for requirement in requirements:
            assert requirement.extra in extras, requirement
            assert requirement.modules


@pytest.mark.parametrize("command", sorted(REQUIREMENT_ARGVS))
def test_missing_extra_is_one_line_and_exit_2_before_work(command: str, tmp_path: Path) -> None:
    """With the command's optional modules hidden, it stops at start-up: one line naming the extra, exit 2,
    nothing written and torch never imported (the check precedes all work)."""
    hidden = sorted({m for r in _declared()[command] for m in r.modules})
    result = _run_hidden([*REQUIREMENT_ARGVS[command]], [*hidden, "torch"], tmp_path)
    extras = {r.extra for r in _declared()[command]}
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"treeclip {command}: error: needs ")
    assert any(lines[0].endswith(f"pip install 'treeclip[{extra}]'") for extra in extras), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["sitecustomize.py"]


def test_requirement_that_does_not_apply_is_not_checked() -> None:
    from treeclip.cli._options import RAY_ENGINE, missing_requirement  # noqa: PLC0415

    hidden_local = argparse.Namespace(engine="local")
    assert missing_requirement([RAY_ENGINE], hidden_local) is None
    missing = Requirement("serve", ("no_such_module_xyz",))
    assert missing_requirement([missing], hidden_local) == (
        "needs no_such_module_xyz, which is not installed: pip install 'treeclip[serve]'")


def test_uncached_hub_model_offline_is_one_line_before_torch(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from treeclip.cli._options import check_hub_model  # noqa: PLC0415
    from treeclip.errors import UsageError  # noqa: PLC0415

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        check_hub_model("hf-hub:imageomics/bioclip-2")
    (tmp_path / "models--imageomics--bioclip-2" / "snapshots" / "abc").mkdir(parents=True)
    check_hub_model("hf-hub:imageomics/bioclip-2")  # cached: no network needed
    check_hub_model(str(tmp_path))  # a folder is never checked against the hub


# ---------------------------------------------------------------- user mistakes answered before torch loads

# argv -> what the one line must say. torch is hidden, so a command that imports it before checking fails with a
# traceback (exit 1) instead of the one line and exit 2.
USAGE_MISTAKES: dict[str, tuple[list[str], str]] = {
    "train-preset": (["train", "--preset", "nope", "--data", ".", "--out", "run"], "--preset nope: unknown preset"),
    "train-data": (["train", "--preset", "tiny", "--data", "missing", "--out", "run"], "--data missing: no such folder"),
    "eval-folder": (["eval", "--model", "m", "--task", "rare:missing", "--out", "rep"], "missing/metadata.csv not found"),
    "eval-task": (["eval", "--model", "m", "--task", "nope:x", "--out", "rep"], "nope:x"),
    "eval-shots": (["eval", "--model", "m", "--task", "rare:missing", "--shots", "a", "--out", "rep"], "--shots 'a'"),
    "predict-image": (["predict", "missing.jpg", "--model", "m"], "image input not found: missing.jpg"),
    "embed-image": (["embed", "missing.jpg", "--model", "m", "-o", "e.parquet"], "image input not found: missing.jpg"),
    "bank-taxonomy": (["bank", "build", "--taxonomy", "missing.csv", "--model", "m", "--out", "b"],
                      "taxonomy file not found: missing.csv"),
    "bank-hub-offline": (["bank", "build", "--taxonomy", "taxa.csv", "--model", "hf-hub:org/none", "--out", "b"],
                         "--model hf-hub:org/none: not in the local Hugging Face cache"),
    "serve-hub-offline": (["serve", "--model", "hf-hub:org/none"], "--model hf-hub:org/none: not in the local Hugging"),
    "predict-hub-offline": (["predict", "sitecustomize.py"],
                            "--model hf-hub:imageomics/bioclip-2: not in the local Hugging Face cache and "
                            "HF_HUB_OFFLINE is set"),
}


@pytest.mark.parametrize("case", sorted(USAGE_MISTAKES))
def test_usage_mistake_is_one_line_exit_2_before_torch(case: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    argv, expected = USAGE_MISTAKES[case]
    (tmp_path / "taxa.csv").write_text("genus,species\nCorvus,Corvus corax\n", encoding="utf-8")
    result = _run_hidden(argv, ["torch"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"treeclip {argv[0]}: error: ") and expected in lines[0], lines[0]


def test_startup_default_model_is_the_model_layers_default() -> None:
    from treeclip.cli._options import DEFAULT_MODEL  # noqa: PLC0415
    from treeclip.model.bank import DEFAULT_MODEL as MODEL_DEFAULT  # noqa: PLC0415

    assert DEFAULT_MODEL == MODEL_DEFAULT


def test_piped_progress_is_plain_periodic_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from treeclip.cli._progress import PlainProgress, progress  # noqa: PLC0415

    assert isinstance(progress(total=3, unit="taxa", label="treeclip x"), PlainProgress)  # capsys: not a tty
    with PlainProgress(total=4, initial=1, unit="images", label="treeclip predict", interval_s=0) as bar:
        bar.update(2)
        bar.update(1)
        bar.close()
    assert capsys.readouterr().err == "treeclip predict: 3/4 images (75%)\ntreeclip predict: 4/4 images (100%)\n"
    with PlainProgress(total=None, initial=0, unit="images", label="treeclip x", interval_s=3600) as bar:
        bar.update(5)  # within the interval: nothing until the end
    assert capsys.readouterr().err == "treeclip x: 5 images\n"
