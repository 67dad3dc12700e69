"""Predict's decoding in worker processes: the same batches as the threads, bit for bit, and no workers left."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.errors import UsageError
from treeclip.model import create_model
from treeclip.model.preprocess import reference_squash
from treeclip.predict import runner
from treeclip.predict.runner import PROCESS_MIN_BATCHES, THREADS_SCALE_TO, decoded_batches, use_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux")


IMPORTED_AS = "imported"  # set otherwise by a test: a forked worker inherits the change, a spawned one imports


class PidRecorder:
    """The wrapped transform, leaving a file named after each process it runs in (and `IMPORTED_AS` there)."""

    def __init__(self, transform, folder: Path) -> None:
        self.transform, self.folder = transform, folder

    def __call__(self, image: Image.Image) -> torch.Tensor:
        (self.folder / f"{os.getpid()}-{IMPORTED_AS}").touch()
        return self.transform(image)


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.integers(-8, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(small, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def _items(folder: Path) -> list:
    """Readable JPEGs (some large enough for draft mode), a PNG and in-memory images, with broken files between
    them, one batch of 3 (at batch size 3) holding only broken ones."""
    folder.mkdir()
    items: list = []
    for index in range(13):
        path = folder / f"photo{index:02d}.jpg"
        _photo(index, (400, 300) if index % 3 == 0 else (48, 36)).save(path, quality=90)
        items.append(str(path))
    _photo(50, (40, 40)).save(folder / "plain.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image\n")
    data = (folder / "photo00.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 4])
    broken = [str(folder / name) for name in ("empty.jpg", "notes.jpg", "truncated.jpg")]
    return [*items[:3], *broken, str(folder / "plain.png"), _photo(60, (50, 30)), *items[3:8], broken[0],
            _photo(61, (30, 50)).convert("L"), *items[8:]]


def _decode(items: list, preprocess, decoder: str, *, workers: int = 2, draft_size: int | None = 64) -> list:
    names = [f"n{index}" for index in range(len(items))]
    return list(decoded_batches(items, names, preprocess=preprocess, batch_size=3, workers=workers,
                                draft_size=draft_size, decoder=decoder))


@pytest.fixture(scope="module")
def open_clip_preprocess():
    return create_model("treeclip-test")[2]


def _assert_same(threads: list, processes: list) -> None:
    assert len(threads) == len(processes)
    for left, right in zip(threads, processes, strict=True):
        assert left.names == right.names and left.errors == right.errors
        if left.pixels is None:
            assert right.pixels is None
        else:
            assert right.pixels.dtype == left.pixels.dtype and torch.equal(left.pixels, right.pixels)


@pytest.mark.parametrize("family", ["open_clip", "bioclip"])
def test_processes_give_the_threads_batches_bit_for_bit(family: str, open_clip_preprocess, tmp_path: Path) -> None:
    """Catches batches out of order, names shifted against pixels, error rows lost or moved, the draft size or
    the transform not reaching the workers, and a silent fall-back to threads."""
    items = _items(tmp_path / "images")
    if family == "open_clip":
        transform, draft = open_clip_preprocess, 64
    else:
        transform, draft = reference_squash((32, 32), {"mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28)}), None
    pids = tmp_path / "pids"
    pids.mkdir()
    threads = _decode(items, transform, "threads", draft_size=draft)
    processes = _decode(items, PidRecorder(transform, pids), "processes", draft_size=draft)
    _assert_same(threads, processes)
    workers = {int(path.name.split("-")[0]) for path in pids.iterdir()}
    assert len(workers) == 2 and os.getpid() not in workers
    errors = [error for batch in processes for error in batch.errors]
    assert [name for name, _ in errors] == ["n3", "n4", "n5", "n13"]
    assert "empty" in errors[0][1] and "not an image" in errors[1][1] and "truncated" in errors[2][1]
    assert processes[0].pixels is not None and processes[1].pixels is None  # a batch of broken files only
    assert sum(len(batch.names) for batch in processes) == len(items) - 4


def test_spawned_workers_get_pickled_items_and_transform(open_clip_preprocess, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Off Linux the workers are spawned: the paths, the in-memory PIL images and the transform travel
    pickled, and the batches still equal the threads'. Catches an unpicklable dataset or worker set-up."""
    monkeypatch.setattr(runner, "START_METHOD", "spawn")
    monkeypatch.setattr(sys.modules[__name__], "IMPORTED_AS", "inherited")
    items, pids = _items(tmp_path / "images"), tmp_path / "pids"
    pids.mkdir()
    _assert_same(_decode(items, open_clip_preprocess, "threads", workers=1),
                 _decode(items, PidRecorder(open_clip_preprocess, pids), "processes", workers=1))
    (marker,) = [path.name for path in pids.iterdir()]
    assert marker.endswith("-imported") and int(marker.split("-")[0]) != os.getpid()


