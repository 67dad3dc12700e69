"""The plan's partitioned rules against a brute-force, one-pass reference.

The plan resolves repeated ids per id bucket, exclusion and exact duplicates per sha256 bucket and shard order
per range (`treeclip.data.plan`). Here a generated input whose repeated ids, qualified ids, byte copies and
excluded copies fall in *different* buckets goes through `plan_build` with many small buckets, and every kept
image (shard by shard, in order), every dropped row (in order, with reason and kept id) and every problem must
equal what a plain sequential pass over the records, written here from the rules' description, gives.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from treeclip.data import plan as plan_module
from treeclip.data.align import Aligner, Alignment
from treeclip.data.exclude import Exclusions, load_exclusions
from treeclip.data.records import Record
from treeclip.data.shards import read_items
from treeclip.data.sources import open_source
from treeclip.data.splits import SPLITS, VAL, assign_split, sample_key, shard_order, stable_id

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
LINEAGES = [("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata"),
            ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"),
            ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"),
            ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria")]
SHARD_SIZE, VAL_FRACTION, SEED = 5, 0.25, 7


def _write_source(folder: Path, rows: list[dict[str, str]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "cat.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "path", "split", *RANKS])
        writer.writeheader()
        writer.writerows(rows)
    return f"csv:{folder / 'cat.csv'}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Four csv sources (the first given twice) over a pool of 60 byte contents: ids repeated within a source,
    ids shared across sources (qualified by spec; one source's id equal to another's qualified id), copies of
    bytes everywhere, held-out rows, an exclusion table (species, a sha256, paths) and files that cannot be
    read when hashed."""
    root = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(11)
    pool = root / "pool"
    pool.mkdir()
    for i in range(60):
        (pool / f"b{i}.bin").write_bytes(f"bytes {i}".encode() * (1 + i % 3))
    specs = []
    for s in range(4):
        folder = root / f"src{s}"
        rows = []
        for i in range(70):
            content = int(rng.integers(0, 60))
            image = folder / "img" / f"{i}.bin"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes((pool / f"b{content}.bin").read_bytes())
            rows.append({"id": f"id{int(rng.integers(0, 90))}", "path": f"img/{i}.bin",
                         "split": "unseen" if rng.random() < 0.05 else "",
                         **dict(zip(RANKS, LINEAGES[int(rng.integers(0, len(LINEAGES)))]))})
        chained = [("shared", "shared")] if s < 2 else [(f"shared@{specs[1]}", "shared-chain")] * (s == 3)
        for i, (source_id, name) in enumerate(chained):  # src3's id equals src1's qualified one
            (folder / f"{name}.bin").write_bytes(f"{name} {s}".encode())
            rows.append({"id": source_id, "path": f"{name}.bin", "split": "", **dict(zip(RANKS, LINEAGES[0]))})
        specs.append(_write_source(folder, rows))
    specs.append(specs[0])  # the same source twice: its ids are repeated, never qualified
    excluded_bytes = hashlib.sha256((pool / "b3.bin").read_bytes()).hexdigest()
    table = root / "exclude.csv"
    paths = "".join(f",{root / 'src1/img' / f'{i}.bin'},\n" for i in range(5, 15))
    table.write_text(f"sha256,path,binomial\n{excluded_bytes},,\n{paths},,Amanita muscaria\n")
    unreadable = {str(root / "src2/img/8.bin"), str(root / "src0/img/9.bin")}
    return {"root": root, "specs": specs, "exclusions": load_exclusions([table]), "unreadable": unreadable}


