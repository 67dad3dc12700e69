"""Chaos: kill treeclip at random points, race two writers, feed it hostile files and HTTP, and count damage.

Every job runs as users run it (``python -m treeclip ...`` in its own process) on a generated world (`treeclip
synth`, a tiny seeded model, its bank), and every interrupted job is resumed and compared with an
uninterrupted run of the same command:

- kills: SIGKILL after a random delay during ``build``, ``bank build``, ``train``, ``predict`` (csv, jsonl,
  parquet, dwc), ``embed`` and ``index``, then the resume command until it finishes; compared by rows
  (lost / duplicated) and by bytes (corrupt: a file that differs from the uninterrupted run's);
- two writers: two ``predict`` runs started on one output (the second must be refused; no row lost or
  interleaved);
- hostile inputs: images (truncated, empty, text, bombs, 65000×1, animated, multi-page, fake HEIC, SVG, CMYK,
  16-bit, palette+alpha), a checkpoint whose pickle runs a command, a YAML config with ``!!python/object``,
  a catalog (paths outside its folder, NUL bytes, a 1 MB line, invalid UTF-8, ``=cmd|...`` names that reach
  a CSV output), a WebDataset tar (``../`` and absolute names, a link, a tar bomb); "executed" counts a
  command that ran, a file read outside its folder or a formula written unescaped;
- HTTP against ``treeclip serve``: malformed multipart, 1,000 files, 100 MB bodies with and without
  Content-Length, a slow body, a huge form field, non-UTF-8 and traversal file names, cross-origin and
  foreign-Host requests, then `--clients` clients for `--seconds` with the server's memory before and after.

The table printed at the end is the one in docs/reliability.md: tried, lost, duplicated, corrupt, executed,
unexpected 5xx (503 with Retry-After is the expected overload answer), memory growth. Any non-zero cell in
the first five damage columns is a defect.

Usage: ``python benchmarks/chaos.py [--kills 3] [--clients 32] [--seconds 10] [--only predict,http,...]``
(the defaults take a few minutes on a laptop; raise ``--kills`` for a longer hunt).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import server  # noqa: E402

FORMATS = ("csv", "jsonl", "parquet", "dwc")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    tried: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    executed: int = 0
    server_errors: int = 0
    memory_mb: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        memory = "" if self.memory_mb is None else f"{self.memory_mb:+.0f} MB"
        return [self.scenario, str(self.tried), str(self.lost), str(self.duplicated), str(self.corrupt),
                str(self.executed), str(self.server_errors), memory, self.note]


HEADER = ["scenario", "tried", "lost", "duplicated", "corrupt", "executed", "unexpected 5xx", "memory growth",
          "note"]


def treeclip(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "treeclip", *map(str, args)]


def run(command: list[str], *, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)


PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(done.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(done.returncode)")


def run_with_peak(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """`run(command)` and the command's peak resident memory in MB."""
    done = run([sys.executable, "-c", PEAK, *command])
    return done, int(done.stdout.split()[-1]) / 1024


# ---------------------------------------------------------------- the world


def make_world(root: Path, *, species: int, images: int) -> dict[str, Path]:
    from treeclip.model import create_model, export_model  # noqa: PLC0415

    world = root / "world"
    check(run(treeclip("synth", world, "--species", species, "--images-per-species", images, "--image-size", 32,
                       "--holdout", 0, "--no-progress")))
    export_model(create_model("treeclip-test")[0], out_dir=root / "model", model_name="treeclip-test")
    check(run(treeclip("bank", "build", "--taxonomy", world / "taxonomy.csv", "--model", root / "model",
                       "--out", root / "bank", "--templates", "photo", "--text-type", "sci")))
    return {"world": world, "images": world / "images", "model": root / "model", "bank": root / "bank",
            "catalog": world / "catalog.csv", "taxonomy": world / "taxonomy.csv"}


def timed(command: list[str]) -> tuple[float, float]:
    """Run an uninterrupted reference; kills land between a quarter and three quarters of its duration."""
    began = time.monotonic()
    check(run(command))
    took = time.monotonic() - began
    return took / 4, took * 0.75


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(done.args[2:])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


# ---------------------------------------------------------------- kill, resume, compare


