"""Reliability: hostile checkpoints and images, output locks, crash-safe resume and CSV escaping (issue 14).

Each test reproduces one failure seen when treeclip was attacked; benchmarks/chaos.py runs the long versions
(random SIGKILLs, concurrent writers, hostile HTTP) and reports the figures in docs/reliability.md.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from treeclip.atomic import OutputLock, atomic_write, lock_path
from treeclip.data.images import ImageError, decode_image, resize
from treeclip.errors import UsageError
from treeclip.predict import writers
from treeclip.predict.writers import RowWriter
from treeclip.train.checkpoint import capture_rng, restore_rng

COLUMNS = ["file_name", "species", "common_name", "score"]
IMAGES = 80  # for the subprocess tests: enough batches of 1 to stop a run half-way
CRAFTED = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"model": {}, "config": {"model": {"name": "treeclip-test"}}, "rng": Payload()}, sys.argv[1])
"""


def _rows(name: str, k: int = 3, common: str = "oak") -> list[dict]:
    return [{"file_name": name, "species": f"sp{i}", "common_name": common, "score": 1 / (i + 2)} for i in range(k)]


def _write(path: Path, fmt: str, batches: list[list[dict]]) -> RowWriter:
    writer = RowWriter(path, fmt=fmt, columns=COLUMNS)
    for batch in batches:
        writer.write(batch)
    return writer