def _reference(specs: list[str], alignment: Alignment, exclusions: Exclusions, unreadable: set[str]
               ) -> dict[str, Any]:
    """One plain pass over the records in source order: keys per split, cut into shards; dropped (id,
    reason, kept id) in dropped.csv's order; problem reasons; the source ids qualified by their spec, and the
    (source id, kept copy's source id) of each duplicate."""
    taken: dict[str, int] = {}
    qualified, source_ids = [], {}
    resolve_drops, problems, candidates = [], [], []
    for index, spec in enumerate(specs):
        for record in open_source(spec).records():
            if not isinstance(record, Record):
                continue
            stable = stable_id(record.source, record.source_id)
            owner = taken.get(sample_key(stable))
            if owner is not None and owner < index and specs[owner] != spec:
                stable = stable_id(record.source, f"{record.source_id}@{spec}")
                qualified.append(record.source_id)
            key, taxon = sample_key(stable), alignment.resolve(record)
            source_ids[key] = record.source_id
            if record.split_hint == "unseen":
                resolve_drops.append((key, "held out by its source (split=unseen)", ""))
            elif key in taken:
                resolve_drops.append((key, "repeated source id", ""))
                problems.append(f"source id {record.source_id!r} repeated; kept the first")
            else:
                taken[key] = index
                candidates.append((key, stable, record, taxon))
    readable, unreadable_drops = [], []
    for key, stable, record, taxon in candidates:
        if record.path in unreadable:
            unreadable_drops.append((key, "cannot read image: unreadable here", ""))
            problems.append(f"cannot read image {record.path}: unreadable here")
        else:
            readable.append((key, stable, record, taxon, hashlib.sha256(Path(record.path).read_bytes()).hexdigest()))
    reasons = {key: reason for key, stable, record, taxon, digest in readable
               if (reason := exclusions.match(stable=stable, path=record.path, taxon=taxon, sha256=digest))}
    last = {digest: reasons[key] for key, _, _, _, digest in readable if key in reasons}
    excluded = [(key, reasons.get(key) or f"same bytes as an excluded image: {last[digest]}", "")
                for key, _, _, _, digest in readable if digest in last]
    first: dict[str, str] = {}
    duplicates, kept = [], []
    for key, stable, _, _, digest in readable:
        if digest in last:
            continue
        if digest in first:
            duplicates.append((key, f"exact duplicate of {first[digest]}", first[digest]))
        else:
            first[digest] = key
            kept.append((key, stable))
    shards = {}
    for split in SPLITS:
        members = sorted((shard_order(stable, seed=SEED), key) for key, stable in kept
                         if (assign_split(stable, val_fraction=VAL_FRACTION, seed=SEED) == VAL) == (split == VAL))
        keys = [key for _, key in members]
        shards[split] = [keys[start:start + SHARD_SIZE] for start in range(0, len(keys), SHARD_SIZE)]
    return {"shards": shards, "dropped": resolve_drops + unreadable_drops + excluded + duplicates,
            "problems": problems, "qualified": qualified,
            "pairs": [(source_ids[key], source_ids[kept]) for key, _, kept in duplicates]}