Job = Callable[[int], tuple[list[str], list[str], Path]]  # cycle -> (first command, resume command, output)
Compare = Callable[[Path], tuple[int, int, int]]  # output -> (lost, duplicated, corrupt)


def kill_cycles(name: str, job: Job, compare: Compare, *, kills: int, rng: random.Random,
                window: tuple[float, float]) -> Row:
    """`kills` cycles on fresh outputs: start the job, SIGKILL it after a random delay in `window`, run the
    resume command to the end and compare. `tried` counts the kills that landed while the job ran."""
    row = Row(name)
    for cycle in range(kills):
        first, resume, out = job(cycle)
        process = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            process.wait(timeout=rng.uniform(*window))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            row.tried += 1
        check(run(resume))
        lost, duplicated, corrupt = compare(out)
        row.lost, row.duplicated, row.corrupt = row.lost + lost, row.duplicated + duplicated, row.corrupt + corrupt
    return row


def file_digests(folder: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pattern in patterns for p in sorted(folder.glob(pattern))}


def compare_files(reference: dict[str, str], got: dict[str, str]) -> int:
    return sum(got.get(name) != digest for name, digest in reference.items()) + len(set(got) - set(reference))


def shard_keys(folder: Path) -> Counter:
    keys: Counter = Counter()
    for shard in sorted(folder.glob("*/shard-*.tar")):
        with tarfile.open(shard) as tar:
            keys.update({member.name.split(".")[0] for member in tar.getmembers()})
    return keys


def loss_and_duplicates(reference: Counter, got: Counter) -> tuple[int, int]:
    lost = sum(max(0, n - got[key]) for key, n in reference.items())
    duplicated = sum(max(0, n - reference[key]) for key, n in got.items())
    return lost, duplicated


def chaos_build(world: dict[str, Path], root: Path, kills: int, rng: random.Random) -> Row:
    def command(out: Path, *extra: str) -> list[str]:
        return treeclip("build", "--source", f"csv:{world['catalog']}", "--out", out, "--image-size", 32,
                        "--shard-size", 4, *extra)

    reference = root / "build-ref"
    window = timed(command(reference))
    patterns = ("train/*.tar", "val/*.tar", "catalog.parquet")

    def compare(out: Path) -> tuple[int, int, int]:
        lost, duplicated = loss_and_duplicates(shard_keys(reference), shard_keys(out))
        return lost, duplicated, compare_files(file_digests(reference, patterns), file_digests(out, patterns))

    def job(cycle: int) -> tuple[list[str], list[str], Path]:
        out = root / f"build-chaos-{cycle}"
        return command(out), command(out, "--resume"), out

    return kill_cycles("build (SIGKILL + --resume)", job, compare, kills=kills, rng=rng, window=window)


def chaos_bank(world: dict[str, Path], root: Path, kills: int, rng: random.Random) -> Row:
    def command(out: Path, *extra: str) -> list[str]:
        return treeclip("bank", "build", "--taxonomy", world["taxonomy"], "--model", world["model"], "--out", out,
                        "--templates", "openai", "--text-type", "sci", "--batch-size", 64, *extra)

    reference = root / "bank-ref"
    window = timed(command(reference))
    names = Counter(map(json.dumps, json.loads((reference / "txt_emb_species.json").read_text())))

    def compare(out: Path) -> tuple[int, int, int]:
        got = Counter(map(json.dumps, json.loads((out / "txt_emb_species.json").read_text())))
        lost, duplicated = loss_and_duplicates(names, got)
        return lost, duplicated, compare_files(file_digests(reference, ("*.npy",)), file_digests(out, ("*.npy",)))

    def job(cycle: int) -> tuple[list[str], list[str], Path]:
        out = root / f"bank-chaos-{cycle}"
        return command(out), command(out, "--resume"), out

    return kill_cycles("bank build (SIGKILL + --resume)", job, compare, kills=kills, rng=rng, window=window)


