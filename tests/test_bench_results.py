"""benchmarks/RESULTS.md: each benchmark rewrites its own marked section and keeps every other one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import TITLE, markers, write_section  # noqa: E402

OTHERS = ("# treeclip benchmark results\n\nA hand-written note.\n\n<!-- runtimes.py: begin -->\n## Runtimes\n\n"
          "| a | b |\n<!-- runtimes.py: end -->\n\n\n<!-- predict_decode.py: begin -->\nthreads\n"
          "<!-- predict_decode.py: end -->\n")


def test_a_section_is_replaced_in_place_and_the_rest_kept_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHERS, encoding="utf-8")
    write_section("run.py", "## Suite\n\nfirst run\n", path)
    appended = path.read_text(encoding="utf-8")
    assert appended.startswith(OTHERS.rstrip("\n")) and appended.endswith("<!-- run.py: end -->\n")
    write_section("run.py", "## Suite\n\nsecond run\n", path)
    text = path.read_text(encoding="utf-8")
    assert "second run" in text and "first run" not in text and text.count(markers("run.py")[0]) == 1
    assert text.replace("second run", "first run") == appended
    write_section("runtimes.py", "## Runtimes\n\nnew figures", path)  # a middle section: the others unmoved
    text = path.read_text(encoding="utf-8")
    assert text.index("A hand-written note") < text.index("new figures") < text.index("threads") < text.index("second")
    assert "| a | b |" not in text


def test_a_new_file_starts_with_the_title(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_section("run.py", "body", path)
    assert path.read_text(encoding="utf-8") == f"{TITLE}\n<!-- run.py: begin -->\nbody\n<!-- run.py: end -->\n"


def test_ambiguous_sections_are_refused_and_the_file_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    doubled = OTHERS + OTHERS.split("\n\n", 2)[2]
    path.write_text(doubled, encoding="utf-8")
    with pytest.raises(ValueError, match="more than once"):
        write_section("runtimes.py", "x", path)
    with pytest.raises(ValueError, match="markers"):
        write_section("run.py", "<!-- run.py: end -->", path)
    assert path.read_text(encoding="utf-8") == doubled


def test_the_suite_keeps_the_other_benchmarks_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m benchmarks` used to rewrite RESULTS.md whole, dropping the runtimes and decoding sections."""
    from benchmarks import run  # noqa: PLC0415 - imports torch and open_clip

    path = tmp_path / "RESULTS.md"
    path.write_text(OTHERS, encoding="utf-8")
    row = run.Row("catalog", "treeclip plan", "dicts", "MB", 10.0, 20.0, "note")
    monkeypatch.setattr(run, "run_suite", lambda sizes, sections: ([row], {"cores": "2"}, ["a note"]))
    assert run.main(["--quick", "--only", "catalog", "--results", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith(OTHERS.rstrip("\n")) and "| catalog | treeclip plan | dicts | MB |" in text
    assert text.count("# treeclip benchmark results") == 1
