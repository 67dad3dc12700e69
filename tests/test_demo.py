"""`treeclip demo --quick` end to end at tiny size with two training seeds: the report holds every section,
the summary holds the numbers with intervals, versions and absolute paths, a re-run reuses every finished step
and reports its original cost, and a folder holding something else is refused. The findings logic itself is
tested on made-up numbers in test_demo_findings.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from treeclip.cli import main
from treeclip.demo.pipeline import SETTINGS_FILE

TINY = ["--quick", "--species", "30", "--images-per-species", "10", "--epochs", "1", "--train-seeds", "0,1",
        "--no-progress"]
SECTIONS = ("## What this run shows", "## Findings", "## Which model won each metric", "## Details of training seed 0",
            "### Open variant", "### Seen species", "### Few-shot and hierarchy metrics", "## Training loss",
            "## t-SNE", "Quick mode", "## Run", "What the demo model can identify")
VERDICTS = ("PASS", "not shown", "FAIL")
MODELS = ("mixed", "com", "taxon", "untrained")
TEST_TYPES = ("taxon_com", "sci", "com", "taxon", "sci_com")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    return out


def _is_fraction(value: object) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0 and not math.isnan(value)


def test_report_has_every_section_and_plots(demo: Path) -> None:
    out = demo
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert heading in report, heading
    for model in MODELS:
        assert f"| {model} |" in report
    plots = sorted((out / "plots").glob("tsne_*.png"))
    assert {p.name.split("_")[1] for p in plots} == {"mixed", "untrained"}
    for plot in [*plots, out / "plots" / "training_loss.png"]:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{plot.name})" in report
    assert sum(report.count(f"\n- **{v}**") for v in VERDICTS) == 9
    assert "over the 2 training seeds" in report
    ranks = report.split("taxa per rank: ")[1].split(".")[0]
    assert [part.split()[0] for part in ranks.split(", ")] == ["kingdom", "phylum", "class", "order", "family",
                                                               "genus", "species"]


def test_summary_holds_the_numbers(demo: Path) -> None:
    out = demo
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert data["world"]["species"]["seen"] + data["world"]["species"]["unseen"] == 30
    assert data["chance"]["unseen"] == pytest.approx(1 / data["tasks"]["unseen"]["classes"])
    for task in ("unseen", "seen"):
        for model in MODELS:
            assert set(data["zero_shot"][task][model]) == set(TEST_TYPES)
            assert all(_is_fraction(v) for v in data["zero_shot"][task][model].values())
    for model in MODELS:
        assert _is_fraction(data["open_rank_accuracy"][model]["species"])
        assert _is_fraction(data["open_rank_accuracy"][model]["genus"])
        assert data["open_rank_accuracy"][model]["genus"] >= data["open_rank_accuracy"][model]["species"]
        assert set(data["few_shot"][model]) == {"1", "5"}
        assert set(data["hierarchy"][model]) == {"distance_spearman", "mistake_severity"}
    findings = data["findings"]
    assert len(findings) == 9 and all(f["verdict"] in VERDICTS for f in findings)
    for f in findings:
        low, point, high = f["difference"]["low"], f["difference"]["point"], f["difference"]["high"]
        assert low <= point <= high or math.isnan(point)
    assert sum(data["verdicts"].values()) == 9
    assert {(r["text_type"], r["seed"]) for r in data["runs"].values()} == {
        (t, s) for t in ("mixed", "com", "taxon") for s in (0, 1)}
    assert data["versions"]["torch"] and data["versions"]["python"]
    assert Path(data["out"]).is_absolute() and Path(data["artifacts"]["model"]).is_absolute()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in [*data["plots"], data["loss_plot"]])
    assert {row["winner"] for row in data["winners"]} <= set(MODELS)


def test_model_and_bank_are_usable(demo: Path) -> None:
    from treeclip.model import is_hub_dir
    from treeclip.model.bank import load_bank

    out = demo
    assert is_hub_dir(out / "model")
    bank = load_bank(out / "bank")
    assert len(bank.lineages) == 30  # every species, the unseen ones included
    assert bank.meta["text_type"] == "taxon_com"


def test_rerun_reuses_finished_steps(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = demo
    mtime = (out / "runs" / "seed0" / "mixed" / "config.yaml").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    reused = [line for line in printed.splitlines() if line.startswith("[demo]") and " reused " in line]
    names = {line[len("[demo] "):].split(" reused ")[0].strip() for line in reused}
    assert {"world", "shards", *(f"train {m} seed {s}" for m in ("mixed", "com", "taxon") for s in (0, 1))} <= names
    assert all("originally" in line for line in reused), reused
    assert "reused from an earlier run: world, shards" in printed
    assert (out / "runs" / "seed0" / "mixed" / "config.yaml").stat().st_mtime_ns == mtime
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "train mixed seed 0: reused (originally " in report


def test_other_settings_or_foreign_folder_are_refused(demo: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = demo
    assert main(["demo", "--out", str(out), "--quick", "--species", "31", "--no-progress"]) == 2
    assert "--fresh" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["demo", "--out", str(foreign), "--quick", "--no-progress"]) == 2
    assert (foreign / "notes.txt").is_file() and not (foreign / SETTINGS_FILE).exists()


def test_out_that_is_a_file_is_refused_before_torch_loads(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("mine", encoding="utf-8")
    probe = ("import sys\nfrom treeclip.cli import main\n"
             f"code = main(['demo', '--out', {str(target)!r}])\nprint(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.strip().splitlines() == [f"treeclip demo: error: --out {target}: is a file; give a folder "
                                                  "(new, empty, or an earlier demo's)"]
    assert target.read_text(encoding="utf-8") == "mine"


def test_rerun_after_a_failed_step_redoes_only_that_step(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A training run killed before its final checkpoint (leaving a writer's temporary file) is redone; every
    other finished step is reused and the report is rewritten."""
    from treeclip.atomic import temp_path
    from treeclip.train.checkpoint import list_checkpoints

    run = demo / "runs" / "seed1" / "taxon"
    final = list_checkpoints(run)[-1]
    final.unlink()
    temp_path(final).write_bytes(b"torn checkpoint")  # what a killed writer leaves behind
    capsys.readouterr()
    assert main(["demo", "--out", str(demo), *TINY]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[demo] train")]
    redone = [line for line in lines if " done " in line]
    assert len(redone) == 1 and redone[0].startswith("[demo] train taxon seed 1 "), lines
    assert final.is_file()