def chaos_train(world: dict[str, Path], root: Path, kills: int, rng: random.Random) -> Row:
    import torch  # noqa: PLC0415

    shards = root / "build-ref"
    overrides = ["model.name=treeclip-test", "train.batch_size=8", "train.epochs=3", "checkpoint.every_steps=1",
                 "checkpoint.keep_last=2", "eval.every_steps=0", "log.every_steps=1", "log.tensorboard=false",
                 "data.num_workers=0", "data.shuffle_buffer=8"]

    def command(out: Path, *extra: str) -> list[str]:
        return treeclip("train", "--preset", "tiny", "--data", shards, "--out", out, "--no-progress", *extra,
                        *overrides)

    def final(run_dir: Path) -> dict:
        newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
        return torch.load(newest, map_location="cpu", weights_only=True)

    def steps(run_dir: Path) -> Counter:
        return Counter(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())

    reference = root / "train-ref"
    window = timed(command(reference))
    want, identical = final(reference), []

    def compare(out: Path) -> tuple[int, int, int]:
        got = final(out)
        broken = int(want["step"] != got["step"]) + sum(
            tensor.shape != want["model"][name].shape or not bool(torch.isfinite(tensor).all())
            for name, tensor in got["model"].items())
        identical.append(all(torch.equal(tensor, got["model"][name]) for name, tensor in want["model"].items()))
        return (*loss_and_duplicates(steps(reference), steps(out)), broken)

    def job(cycle: int) -> tuple[list[str], list[str], Path]:
        out = root / f"train-chaos-{cycle}"
        return command(out), command(out, "--resume", "latest"), out

    row = kill_cycles("train (SIGKILL + --resume latest)", job, compare, kills=kills, rng=rng, window=window)
    row.note = (f"lost/duplicated: metrics.jsonl steps; corrupt: final checkpoint at another step, another shape or "
                f"non-finite; final weights bit-identical to the uninterrupted run in {sum(identical)} of "
                f"{len(identical)} (a resume starts the next data pass, so a mid-pass kill changes the batch order)")
    return row


def predict_command(world: dict[str, Path], out: Path, fmt: str) -> list[str]:
    return treeclip("predict", world["images"], "--model", world["model"], "--bank", world["bank"], "--k", 3,
                    "--batch-size", 2, "--workers", 1, "--format", fmt, "--output", out)


def output_rows(path: Path, fmt: str) -> list[tuple]:
    """Every row as a tuple of its text values (sorted by the caller)."""
    if fmt == "parquet":
        return [tuple(str(v) for v in row.values()) for row in pq.read_table(path).to_pylist()]
    if fmt == "jsonl":
        return [tuple(str(v) for v in json.loads(line).values()) for line in path.read_text().splitlines()]
    return [tuple(row) for row in csv.reader(io.StringIO(path.read_bytes().decode("utf-8")))][1:]


def compare_outputs(reference: Path, got: Path, fmt: str) -> tuple[int, int, int]:
    """(lost, duplicated, corrupt) rows: by image name for loss/duplication, exact text for corruption."""
    name = (lambda row: row[10]) if fmt == "dwc" else (lambda row: row[0])
    want, have = output_rows(reference, fmt), output_rows(got, fmt)
    lost, duplicated = loss_and_duplicates(Counter(map(name, want)), Counter(map(name, have)))
    corrupt = sum((Counter(have) - Counter(want)).values()) - duplicated
    return lost, duplicated, max(0, corrupt)


def chaos_predict(world: dict[str, Path], root: Path, kills: int, rng: random.Random) -> list[Row]:
    rows = []
    for fmt in FORMATS:
        reference = root / f"ref.{fmt}"
        window = timed(predict_command(world, reference, fmt))

        def job(cycle: int, fmt: str = fmt) -> tuple[list[str], list[str], Path]:
            out = root / f"chaos-{cycle}.{fmt}"
            return predict_command(world, out, fmt), predict_command(world, out, fmt), out

        rows.append(kill_cycles(f"predict --format {fmt} (SIGKILL + rerun)", job,
                                lambda out, ref=reference, fmt=fmt: compare_outputs(ref, out, fmt),
                                kills=kills, rng=rng, window=window))
    return rows