@pytest.mark.parametrize("bucket_rows", [1_000_000, 23])
def test_partitioned_plan_equals_a_one_pass_reference(generated: dict[str, object], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, bucket_rows: int) -> None:
    specs, exclusions, unreadable = generated["specs"], generated["exclusions"], generated["unreadable"]
    real_sha256 = plan_module.sha256_file

    def sha256_file(path: str) -> str:
        if path in unreadable:
            raise OSError("unreadable here")
        return real_sha256(path)

    monkeypatch.setattr(plan_module, "sha256_file", sha256_file)
    monkeypatch.setattr(plan_module, "_BUCKET_ROWS", bucket_rows)
    monkeypatch.setattr(plan_module, "_HASH_ROWS", 3)
    plan = plan_module.plan_build(
        sources=[open_source(spec) for spec in specs], out=str(tmp_path), aligner=Aligner(require_kingdom=False),
        exclusions=exclusions, image_size=16, resize_mode="squash", quality=90, shard_size=SHARD_SIZE,
        val_fraction=VAL_FRACTION, seed=SEED, on_problem=lambda problem: None)
    expected = _reference(specs, plan.alignment, exclusions, unreadable)
    shards, dropped, problems = expected["shards"], expected["dropped"], expected["problems"]
    got = {split: [[item.key for item in read_items(job.items_file)] for job in plan.jobs if job.split == split]
           for split in SPLITS}
    assert got == shards
    assert [(row["id"], row["reason"], row["kept_id"]) for row in plan.dropped_rows()] == dropped
    assert [problem.reason for problem in plan.problems] == problems
    reasons = Counter(reason.split(" ")[0] for _, reason, _ in dropped)
    assert reasons["repeated"] > 20 and reasons["exact"] > 20 and reasons["held"] and reasons["cannot"] == 2
    for kind in ("same bytes", "excluded image path", "excluded image sha256", "excluded species"):
        assert any(reason.startswith(kind) for _, reason, _ in dropped), kind
    assert len(expected["qualified"]) > 10  # ids shared by sources of different specs
    assert expected["qualified"].count(f"shared@{specs[1]}") == 1  # the chained id, qualified once more
    if bucket_rows < 100:  # many buckets: duplicates must cross id buckets for the test to mean anything
        buckets = -(-plan.counts["records"] // bucket_rows)
        assert buckets >= 10
        crossing = [plan_module.id_group("csv", a) % buckets != plan_module.id_group("csv", b) % buckets
                    for a, b in expected["pairs"]]
        assert sum(crossing) > 10


class CountedInput:
    """A shared job input that counts how often this process pickles it (class-wide)."""

    pickled = 0

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __getstate__(self) -> dict[str, int]:
        CountedInput.pickled += 1
        return {"factor": self.factor}


def scaled(job: int, shared: CountedInput) -> int:
    return job * shared.factor


@pytest.mark.parametrize("workers", [1, 2])
def test_shared_input_reaches_every_job_and_is_pickled_once_per_worker(workers: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`map_unordered(shared=...)` (how the plan sends the alignment and the exclusions): every job gets the
    input, which a process pool pickles once per process it starts, not once per job (a bug that put it
    back into each job, or lost it in the pool's processes, fails)."""
    from treeclip.data.engines import map_unordered

    monkeypatch.setattr(CountedInput, "pickled", 0)
    jobs = list(range(12))
    assert sorted(map_unordered(scaled, jobs, workers=workers, shared=CountedInput(3))) == [3 * j for j in jobs]
    assert CountedInput.pickled == (0 if workers == 1 else workers)


# ---- sources read in parts: pass 1 and pass 2 as one job per (source, part) -----------------------------------

@pytest.fixture(scope="module")
def split_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A csv: source and a Parquet one (row groups of 2) whose malformed row, blank line, multi-line value,
    missing images, repeated ids and copies of bytes (within and across sources) fall in different parts
    when parts are a few rows long."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    from test_build import write_jpeg  # noqa: PLC0415

    root = tmp_path_factory.mktemp("split")
    for i in range(12):
        write_jpeg(root / "img" / f"{i}.jpg", seed=i)
    (root / "img" / "copy-of-1.jpg").write_bytes((root / "img" / "1.jpg").read_bytes())
    header = ["id", "path", "note", *RANKS]
    lines = [",".join(header)]
    for i, (source_id, image) in enumerate([("a0", "0.jpg"), ("a1", "1.jpg"), ("r", "2.jpg"), ("a3", "3.jpg"),
                                            ("a4", "missing.jpg"), ("a5", "4.jpg"), ("r", "5.jpg"),
                                            ("a7", "copy-of-1.jpg"), ("a8", "6.jpg"), ("a1", "7.jpg")]):
        note = '"two\nlines"' if i == 3 else "n"
        lines.append(",".join([source_id, f"img/{image}", note, *LINEAGES[i % len(LINEAGES)]]))
        if i == 2:
            lines += ["a2x,img/8.jpg,n,too,many,fields,here,x,y,z,w", ""]
    (root / "cat.csv").write_text("\n".join(lines) + "\n")
    ids = ["p0", "a1", "p2", "p3", "p2", "p5", "p6", "p7", "p8"]
    images = ["9.jpg", "10.jpg", "1.jpg", "gone.jpg", "11.jpg", "copy-of-1.jpg", "3.jpg", "2.jpg", "0.jpg"]
    columns = {"id": ids, "path": [f"img/{name}" for name in images],
               **{rank: [LINEAGES[i % len(LINEAGES)][r] for i in range(len(ids))] for r, rank in enumerate(RANKS)}}
    pq.write_table(pa.table(columns), root / "more.parquet", row_group_size=2)
    return [f"csv:{root / 'cat.csv'}", f"csv:{root / 'more.parquet'}"]


def build_outputs(specs: list[str], out: Path, workers: int, *options: str) -> dict[str, bytes]:
    """Every output of a build of `specs` (shards, catalog, dropped.csv, problems.csv, manifest, alignment)."""
    from test_build import shard_bytes  # noqa: PLC0415

    from treeclip.cli import main  # noqa: PLC0415

    args = [arg for spec in specs for arg in ("--source", spec)]
    assert main(["build", *args, "--out", str(out), "--image-size", "16", "--shard-size", "3", "--val-fraction",
                 "0.2", "--workers", str(workers), *options]) == 1  # the malformed row and the missing images
    return {**shard_bytes(out), **{name: (out / name).read_bytes() for name in (
        "catalog.parquet", "dropped.csv", "problems.csv", "manifest.json", "alignment.json")}}


@pytest.mark.parametrize("workers", [1, 2])
def test_sources_split_in_parts_build_the_same_bytes(split_inputs: list[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Parts of 3 rows (a csv: table staged to Arrow files, a Parquet one cut at row groups): shards, catalog,
    dropped.csv, problems.csv and manifest equal the one-part build's byte for byte. A part's records placed
    at a wrong offset (a repeated id or a copy of bytes across parts then keeps the wrong row) or parts' tallies
    and problems merged out of order fail."""
    whole = build_outputs(split_inputs, tmp_path / "whole", 1)
    text = whole["problems.csv"].decode()
    assert 'cat.csv,5,"malformed row skipped' in text and "cat.csv,7," in text and "more.parquet,5," in text
    dropped = whole["dropped.csv"].decode()
    assert dropped.count("repeated source id") == 3 and dropped.count("exact duplicate") == 6
    split_into, staged = [], []
    real_split, real_resolve = plan_module._split, plan_module._resolve

    def recording_split(*args: Any, **kwargs: Any) -> list[Any]:
        parts = real_split(*args, **kwargs)
        split_into.append(Counter(part.index for part in parts))
        return parts

    def recording_resolve(*args: Any, **kwargs: Any) -> None:
        staged.append(len(list((tmp_path / "parts").rglob("staged-*"))))
        real_resolve(*args, **kwargs)
        staged.append(len(list((tmp_path / "parts").rglob("staged-*"))))

    monkeypatch.setattr(plan_module, "_PART_ROWS", 3)
    monkeypatch.setattr(plan_module, "_split", recording_split)
    monkeypatch.setattr(plan_module, "_resolve", recording_resolve)
    monkeypatch.setattr(plan_module, "_BATCH", 1)  # in this process (1 worker): a pass-2 file per record,
    monkeypatch.setattr(plan_module, "_SPILL_ROWS", 1)  # so a part's files must be read in their order too
    assert build_outputs(split_inputs, tmp_path / "parts", workers) == whole
    assert split_into == [Counter({0: 4, 1: 3})]  # 10 csv rows, 9 Parquet rows in row groups of 2
    assert staged == [4, 0]  # the csv's 4 staged parts, deleted once pass 2 has read them


def test_a_source_changed_between_the_passes_stops_the_plan(split_inputs: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An image deleted after pass 1 counted its part: pass 2 would give the later parts' records positions
    the next part also uses, so the build stops with one line (exit 1) instead of resolving them wrongly."""
    import shutil  # noqa: PLC0415

    from treeclip.cli import main  # noqa: PLC0415

    folder = tmp_path / "copy"
    shutil.copytree(Path(split_inputs[0].removeprefix("csv:")).parent, folder)
    real_resolve = plan_module._resolve

    def deleting_resolve(*args: Any, **kwargs: Any) -> None:
        (folder / "img" / "3.jpg").unlink()
        real_resolve(*args, **kwargs)

    monkeypatch.setattr(plan_module, "_PART_ROWS", 3)
    monkeypatch.setattr(plan_module, "_resolve", deleting_resolve)
    assert main(["build", "--source", f"csv:{folder / 'cat.csv'}", "--out", str(tmp_path / "out")]) == 1
    assert "changed while the build was planning: 2 records in its first reading, 1 in its second (part 1)" in \
        capsys.readouterr().err


def test_pass_one_merges_parts_in_order_whatever_order_they_finish(split_inputs: list[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass-1 results that come back in reverse (as a pool or Ray may return them) give the problems, counts
    and alignment tally of results in (source, part) order (a merge in arrival order fails)."""
    monkeypatch.setattr(plan_module, "_PART_ROWS", 2)
    local = plan_module._Runner(engine="local", workers=1, ray_address=None)

    def reversed_runner(fn: Any, jobs: list[Any], shared: Any = None) -> list[Any]:
        return [fn(job) for job in jobs][::-1]

    results = []
    for name, run in (("in order", local), ("reversed", reversed_runner)):
        work = tmp_path / name
        work.mkdir()
        parts = plan_module._split([open_source(spec) for spec in split_inputs], local, work=str(work))
        problems, aligner = [], Aligner(require_kingdom=False)
        counts = plan_module._observe(parts, aligner, problems.append, run)
        tally = [(lineage, dict(sources)) for lineage, sources in aligner._tally.items()]
        results.append(([(p.origin.rsplit("/", 1)[1], p.reason) for p in problems], counts, tally))
    assert len(parts) == 10 and len(results[0][0]) == 3
    assert results[1] == results[0]