def _read(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


# ---------------------------------------------------------------- checkpoints never run code


def test_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    crafted, marker = tmp_path / "crafted.pt", tmp_path / "marker"
    subprocess.run([sys.executable, "-c", CRAFTED, str(crafted), str(marker)], check=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    done = subprocess.run([sys.executable, "-m", "treeclip", "predict", "--model", str(crafted),
                           "--labels", "oak", "ash", "--", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing checkpoint" in lines[0] and "posix.system" in lines[0]


def test_trainer_rng_states_load_tensors_only_and_restore(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians in both states
    state = capture_rng(torch.device("cpu"))
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0], torch.device("cpu"))
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist()) == expected


# ---------------------------------------------------------------- images: bounded resize output


@pytest.mark.parametrize("size", [(65000, 1), (4000, 1), (1, 4000)])
def test_elongated_images_are_refused_before_decoding(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "strip.png"
    Image.new("RGB", size).save(path)
    assert path.stat().st_size < 2000
    with pytest.raises(ImageError, match="too elongated"):
        decode_image(path)
    with pytest.raises(ImageError, match="too elongated"):
        resize(Image.new("RGB", size), 224, mode="shorter")


def test_ordinary_panoramas_still_decode(tmp_path: Path) -> None:
    Image.new("RGB", (1000, 100)).save(tmp_path / "pano.png")
    assert decode_image(tmp_path / "pano.png").size == (1000, 100)


# ---------------------------------------------------------------- outputs: one writer at a time


@pytest.mark.parametrize("fmt", writers.FORMATS)
def test_second_writer_is_refused(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    first = _write(out, fmt, [_rows("a.jpg")])
    with pytest.raises(UsageError, match="being written by another process"):
        RowWriter(out, fmt=fmt, columns=COLUMNS)
    first.write(_rows("b.jpg"))
    first.close()
    with RowWriter(out, fmt=fmt, columns=COLUMNS) as again:
        assert again.done == {"a.jpg", "b.jpg"}


def test_lock_is_released_and_reports_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    with OutputLock(out):
        with pytest.raises(UsageError, match=r"--output .*x.csv is being written by another process \(pid \d+\)"):
            OutputLock(out)
    OutputLock(out).release()
    assert lock_path(out).exists()


# ---------------------------------------------------------------- outputs: crash-safe resume


def test_parquet_kill_between_merge_and_cleanup_duplicates_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.parquet"
    writer = _write(out, "parquet", [_rows("a.jpg"), _rows("b.jpg")])
    monkeypatch.setattr(writers.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        writer.close()  # killed after OUTPUT was renamed in, before the parts were removed
    monkeypatch.undo()
    with RowWriter(out, fmt="parquet", columns=COLUMNS) as resumed:
        assert resumed.done == {"a.jpg", "b.jpg"}
        resumed.write(_rows("c.jpg"))
    names = [row["file_name"] for row in _read(out, "parquet")]
    assert sorted(names) == ["a.jpg"] * 3 + ["b.jpg"] * 3 + ["c.jpg"] * 3


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "dwc"])
def test_resume_keeps_the_last_complete_batch(tmp_path: Path, fmt: str) -> None:
    """A finished batch is never re-scored (a re-score changes the last digits of its scores)."""
    out = tmp_path / f"out.{fmt}"
    _write(out, fmt, [_rows("a.jpg"), _rows("b.jpg")]).close()
    before = out.read_bytes()
    with RowWriter(out, fmt=fmt, columns=COLUMNS) as resumed:
        assert resumed.done == {"a.jpg", "b.jpg"}
    assert out.read_bytes() == before


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_cuts_an_unfinished_batch_back_to_the_last_complete_one(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    writer = _write(out, fmt, [_rows("a.jpg")])
    complete = out.read_bytes()
    writer._stream.write(json.dumps(_rows("b.jpg")[0]) + "\n" if fmt == "jsonl" else 'b.jpg,sp0,oak,0.5\r\nb.j')
    writer._stream.flush()
    writer._lock.release()  # killed: the second batch was half written
    with RowWriter(out, fmt=fmt, columns=COLUMNS) as resumed:
        assert resumed.done == {"a.jpg"}
    assert out.read_bytes() == complete


def test_torn_quoted_newline_drops_the_incomplete_image(tmp_path: Path) -> None:
    """Without the lock file's record (e.g. an older output), the repair parses records, not lines."""
    out = tmp_path / "out.csv"
    _write(out, "csv", [_rows("a\nb.jpg"), _rows("c\nd.jpg")]).close()
    data = out.read_bytes()
    cut = data.rfind(b"c\nd.jpg") + 2  # inside the quoted name of the last image's last row
    out.write_bytes(data[:cut])
    lock_path(out).unlink()
    with RowWriter(out, fmt="csv", columns=COLUMNS) as resumed:
        assert resumed.done == {"a\nb.jpg"}
    assert [row["file_name"] for row in _read(out, "csv")] == ["a\nb.jpg"] * 3


def test_lone_carriage_return_is_quoted_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _write(out, "csv", [_rows("a\rb.jpg"), _rows("c.jpg")]).close()
    with RowWriter(out, fmt="csv", columns=COLUMNS) as resumed:
        assert resumed.done == {"a\rb.jpg", "c.jpg"}
        resumed.write(_rows("d.jpg"))
    assert [row["file_name"] for row in _read(out, "csv")][::3] == ["a\rb.jpg", "c.jpg", "d.jpg"]


@pytest.mark.parametrize("fmt", ["csv", "dwc"])
def test_formula_values_are_escaped_and_read_back(tmp_path: Path, fmt: str) -> None:
    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "'=already"]
    out = tmp_path / f"out.{fmt}"
    _write(out, fmt, [_rows(name, k=1, common=name) for name in hostile]).close()
    cells = [cell for row in csv.reader(io.StringIO(out.read_bytes().decode("utf-8"), newline=""))
             for cell in row]
    assert not any(cell.startswith(writers.FORMULA_START) for cell in cells)
    assert "'=cmd|' /C calc'!A0" in cells and "''=already" in cells
    lock_path(out).unlink()  # force the record-parsing path
    with RowWriter(out, fmt=fmt, columns=COLUMNS) as resumed:
        assert resumed.done == set(hostile[:-1])  # the last image's rows are dropped without the record


def test_plain_apostrophes_are_not_escaped(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _write(out, "csv", [_rows("'akepa.jpg", k=1)]).close()
    assert "'akepa.jpg" in out.read_text() and "''akepa" not in out.read_text()


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_resume_during_a_build_is_refused_before_touching_files(tmp_path: Path) -> None:
    from treeclip.data.build import build_dataset

    (tmp_path / "src").mkdir()
    out = tmp_path / "out"
    (out / ".build" / "journal").mkdir(parents=True)
    (out / "train").mkdir()
    in_flight = out / "train" / ".shard-000000.tar.123.tmp"
    in_flight.write_bytes(b"being written")
    with OutputLock(out, option="--out", lock_file=out / ".build" / "lock"):  # the running build
        with pytest.raises(UsageError, match="--out .* is being written by another process"):
            build_dataset(sources=[f"folder:{tmp_path / 'src'}"], out=out, resume=True)
    assert in_flight.read_bytes() == b"being written"


# ---------------------------------------------------------------- processes: SIGTERM and two writers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank  # noqa: PLC0415

    root = tmp_path_factory.mktemp("world")
    model = export_tiny_model(root / "model")
    tiny_bank(model, random_taxa(30), root / "bank")
    images = root / "images"
    images.mkdir()
    for i in range(IMAGES):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")
    return {"model": model, "bank": root / "bank", "images": images}


def _predict(world: dict[str, Path], out: Path, fmt: str = "csv") -> list[str]:
    return [sys.executable, "-m", "treeclip", "predict", str(world["images"]), "--model", str(world["model"]),
            "--bank", str(world["bank"]), "--k", "2", "--batch-size", "1", "--workers", "1", "--format", fmt,
            "--output", str(out)]


def _started(process: subprocess.Popen, out: Path) -> None:
    """Wait until `process` has written a few batches."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.stat().st_size > 400:
            return
        time.sleep(0.02)


def test_sigterm_exits_cleanly_and_the_output_resumes(world: dict[str, Path], tmp_path: Path) -> None:
    import signal  # noqa: PLC0415

    out = tmp_path / "pred.csv"
    process = subprocess.Popen(_predict(world, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _started(process, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "treeclip predict: terminated (SIGTERM)"
    assert "Traceback" not in stderr and "leaked" not in stderr
    subprocess.run(_predict(world, out), check=True, capture_output=True, timeout=300)
    names = [row["file_name"] for row in _read(out, "csv")]
    assert len(names) == 2 * IMAGES and len(set(names)) == IMAGES


def test_two_processes_on_one_output_never_interleave(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    import signal  # noqa: PLC0415

    first = subprocess.Popen(_predict(world, out, "jsonl"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _started(first, out)
    first.send_signal(signal.SIGSTOP)  # a slow writer: the overlap must not depend on the machine's load
    second = subprocess.run(_predict(world, out, "jsonl"), capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and "being written by another process" in second.stderr
    names = [row["file_name"] for row in _read(out, "jsonl")]
    assert len(names) == 2 * IMAGES and len(set(names)) == IMAGES


def test_resumed_training_logs_each_step_once(tmp_path: Path) -> None:
    from treeclip.train.metrics import METRICS_FILE, MetricsWriter, read_metrics  # noqa: PLC0415

    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 11):
        writer.write({"step": step, "loss": 1.0 / step})
    writer.close()
    with open(tmp_path / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"step": 11, "lo')  # killed mid-line after the checkpoint of step 6
    resumed = MetricsWriter(tmp_path, tensorboard=False, resume_step=6)
    for step in range(7, 13):
        resumed.write({"step": step, "loss": 1.0 / step})
    resumed.close()
    assert [record["step"] for record in read_metrics(tmp_path)] == list(range(1, 13))