def chaos_embed_index(world: dict[str, Path], root: Path, kills: int, rng: random.Random) -> list[Row]:
    def embed(out: Path) -> list[str]:
        return treeclip("embed", world["images"], "--model", world["model"], "--output", out, "--batch-size", 2,
                        "--workers", 1)

    reference = root / "emb-ref.parquet"
    window = timed(embed(reference))

    def embed_job(cycle: int) -> tuple[list[str], list[str], Path]:
        out = root / f"emb-chaos-{cycle}.parquet"
        return embed(out), embed(out), out

    rows = [kill_cycles("embed (SIGKILL + rerun)", embed_job, lambda out: compare_outputs(reference, out, "parquet"),
                        kills=kills, rng=rng, window=window)]
    index_ref = root / "index-ref"
    if run(treeclip("index", reference, "--out", root / "index-probe")).returncode != 0:
        return [*rows, Row("index (SIGKILL + rerun)", note="skipped: `treeclip index` needs faiss-cpu")]
    window = timed(treeclip("index", reference, "--out", index_ref))

    def index_job(cycle: int) -> tuple[list[str], list[str], Path]:
        out = root / f"index-chaos-{cycle}"
        return treeclip("index", reference, "--out", out), treeclip("index", reference, "--out", out), out

    def compare(out: Path) -> tuple[int, int, int]:
        return 0, 0, compare_files(file_digests(index_ref, ("*",)), file_digests(out, ("*",)))

    return [*rows, kill_cycles("index (SIGKILL + rerun)", index_job, compare, kills=kills, rng=rng, window=window)]


def two_writers(world: dict[str, Path], root: Path) -> Row:
    """Two `predict` runs on one output, the second started while the first is writing (the first is paused
    meanwhile, so the overlap does not depend on the machine's load): exactly one must be refused, and the
    output must equal an uninterrupted run's."""
    folder = root / "race-images"
    for copy in range(2):
        for image in world["images"].rglob("*.png"):
            target = folder / f"{copy}-{image.parent.name}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    race_world = {**world, "images": folder}
    row = Row("two predict runs on one --output")
    for fmt in FORMATS:
        reference, out = root / f"race-ref.{fmt}", root / f"race.{fmt}"
        check(run(predict_command(race_world, reference, fmt)))
        first = subprocess.Popen(predict_command(race_world, out, fmt), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=ENV)
        _wait_for_rows(out, first)
        first.send_signal(signal.SIGSTOP)  # a slow writer: still holding the output when the second arrives
        second = run(predict_command(race_world, out, fmt))
        first.send_signal(signal.SIGCONT)
        errors = first.communicate(timeout=900)[1] + second.stderr
        exits = sorted([first.returncode, second.returncode])
        row.tried += 1
        if exits != [0, 2] or "another process" not in errors:
            row.corrupt += 1
            row.note = f"not exactly one writer refused ({fmt}: exits {exits})"
        lost, duplicated, corrupt = compare_outputs(reference, out, fmt)
        row.lost, row.duplicated, row.corrupt = row.lost + lost, row.duplicated + duplicated, row.corrupt + corrupt
    return row