def test_draft_mode_changes_pixels(open_clip_preprocess, tmp_path: Path) -> None:
    """The equality above means something only if the draft size matters: large JPEGs decode differently."""
    items = _items(tmp_path / "images")
    full = _decode(items, open_clip_preprocess, "processes", draft_size=None)
    draft = _decode(items, open_clip_preprocess, "processes", draft_size=64)
    assert not torch.equal(full[0].pixels, draft[0].pixels)


def test_auto_chooses_processes_only_for_enough_batches() -> None:
    """Catches forking for a short run (start-up dwarfs it) or for few workers (threads are cheaper there), and
    an unknown decoder accepted silently."""
    batch = 32
    assert not use_processes("auto", images=1, batch_size=batch, workers=2)
    enough = (PROCESS_MIN_BATCHES - 1) * batch + 1
    assert not use_processes("auto", images=enough - 1, batch_size=batch, workers=16)
    assert use_processes("auto", images=enough, batch_size=batch, workers=16)
    assert use_processes("auto", images=enough, batch_size=batch, workers=THREADS_SCALE_TO + 1)
    assert not use_processes("auto", images=10_000, batch_size=batch, workers=THREADS_SCALE_TO)
    assert use_processes("processes", images=1, batch_size=batch, workers=1)
    assert not use_processes("threads", images=10_000, batch_size=batch, workers=8)
    with pytest.raises(UsageError, match="--decode"):
        use_processes("fork", images=1, batch_size=batch, workers=1)


