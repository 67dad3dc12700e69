"""`treeclip demo --quick` end to end at tiny size: the report holds every section, the summary holds the
numbers, a re-run reuses every finished step, and a folder holding something else is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from treeclip.cli import main
from treeclip.demo.pipeline import SETTINGS_FILE

TINY = ["--quick", "--species", "30", "--images-per-species", "10", "--epochs", "2", "--no-progress"]
SECTIONS = ("## Findings", "## 1. Zero-shot on unseen species", "### Open variant",
            "## 2. Text-type grid", "## 3. Few-shot and hierarchy metrics against the untrained model",
            "## 4. t-SNE", "Quick mode")
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
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{plot.name})" in report
    assert report.count("\n- **PASS**") + report.count("\n- **FAIL**") == 6


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
        assert "distance_spearman" in data["hierarchy"][model]["unseen"]
    findings = data["findings"]
    assert len(findings) == 6 and all(isinstance(f["passed"], bool) for f in findings)
    assert data["all_passed"] == all(f["passed"] for f in findings)
    assert {r["text_type"] for r in data["runs"].values()} == {"mixed", "com", "taxon"}


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
    mtime = (out / "runs" / "mixed" / "config.yaml").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *TINY]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[demo]")]
    reused = {line.split()[1] + (" " + line.split()[2] if line.split()[1] == "train" else "")
              for line in lines if " reused " in line}
    assert {"world", "shards", "train mixed", "train com", "train taxon"} <= reused
    assert (out / "runs" / "mixed" / "config.yaml").stat().st_mtime_ns == mtime
    assert (out / "report.md").is_file()


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