def _wait_for_rows(out: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.stat().st_size > 0 or out.with_name(out.name + ".parts").is_dir():
            return
        time.sleep(0.05)


# ---------------------------------------------------------------- hostile inputs


def hostile_images(folder: Path) -> int:
    """Write the hostile image set (plus two good images); returns the number of hostile files."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    good.save(folder / "good.png")
    good.save(folder / "good.jpg", quality=90)
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    Image.new("RGB", (65000, 1)).save(folder / "strip-65000x1.png")
    Image.new("RGB", (4000, 1)).save(folder / "strip-4000x1.png")
    Image.new("1", (30000, 30000)).save(folder / "bomb-30000.png")  # 900 Mpx of 1-bit zeros: a few KB
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "multipage.tif", save_all=True, append_images=frames[1:])
    (folder / "fake.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + os.urandom(64))
    (folder / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>')
    good.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.random.default_rng(1).random((32, 32)) * 65535).astype(np.uint16)).save(folder / "16bit.png")
    palette = good.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette-alpha.png")
    return len(list(folder.iterdir())) - 2


def chaos_hostile_images(world: dict[str, Path], root: Path) -> Row:
    folder = root / "hostile-images"
    hostile = hostile_images(folder)
    out = root / "hostile.jsonl"
    files = sorted(folder.iterdir())

    def predict(*images: Path, output: Path) -> tuple[subprocess.CompletedProcess, float]:
        return run_with_peak(treeclip("predict", *images, "--model", world["model"], "--bank", world["bank"],
                                      "--format", "jsonl", "--output", output, "--k", 1))

    _, baseline = predict(folder / "good.png", output=root / "good.jsonl")
    done, peak = predict(*files, output=out)
    answered = {Path(json.loads(line)["file_name"]).name for line in out.read_text().splitlines()}
    lost = len({p.name for p in files} - answered)
    crashed = int(done.returncode not in (0, 1) or "Traceback" in done.stderr)
    return Row("hostile images through predict", hostile, lost, 0, crashed, memory_mb=peak - baseline,
               note=f"every file answered (rows or an error row); peak RSS {peak:.0f} MB vs {baseline:.0f} MB "
                    "for one good image")


def chaos_hostile_code(world: dict[str, Path], root: Path) -> Row:
    marker = root / "executed-marker"
    crafted = root / "crafted.pt"
    payload = ("import os, torch\nclass P:\n    def __reduce__(self):\n        return (os.system, "
               f"('touch {marker}',))\ntorch.save({{'model': {{}}, 'rng': P()}}, '{crafted}')\n")
    check(run([sys.executable, "-c", payload]))
    refused = 0
    for command in (treeclip("predict", root / "hostile-images" / "good.png", "--model", crafted, "--labels", "a",
                             "b"),
                    treeclip("eval", "--model", crafted, "--task", f"x=synth:{world['world']}:seen", "--out",
                             root / "evil-eval")):
        done = run(command)
        refused += int(done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1)
    config = root / "evil.yaml"
    config.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    done = run(treeclip("train", "--config", config, "--data", root / "build-ref", "--out", root / "evil-run"))
    refused += int(done.returncode == 2)
    return Row("crafted .pt (predict, eval) and !!python YAML (train)", 3, 0, 0, 3 - refused, int(marker.exists()),
               note="refused with one line, exit 2")


def chaos_hostile_table(world: dict[str, Path], root: Path) -> Row:
    """One catalog per hostile trait (paths outside its folder, a NUL byte, a 1 MB line, invalid UTF-8,
    formula names), each beside a good row; each is built, and the formula one is banked and predicted to
    CSV and Darwin Core, where no formula may arrive unescaped."""
    secret = root / "secret.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(secret)
    lineage = "Animalia,Chordata,Aves,Passeriformes,Corvidae,Corvus"
    traits = {"formula": f"ok.png,{lineage},corax,=cmd|' /C calc'!A0\n".encode(),
              "parent path": f"../secret.png,{lineage},corone,x\n".encode(),
              "absolute path": f"{secret},{lineage},frugilegus,x\n".encode(),
              "NUL byte": f"ok.png,{lineage},mon\x00edula,x\n".encode(),
              "1 MB line": f"ok.png,{lineage},{'a' * 1_000_000},x\n".encode(),
              "invalid UTF-8": f"ok.png,{lineage},".encode() + b"\xff\xfeus,x\n"}
    good = f"ok.png,{lineage},cornix,Hooded Crow\n".encode()
    read_outside, crashed, notes = 0, 0, []
    for number, (trait, line) in enumerate(traits.items()):
        folder = root / f"table-{number}"
        folder.mkdir()
        Image.new("RGB", (32, 32), (0, 255, 0)).save(folder / "ok.png")
        (folder / "catalog.csv").write_bytes(b"path,kingdom,phylum,class,order,family,genus,species,common\n"
                                             + good + line)
        shards = root / f"table-shards-{number}"
        done = run(treeclip("build", "--source", f"csv:{folder / 'catalog.csv'}", "--out", shards, "--image-size", 32))
        crashed += int(done.returncode not in (0, 1, 2) or "Traceback" in done.stderr)
        notes.append(f"{trait}: exit {done.returncode}")
        if (shards / "catalog.parquet").is_file():
            table = pq.read_table(shards / "catalog.parquet").to_pydict()
            read_outside += sum("secret" in str(p) for p in table.get("path", []) + table.get("source_id", []))
    formulas = _formulas_in_outputs(world, root, root / "table-0" / "catalog.csv")
    return Row("hostile catalogs (build; formula names through bank to predict csv/dwc)", len(traits), 0, 0,
               crashed, read_outside + formulas,
               note="executed = images read outside the catalog's folder + formulas written unescaped; "
                    + ", ".join(notes))


def _formulas_in_outputs(world: dict[str, Path], root: Path, catalog: Path) -> int:
    """Formula cells that reach CSV and Darwin Core predictions through a bank built from `catalog`."""
    bank = root / "formula-bank"
    check(run(treeclip("bank", "build", "--taxonomy", catalog, "--model", world["model"], "--out", bank,
                       "--templates", "photo")))
    formulas = 0
    for fmt in ("csv", "dwc"):
        out = root / f"formula.{fmt}"
        check(run(treeclip("predict", catalog.parent / "ok.png", "--model", world["model"], "--bank", bank,
                           "--format", fmt, "--output", out, "--k", 5)))
        cells = [cell for row in csv.reader(io.StringIO(out.read_bytes().decode())) for cell in row]
        if not any("cmd|" in cell for cell in cells):
            raise RuntimeError(f"the formula name did not reach the {fmt} output; the check would be vacuous")
        formulas += sum(cell.startswith(("=", "+", "@")) for cell in cells)
    return formulas


def chaos_hostile_tar(root: Path) -> Row:
    folder = root / "hostile-wds"
    folder.mkdir()
    tar_path = folder / "shard-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        def add(name: str, data: bytes, **kinds: object) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in kinds.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data))

        png = io.BytesIO()
        Image.new("RGB", (32, 32)).save(png, format="PNG")
        add("../escape.png", png.getvalue())
        add("/tmp/treeclip-chaos-absolute.png", png.getvalue())
        add("link.png", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("a.png", png.getvalue())
        add("a.taxon.txt", b"Animalia Chordata Aves Passeriformes Corvidae Corvus corax")
        add("bomb.png", gzip.compress(b"\0" * 50_000_000))
    clean = root / "clean-wds" / "shard-000000.tar"
    clean.parent.mkdir()
    with tarfile.open(tar_path) as source, tarfile.open(clean, "w") as tar:
        for name in ("a.png", "a.taxon.txt"):
            tar.addfile(source.getmember(name), source.extractfile(name))
    _, baseline = run_with_peak(treeclip("build", "--source", f"wds:{clean}", "--out", root / "clean-wds-out",
                                         "--image-size", 32))
    done, peak = run_with_peak(treeclip("build", "--source", f"wds:{tar_path}", "--out", root / "hostile-wds-out",
                                        "--image-size", 32))
    escaped = int((root / "escape.png").exists()) + int(Path("/tmp/treeclip-chaos-absolute.png").exists())
    crashed = int(done.returncode not in (0, 1) or "Traceback" in done.stderr)
    return Row("hostile WebDataset tar (build)", 4, 0, 0, crashed, escaped, memory_mb=peak - baseline,
               note=f"executed = members written outside the output; peak RSS {peak:.0f} MB vs {baseline:.0f} MB "
                    f"for a clean tar; exit {done.returncode}")


# ---------------------------------------------------------------- HTTP


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB (``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_request(port: int, head: bytes, body_chunks: list[bytes], *, pause: float = 0.0) -> int:
    """Status code of one hand-written request (0 when the server closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
                time.sleep(pause)
        except OSError:
            pass
        try:
            answer = sock.recv(65536)
        except OSError:
            return 0
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"chaosboundary") -> bytes:
    out = b"".join(b"--" + boundary + b"\r\n" + disposition + b"\r\n\r\n" + data + b"\r\n"
                   for disposition, data in parts)
    return out + b"--" + boundary + b"--\r\n"


def hostile_http(port: int) -> tuple[int, int, list[str]]:
    """(requests, unexpected answers, notes): each hostile request and the statuses it may get."""
    png = io.BytesIO()
    Image.new("RGB", (32, 32)).save(png, format="PNG")
    image = png.getvalue()
    file_part = b'Content-Disposition: form-data; name="files"; filename="%s"\r\nContent-Type: image/png'

    def post(body: bytes, *, length: bool = True, headers: bytes = b"") -> bytes:
        size = b"Content-Length: %d\r\n" % len(body) if length else b"Transfer-Encoding: chunked\r\n"
        return (b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n" + size + headers +
                b"Content-Type: multipart/form-data; boundary=chaosboundary\r\n\r\n")

    def chunked(body: bytes, size: int = 1 << 20) -> list[bytes]:
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        return [b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]

    big = os.urandom(100 * 2**20)
    thousand = multipart([(file_part % b"f%d.png" % i, image) for i in range(1000)])
    huge_field = multipart([(file_part % b"a.png", image),
                            (b'Content-Disposition: form-data; name="labels"', b"oak," * (2 * 2**20))])
    cases = {
        "malformed multipart": (post(b"--nope\r\ngarbage"), [b"--nope\r\ngarbage"], {400, 422}),
        "1,000 files": (post(thousand), [thousand], {400, 413}),
        "100 MB with Content-Length": (post(big), [big], {413, 0}),
        "100 MB chunked": (post(big, length=False), chunked(big), {413, 0}),
        "huge form field": (post(huge_field), [huge_field], {400, 413}),
        "non-UTF-8 file name": (post(multipart([(file_part % b"\xff\xfe.png", image)])),
                                [multipart([(file_part % b"\xff\xfe.png", image)])], {200}),
        "traversal file name": (post(multipart([(file_part % b"../../etc/passwd", image)])),
                                [multipart([(file_part % b"../../etc/passwd", image)])], {200}),
        "cross-origin form": (post(multipart([(file_part % b"a.png", image)]), headers=b"Origin: http://evil.test\r\n"),
                              [multipart([(file_part % b"a.png", image)])], {403}),
        "foreign Host": (b"GET /v1/health HTTP/1.1\r\nHost: evil.test\r\n\r\n", [], {400}),
    }
    unexpected, notes = 0, []
    for name, (head, chunks, allowed) in cases.items():
        status = raw_request(port, head, chunks)
        if status not in allowed:
            unexpected += 1
            notes.append(f"{name}: {status}")
    upload = multipart([(file_part % b"big.png", os.urandom(19 * 2**20))])
    with ThreadPoolExecutor(24) as pool:  # 24 uploads of 19 MB at once against a queue of 8
        statuses = list(pool.map(lambda _: raw_request(port, post(upload), [upload]), range(24)))
    if not set(statuses) <= {400, 503}:
        unexpected += 1
        notes.append(f"24 x 19 MB: {Counter(statuses)}")
    slow = raw_request(port, post(multipart([(file_part % b"s.png", image)])),
                       [bytes([b]) for b in multipart([(file_part % b"s.png", image)])[:40]], pause=0.1)
    if slow not in (408, 0):
        unexpected += 1
        notes.append(f"slow body: {slow}")
    return len(cases) + 2, unexpected, notes


def chaos_http(world: dict[str, Path], *, clients: int, seconds: float) -> list[Row]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_serve_api import png_bytes  # noqa: PLC0415
    from test_serve_load import Known, run_load  # noqa: PLC0415

    from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: PLC0415

    known = Known.compute(TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"])),
                          [png_bytes(seed, size=(320, 240)) for seed in range(8)])
    options = ("--queue-size", "8", "--max-upload-mb", "20")
    with server(world["model"], world["bank"], *options) as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(port)
        before = rss_mb(pid) if pid else None
        tried, unexpected, notes = hostile_http(port)
        hostile_growth = rss_mb(pid, "VmHWM") - before if pid else None
        fuzz = schemathesis_row(url)
        before_load = rss_mb(pid) if pid else None
        load = run_load(url, known, clients=clients, seconds=seconds)
        load_growth = rss_mb(pid) - before_load if pid else None
    errors = sum(n for code, n in load.statuses.items() if code >= 500 and code != 503)
    s = load.summary()
    return [
        Row("hostile HTTP requests", tried, 0, 0, unexpected, 0, 0, hostile_growth,
            "memory: peak during them (incl. 24 x 19 MB uploads at once, queue 8) minus before; "
            + ("; ".join(notes) or "every request got its documented status")),
        fuzz,
        Row(f"{clients} clients x {seconds:g} s (queue 8)", int(s["requests"]), 0, 0,
            len(load.wrong) + len(load.failures), 0, errors,
            load_growth,
            f"{s['ok']} x 200, {s['busy_503']} x 503 with Retry-After; corrupt = wrong answers + connection errors"),
    ]


def schemathesis_row(url: str, examples: int = 30) -> Row:
    """schemathesis with every check but positive_data_acceptance (a schema cannot say "a decodable image", so
    a schema-valid upload of random bytes is rightly refused with 400)."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json", "--checks", "all",
               "--exclude-checks", "positive_data_acceptance", "-n", str(examples), "--seed", "1"]
    if not Path(command[0]).is_file():
        return Row("schemathesis --checks all", note="skipped: schemathesis is not installed")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    generated = re.search(r"(\d+) generated", done.stdout)
    failures = re.search(r"(\d+) unique failures", done.stdout)
    server_errors = len(re.findall(r"Server error", done.stdout))
    return Row("schemathesis --checks all (but positive_data_acceptance)", int(generated.group(1)) if generated else 0,
               0, 0, int(failures.group(1)) if failures else int(done.returncode != 0), 0, server_errors,
               note=f"exit {done.returncode}")


def server_pid(port: int) -> int | None:
    """The pid of the `treeclip serve` process listening on `port` (found by its command line)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and b"--port" in args and args[args.index(b"--port") + 1] == str(port).encode():
            return int(cmdline.parent.name)
    return None


# ---------------------------------------------------------------- main


def print_table(rows: list[Row]) -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


SCENARIOS = ("build", "bank", "train", "predict", "embed", "writers", "images", "code", "table", "tar", "http")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per job (default 3)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--species", type=int, default=8)
    parser.add_argument("--images-per-species", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    rng = random.Random(args.seed)
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="treeclip-chaos-") as tmp:
        root = Path(tmp)
        world = make_world(root, species=args.species, images=args.images_per_species)
        steps = [
            ("build", lambda: [chaos_build(world, root, args.kills, rng)]),
            ("bank", lambda: [chaos_bank(world, root, args.kills, rng)]),
            ("train", lambda: [chaos_train(world, root, args.kills, rng)]),
            ("predict", lambda: chaos_predict(world, root, args.kills, rng)),
            ("embed", lambda: chaos_embed_index(world, root, args.kills, rng)),
            ("writers", lambda: [two_writers(world, root)]),
            ("images", lambda: [chaos_hostile_images(world, root)]),
            ("code", lambda: [chaos_hostile_code(world, root)]),
            ("table", lambda: [chaos_hostile_table(world, root)]),
            ("tar", lambda: [chaos_hostile_tar(root)]),
            ("http", lambda: chaos_http(world, clients=args.clients, seconds=args.seconds)),
        ]
        if "build" not in wanted and wanted & {"train", "code"}:
            check(run(treeclip("build", "--source", f"csv:{world['catalog']}", "--out", root / "build-ref",
                               "--image-size", 32, "--shard-size", 4)))
        if "predict" not in wanted and "writers" in wanted:
            for fmt in FORMATS:
                check(run(predict_command(world, root / f"ref.{fmt}", fmt)))
        if "images" not in wanted and "code" in wanted:
            hostile_images(root / "hostile-images")
        for name, step in steps:
            if name not in wanted:
                continue
            began = time.monotonic()
            try:
                found = step()
            except Exception as exc:  # noqa: BLE001 - one broken scenario is reported, the others still run
                found = [Row(name, note=f"scenario failed: {type(exc).__name__}: {str(exc)[:200]}", corrupt=1)]
            rows.extend(found)
            print(f"[{time.monotonic() - began:5.0f} s] {name}: " + "; ".join(" ".join(r.cells()[:7]) for r in found),
                  file=sys.stderr, flush=True)
    print(f"\nchaos: seed {args.seed}, {args.kills} kills per job, {os.cpu_count()} CPUs, "
          f"{time.monotonic() - started:.0f} s\n")
    print_table(rows)


if __name__ == "__main__":
    main()