def test_auto_keeps_threads_when_shared_memory_is_too_small(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A container's 64 MB /dev/shm cannot hold 16 workers' batches of 256 (a worker would die of a bus error):
    auto says so and stays with threads; an explicit request for processes is kept."""
    monkeypatch.setattr(runner, "_shared_memory_free", lambda: 64 << 20)
    options = {"images": 100_000, "batch_size": 256, "workers": 16}
    with caplog.at_level("WARNING", logger="treeclip.predict.runner"):
        assert not use_processes("auto", **options)
    assert "/dev/shm has 64 MB free" in caplog.text and "--shm-size" in caplog.text
    assert use_processes("processes", **options)
    monkeypatch.setattr(runner, "_shared_memory_free", lambda: 64 << 30)
    assert use_processes("auto", **options)


def test_empty_input_starts_no_workers(open_clip_preprocess) -> None:
    assert list(decoded_batches([], [], preprocess=open_clip_preprocess, batch_size=4, workers=2,
                                decoder="processes")) == []
    assert multiprocessing.active_children() == []


def test_abandoned_iteration_reaps_its_workers(open_clip_preprocess, tmp_path: Path) -> None:
    """A consumer that stops early (Ctrl-C in its loop, an exception, a break) must not leave workers running
    or unreaped."""
    items = _items(tmp_path / "images") * 8
    batches = decoded_batches(items, [str(i) for i in range(len(items))], preprocess=open_clip_preprocess,
                              batch_size=3, workers=2, decoder="processes")
    next(batches)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    batches.close()
    assert multiprocessing.active_children() == []
    assert all(worker.exitcode is not None for worker in workers)
    for worker in workers:
        with pytest.raises(ChildProcessError):
            os.waitpid(worker.pid, os.WNOHANG)  # already reaped: no zombie left


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode_cli")
    model_dir = export_tiny_model(root / "model")
    tiny_bank(model_dir, random_taxa(20), root / "bank")
    folder = root / "images"
    folder.mkdir()
    for index in range(400):
        _photo(index, (64, 48)).save(folder / f"img{index:03d}.jpg", quality=90)
    (folder / "zz_broken.jpg").write_text("not an image\n")
    return {"model": model_dir, "bank": root / "bank", "images": folder}


def _predict_command(setup: dict, out: Path, decode: str, batch: int = 4) -> list[str]:
    return [sys.executable, "-m", "treeclip", "predict", str(setup["images"]), "--model", str(setup["model"]),
            "--bank", str(setup["bank"]), "--k", "2", "--batch-size", str(batch), "--workers", "2",
            "--decode", decode, "--output", str(out)]


def test_cli_rows_equal_across_decoders(cli_setup: dict, tmp_path: Path) -> None:
    """The command's output is the same file with either decoder, the broken image's row included."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = []
    for decode in ("threads", "processes"):
        out = tmp_path / f"{decode}.csv"
        done = subprocess.run(_predict_command(cli_setup, out, decode, batch=32), capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 1, done.stderr  # one unreadable image
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    rows = list(csv.DictReader(io.StringIO(outputs[1])))
    assert sum(row["file_name"].endswith("zz_broken.jpg") for row in rows) == 1


def _children(pid: int) -> set[int]:
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _default_sigint() -> None:
    """A job started in the background by a non-interactive shell (nohup, ``cmd &``) inherits SIGINT ignored,
    and Python then never installs its Ctrl-C handler: give the command the disposition a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGTERM, 143, "terminated"),
                                                      (signal.SIGINT, 130, "interrupted"), (signal.SIGKILL, -9, "")])
def test_signals_leave_no_workers(cli_setup: dict, tmp_path: Path, signum: int, code: int, line: str) -> None:
    """SIGTERM (a service manager) or Ctrl-C (the terminal signals the whole group, workers included): the
    command exits with its usual line and code, no traceback from a worker, and no worker outlives it. SIGKILL
    to the main process alone: the orphaned workers notice and exit (torch's watchdog, within ~5 s)."""
    out = tmp_path / "pred.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    many = tmp_path / "many"  # far more work than the signal needs, so the run can never finish before it
    many.mkdir()
    photos = sorted(cli_setup["images"].glob("img*.jpg"))
    for index in range(10_000):
        (many / f"{index:05d}.jpg").symlink_to(photos[index % len(photos)])
    process = subprocess.Popen(_predict_command({**cli_setup, "images": many}, out, "processes", batch=1),
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                               preexec_fn=_default_sigint)
    deadline, workers = time.monotonic() + 120, set()
    while time.monotonic() < deadline and process.poll() is None:
        workers |= _children(process.pid)
        if len(workers) >= 2 and out.is_file() and out.read_text().count("\n") > 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read()
    if signum == signal.SIGKILL:
        process.kill()
    else:
        os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    if signum != signal.SIGKILL:  # after a SIGKILL a worker's fd-passing thread may print its reset connection
        assert line in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert len(workers) >= 2 and not any(_alive(pid) for pid in workers)


def test_benchmark_runs_and_compares_the_decoders(tmp_path: Path) -> None:
    """benchmarks/predict_decode.py still runs against the runner's API, and every configuration's pixels and
    predict's scores agree across decoders (a 'False' there is a decoder bug the benchmark would publish)."""
    script = Path(__file__).parents[1] / "benchmarks" / "predict_decode.py"
    done = subprocess.run([sys.executable, str(script), "--images", "24", "--batch", "8", "--repeats", "1",
                           "--model", "treeclip-test", "--e2e-model", "treeclip-test"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| (threads|processes) \| \d+ \|", line)]
    assert len(rows) == 4 and all(row.endswith("| True |") for row in rows)
    assert sum(bool(re.match(r"\| (threads|processes) \| [\d.,]+ \| [\d.,]+ \| [\d.]+x \|$", line))
               for line in done.stdout.splitlines()) == 2  # beside a busy Python thread
    predicted = [line for line in done.stdout.splitlines() if line.startswith(("| 8 |", "| 16 |", "| 24 |"))]
    assert len(predicted) == 3 and all(row.endswith("| True |") for row in predicted)


_WORKER_CLEANING_UP = """
import sys, time
from treeclip.predict.runner import _stop_like_ctrl_c
_stop_like_ctrl_c(0)
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
time.sleep(60)  # still cleaning up when the DataLoader's shutdown sends SIGTERM again
"""


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_second_sigterm_ends_a_decoding_worker_without_a_traceback(first: int) -> None:
    """The first signal is an interrupt the worker loop catches; the DataLoader's terminate() of a worker still
    exiting must then end it quietly (it raised KeyboardInterrupt in multiprocessing's clean-up and printed a
    traceback, seen once in the CLI signal test under load)."""
    process = subprocess.Popen([sys.executable, "-c", _WORKER_CLEANING_UP], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(first)
    assert process.stdout.readline().strip() == "interrupted"
    process.send_signal(signal.SIGINT)  # the terminal's Ctrl-C again: left to the main process
    time.sleep(0.2)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM and "Traceback" not in stderr, stderr
