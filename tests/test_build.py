"""`treeclip build` and `treeclip check`: shards, texts, catalog, manifest, dedup, exclusion, splits, resume."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from treeclip.cli import main
from treeclip.data.build import build_dataset
from treeclip.data.splits import TRAIN, VAL, assign_split, sample_key, stable_id
from treeclip.formats.problems import Problem, ProblemLog

HONEYEATER = ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata")
GANNET = ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus")
MULBERRY = ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba")
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
CATALOG_COLUMNS = ["id", "split", "source", "source_id", "path", *RANKS, "common", "width", "height", "sha256"]
HONEYEATER_TEXTS = {
    "sci.txt": "a photo of Ptilotula penicillata.",
    "com.txt": "a photo of White-plumed Honeyeater.",
    "taxon.txt": "a photo of Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata.",
    "sci_com.txt": "a photo of Ptilotula penicillata with common name White-plumed Honeyeater.",
    "taxon_com.txt": "a photo of Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata "
                     "with common name White-plumed Honeyeater.",
    "taxonTag.txt": "a photo of kingdom Animalia phylum Chordata class Aves order Passeriformes family "
                    "Meliphagidae genus Ptilotula species penicillata.",
    "taxonTag_com.txt": "a photo of kingdom Animalia phylum Chordata class Aves order Passeriformes family "
                        "Meliphagidae genus Ptilotula species penicillata with common name White-plumed Honeyeater.",
    "scientific_name.txt": "Ptilotula penicillata",
    "taxonomic_name.txt": "Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata",
    "common_name.txt": "White-plumed Honeyeater",
}


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small smooth random JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    coarse.resize(size, Image.Resampling.BICUBIC).save(path, format="JPEG", quality=90)
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", *RANKS, "common"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(image: str, lineage: tuple[str, ...], common: str) -> dict[str, str]:
    return {"path": image, **dict(zip(RANKS, lineage)), "common": common}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A csv: source (with three bad images) and a folder: source holding a copy of one csv image."""
    root = tmp_path_factory.mktemp("inputs")
    images = root / "csvsrc" / "images"
    rows = []
    for i, (lineage, common) in enumerate([(HONEYEATER, "White-plumed Honeyeater")] * 3
                                          + [(GANNET, "Northern Gannet")] * 2 + [(MULBERRY, "White Mulberry")] * 2):
        write_jpeg(images / f"img{i}.jpg", seed=i)
        rows.append(row(f"images/img{i}.jpg", lineage, common))
    good = (images / "img0.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "notimage.jpg").write_text("this is not an image\n")
    (images / "empty.jpg").write_bytes(b"")
    rows += [row("images/truncated.jpg", HONEYEATER, ""), row("images/notimage.jpg", GANNET, ""),
             row("images/empty.jpg", GANNET, "")]
    clean_rows = rows[:7]
    folder = root / "foldersrc" / "Ptilotula penicillata"
    folder.mkdir(parents=True)
    shutil.copy(images / "img1.jpg", folder / "copy_of_img1.jpg")
    write_jpeg(folder / "own.jpg", seed=100)
    exclude = root / "exclude.txt"
    exclude.write_text("# evaluation species\nMorus alba L.\n")
    return {
        "csv": write_csv(root / "csvsrc" / "catalog.csv", rows),
        "clean_csv": write_csv(root / "csvsrc" / "clean.csv", clean_rows),
        "folder": root / "foldersrc",
        "exclude": exclude,
    }


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {suffix: bytes}} over every shard, asserting no key repeats."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*/shard-*.tar")):
        seen_here: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                seen_here.setdefault(key, {})[suffix] = tar.extractfile(member).read()
        assert not set(seen_here) & set(samples), f"key repeated across shards in {shard}"
        samples.update(seen_here)
    return samples


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))}


def key_of(source: str, source_id: str) -> str:
    return sample_key(stable_id(source, source_id))


@pytest.fixture(scope="module")
def built(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("built") / "shards"
    args = ["build", "--source", f"csv:{inputs['csv']}", "--source", f"folder:{inputs['folder']}", "--out", str(out),
            "--image-size", "32", "--shard-size", "3", "--workers", "1", "--val-fraction", "0.3",
            "--exclude", str(inputs["exclude"])]
    stderr = io.StringIO()
    old, sys.stderr = sys.stderr, stderr
    try:
        code = main(args)
    finally:
        sys.stderr = old
    return out, code, stderr.getvalue()


def test_bad_images_reported_and_exit_1(built: tuple[Path, int, str]) -> None:
    out, code, stderr = built
    assert code == 1
    for name, reason in [("truncated.jpg", "truncated"), ("notimage.jpg", "not an image"), ("empty.jpg", "empty")]:
        line = next(line for line in stderr.splitlines() if name in line)
        assert reason in line and "catalog.csv:" in line, line
    assert "3 problems" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["bad_images"] == 3 and manifest["problems"]["count"] == 3
    # every problem in problems.csv with its file and line; the terminal counts them by reason
    problems = list(csv.DictReader((out / "problems.csv").open()))
    assert len(problems) == 3 and all(p["file"].endswith("catalog.csv") and p["line"].isdigit() for p in problems)
    assert len({p["line"] for p in problems}) == 3
    for word in ("truncated", "not an image", "empty"):
        assert sum(word in p["reason"] for p in problems) == 1, word


def test_build_that_writes_nothing_exits_1_and_says_why(inputs: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "only_header.csv"
    table.write_text("path,kingdom,phylum,class,order,family,genus,species\n")
    code = main(["build", "--source", f"csv:{table}", "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "wrote no images" in err and "no data rows" in err
    assert "no data rows" in (tmp_path / "out" / "problems.csv").read_text()


def test_shard_texts_match_design_string_for_string(built: tuple[Path, int, str], inputs: dict[str, Path]) -> None:
    out, _, _ = built
    samples = read_samples(out)
    sample = samples[key_of("csv", "images/img0.jpg")]
    for name, text in HONEYEATER_TEXTS.items():
        assert sample[name].decode("utf-8") == text, name
    assert json.loads(sample["taxon.json"]) == {**dict(zip(RANKS, HONEYEATER)), "common": "White-plumed Honeyeater"}
    assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 32)
    # the folder source gave only a binomial; its higher ranks were filled by alignment
    own = samples[key_of("folder", "Ptilotula penicillata/own.jpg")]
    assert own["taxon_com.txt"].decode() == HONEYEATER_TEXTS["taxon_com.txt"]
    assert set(sample) == {"jpg", "taxon.json", *HONEYEATER_TEXTS}


def test_catalog_manifest_dedup_and_exclusion(built: tuple[Path, int, str], inputs: dict[str, Path]) -> None:
    out, _, _ = built
    samples = read_samples(out)
    catalog = pq.read_table(out / "catalog.parquet")
    assert catalog.column_names[: len(CATALOG_COLUMNS)] == CATALOG_COLUMNS
    rows = catalog.to_pylist()
    expected = {key_of("csv", f"images/img{i}.jpg") for i in range(5)}
    expected.add(key_of("folder", "Ptilotula penicillata/own.jpg"))
    assert {r["id"] for r in rows} == set(samples) == expected  # mulberries excluded, the copy dropped
    first = next(r for r in rows if r["id"] == key_of("csv", "images/img0.jpg"))
    assert (first["width"], first["height"], first["species"], first["common"]) == (48, 40, "penicillata",
                                                                                   "White-plumed Honeyeater")
    assert first["path"] == str((inputs["csv"].parent / "images/img0.jpg").resolve())
    assert all(out.joinpath(r["split"]).is_dir() for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["records"], counts["samples"], counts["excluded"], counts["duplicates"]) == (12, 6, 2, 1)
    shards = manifest["shards"]
    assert sum(s["samples"] for s in shards) == 6 == sum(s["samples"] for s in manifest["splits"].values())
    for shard in shards:
        with tarfile.open(out / shard["name"]) as tar:
            assert len({m.name.split(".")[0] for m in tar}) == shard["samples"]
    dropped = list(csv.DictReader((out / "dropped.csv").open()))
    duplicate = next(d for d in dropped if "duplicate" in d["reason"])
    assert duplicate["source"] == "folder" and duplicate["kept_id"] == key_of("csv", "images/img1.jpg")
    assert sum("excluded species" in d["reason"] for d in dropped) == 2
    assert json.loads((out / "alignment.json").read_text()) and (out / "alignment.txt").read_text().strip()


def test_webdataset_reads_the_shards(built: tuple[Path, int, str]) -> None:
    import webdataset as wds

    out, _, _ = built
    urls = [str(p) for p in sorted(out.glob("*/shard-*.tar"))]
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(keys) == sorted(read_samples(out))


def test_check_passes_and_detects_damage(built: tuple[Path, int, str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = built
    assert main(["check", str(out)]) == 0
    assert "6 samples" in capsys.readouterr().out
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    shard = sorted(damaged.glob("train/shard-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    assert main(["check", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "problems" in err


def test_check_flags_wrong_text(built: tuple[Path, int, str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = built
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = sorted(bad.glob("train/shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = b"a photo of something else." if member.name.endswith(".sci.txt") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    assert main(["check", str(bad)]) == 1
    assert "sci.txt does not match taxon.json" in capsys.readouterr().err


def test_usage_errors_exit_2(inputs: dict[str, Path], built: tuple[Path, int, str], tmp_path: Path) -> None:
    out, _, _ = built
    base = ["build", "--out", str(tmp_path / "new")]
    assert main([*base, "--source", f"nosuchkind:{inputs['csv']}"]) == 2
    assert main([*base, "--source", f"csv:{tmp_path / 'missing.csv'}"]) == 2
    assert main(["build", "--out", str(out), "--source", f"csv:{inputs['csv']}"]) == 2  # non-empty, no --resume
    assert main([*base, "--source", f"csv:{inputs['csv']}", "--val-fraction", "1.5"]) == 2
    assert not (tmp_path / "new").exists()


def test_determinism_across_worker_counts(inputs: dict[str, Path], tmp_path: Path) -> None:
    common = dict(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}"], image_size=24,
                  shard_size=2, val_fraction=0.3)
    one = build_dataset(out=tmp_path / "one", workers=1, **common)
    two = build_dataset(out=tmp_path / "two", workers=2, **common)
    assert not one.problems and one.counts["samples"] == 8 and two.counts == one.counts
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    assert len(shard_bytes(tmp_path / "one")) >= 4
    assert (tmp_path / "one/manifest.json").read_bytes() == (tmp_path / "two/manifest.json").read_bytes()


def test_splits_stable_when_a_source_is_added(inputs: dict[str, Path], tmp_path: Path) -> None:
    common = dict(image_size=16, shard_size=4, val_fraction=0.5, seed=3)
    alone = build_dataset(sources=[f"csv:{inputs['clean_csv']}"], out=tmp_path / "a", **common)
    both = build_dataset(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}"], out=tmp_path / "b",
                         **common)
    assert alone.counts["samples"] == 7 and both.counts["samples"] == 8
    before = {r["id"]: r["split"] for r in pq.read_table(tmp_path / "a/catalog.parquet").to_pylist()}
    after = {r["id"]: r["split"] for r in pq.read_table(tmp_path / "b/catalog.parquet").to_pylist()}
    assert {k: after[k] for k in before} == before
    ids = [stable_id("csv", f"img{i}.jpg") for i in range(4000)]
    fraction = sum(assign_split(i, val_fraction=0.05, seed=0) == VAL for i in ids) / len(ids)
    assert 0.04 < fraction < 0.06
    assert [assign_split(i, val_fraction=0.05) for i in ids[:50]] == [assign_split(i, val_fraction=0.05)
                                                                      for i in ids[:50]]
    assert assign_split(ids[0], val_fraction=0.0) == TRAIN


def test_exclude_by_catalog_hash_and_path(inputs: dict[str, Path], tmp_path: Path) -> None:
    images = inputs["csv"].parent / "images"
    table = tmp_path / "benchmark.csv"
    digest = hashlib.sha256((images / "img3.jpg").read_bytes()).hexdigest()
    table.write_text(f"file_name,sha256\n,{digest}\n{images / 'img0.jpg'},\n")
    result = build_dataset(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}"],
                           out=tmp_path / "out", image_size=16, exclude=[table])
    ids = {r["id"] for r in pq.read_table(tmp_path / "out/catalog.parquet").to_pylist()}
    assert key_of("csv", "images/img3.jpg") not in ids and key_of("csv", "images/img0.jpg") not in ids
    assert result.counts["excluded"] == 2 and result.counts["samples"] == 6  # 9 records - 1 copy - 2


def test_resume_after_simulated_crash_states(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Every crash state a SIGKILL can leave: missing shard, truncated shard, temp files, no manifest."""
    common = dict(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}"], image_size=16,
                  shard_size=2, val_fraction=0.3)
    out = tmp_path / "out"
    build_dataset(out=out, **common)
    original = shard_bytes(out)
    names = sorted(original)
    (out / names[0]).unlink()
    (out / names[1]).write_bytes(original[names[1]][:1000])
    (out / "train/.shard-000009.tar.1234.tmp").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    with pytest.raises(Exception, match="--resume"):
        build_dataset(out=out, **common)
    result = build_dataset(out=out, resume=True, **common)
    assert shard_bytes(out) == original and result.counts["samples"] == 8
    assert main(["check", str(out)]) == 0


def _kill_test_source(root: Path, n: int) -> Path:
    rows = []
    lineages = [(HONEYEATER, "White-plumed Honeyeater"), (GANNET, "Northern Gannet"), (MULBERRY, "White Mulberry")]
    for i in range(n):
        write_jpeg(root / "img" / f"{i:04d}.jpg", seed=1000 + i, size=(320 + i % 40, 300))
        lineage, common = lineages[i % 3]
        rows.append(row(f"img/{i:04d}.jpg", lineage, common))
    return write_csv(root / "big.csv", rows)


def kill_once_shards_appear(args: list[str], out: Path, *, timeout: float) -> dict[Path, int]:
    """Run ``treeclip ARGS`` in its own process group, SIGKILL the whole group as soon as a shard exists, and
    return the shards left behind with their modification times (the build must not have finished)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "treeclip", *args], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not list(out.glob("*/shard-*.tar")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    return {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.tar")}


def test_sigkill_mid_build_then_resume(tmp_path: Path) -> None:
    n = 240
    source = _kill_test_source(tmp_path / "src", n)
    out = tmp_path / "out"
    args = ["build", "--source", f"csv:{source}", "--out", str(out), "--image-size", "160", "--shard-size", "12",
            "--workers", "2", "--val-fraction", "0.1"]
    survivors = kill_once_shards_appear(args, out, timeout=60)
    assert survivors
    assert main([*args, "--resume"]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in survivors.items()), "complete shards were rewritten"
    samples = read_samples(out)
    assert set(samples) == {key_of("csv", f"img/{i:04d}.jpg") for i in range(n)}
    ids = pq.read_table(out / "catalog.parquet").column("id").to_pylist()
    assert sorted(ids) == sorted(samples)
    assert not [p for p in out.rglob("*.tmp")]
    assert main(["check", str(out)]) == 0


def test_load_exclusions_formats(tmp_path: Path) -> None:
    from treeclip.data.exclude import load_exclusions
    from treeclip.errors import UsageError
    from treeclip.taxonomy import Taxon

    names = tmp_path / "species.txt"
    names.write_text("Morus alba L.\n\n# comment\nPTILOTULA PENICILLATA (Gould, 1837)\n")
    rare = tmp_path / "metadata.csv"
    rare.write_text("rarespecies_id,kingdom,genus,species,common,sha256\n1,Animalia,Sula,nebouxii,Booby,ABC123\n")
    sci = tmp_path / "sci.tsv"
    sci.write_text("sciName\tfile_name\nLoxodonta africana\tpics/a.jpg\n")
    found = load_exclusions([names, rare, sci])
    assert set(found.names) == {"morus alba", "ptilotula penicillata", "sula nebouxii", "loxodonta africana"}
    assert len(found.hashes) == 1 and found.hashes.get("abc123") == "metadata.csv" and "abc12" not in found.hashes
    assert len(found.paths) == 1 and found.paths.get(str((tmp_path / "pics/a.jpg").resolve())) == "sci.tsv"
    gannet = Taxon(GANNET)
    assert found.match(stable="csv:x", path="", taxon=Taxon(MULBERRY), sha256="0").startswith("excluded species")
    assert found.match(stable="csv:x", path="", taxon=gannet, sha256="abc123").startswith("excluded image sha256")
    assert found.match(stable="csv:x", path=str(tmp_path / "pics/a.jpg"), taxon=gannet, sha256="0")
    assert found.match(stable="csv:x", path="", taxon=gannet, sha256="0") == ""
    with pytest.raises(UsageError, match="no such file"):
        load_exclusions([tmp_path / "missing.csv"])


def test_reshard_from_wds_source(built: tuple[Path, int, str], tmp_path: Path) -> None:
    """Images carried as bytes (wds:) travel to worker processes and keep their taxa."""
    out, _, _ = built
    before = read_samples(out)
    result = build_dataset(sources=[f"wds:{out}"], out=tmp_path / "re", image_size=24, shard_size=2, workers=2)
    assert not result.problems and result.counts["samples"] == len(before)
    after = read_samples(tmp_path / "re")
    by_source_id = {r["source_id"]: r["id"] for r in pq.read_table(tmp_path / "re/catalog.parquet").to_pylist()}
    assert set(by_source_id) == set(before)
    for old_key, new_key in by_source_id.items():
        assert after[new_key]["taxon_com.txt"] == before[old_key]["taxon_com.txt"]
        assert Image.open(io.BytesIO(after[new_key]["jpg"])).size == (24, 24)


def test_backbone_fills_missing_ranks(inputs: dict[str, Path], tmp_path: Path) -> None:
    alone = build_dataset(sources=[f"folder:{inputs['folder']}"], out=tmp_path / "alone", image_size=16)
    # species-only labels are kept at the ranks they have, and counted
    assert alone.counts["samples"] == 2 and alone.counts["no_kingdom"] == 2 and not alone.counts["unresolved"]
    backbone = write_csv(tmp_path / "backbone.csv", [row("", HONEYEATER, "White-plumed Honeyeater")])
    filled = build_dataset(sources=[f"folder:{inputs['folder']}"], out=tmp_path / "filled", image_size=16,
                           backbone=backbone)
    assert filled.counts["samples"] == 2 and filled.manifest["parameters"]["backbone"] == [str(backbone)]
    assert not filled.counts["no_kingdom"]  # the backbone gave them their lineage
    texts = {s["taxon_com.txt"].decode() for s in read_samples(tmp_path / "filled").values()}
    assert texts == {HONEYEATER_TEXTS["taxon_com.txt"]}


def test_same_source_id_in_two_sources_and_repeated_in_one(inputs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_jpeg(other / "Ptilotula penicillata" / "own.jpg", seed=555)  # same relative path, other image
    again = str(inputs["csv"].parent / "images/img2.jpg")
    repeated = write_csv(tmp_path / "repeated.csv", [row(again, GANNET, "")] * 2)
    result = build_dataset(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}", f"folder:{other}",
                                    f"csv:{repeated}"], out=tmp_path / "out", image_size=16,
                           allow_absolute_paths=True)  # repeated.csv names images outside its folder
    rows = pq.read_table(tmp_path / "out/catalog.parquet").to_pylist()
    assert sum(r["source_id"] == "Ptilotula penicillata/own.jpg" for r in rows) == 2
    assert result.counts["repeated_id"] == 1 and result.counts["duplicates"] == 2  # img1 copy, img2 again
    assert [p.reason for p in result.problems] == [f"source id {again!r} repeated; kept the first"]


def test_synth_world_builds_without_its_unseen_species(tmp_path: Path) -> None:
    from treeclip.data.synth import write_world

    summary = write_world(tmp_path / "world", branching=(1, 1, 1, 1, 2, 2, 3), images_per_species=2, image_size=16,
                          seed=3, holdout=0.2)
    result = build_dataset(sources=[f"csv:{tmp_path / 'world/catalog.csv'}"], out=tmp_path / "shards", image_size=16)
    unseen = set((tmp_path / "world/unseen.txt").read_text().split("\n")) - {""}
    built = {f"{r['genus']} {r['species']}" for r in pq.read_table(tmp_path / "shards/catalog.parquet").to_pylist()}
    assert unseen and not unseen & built
    assert result.counts["held_out"] == summary.images["unseen"] > 0
    assert result.counts["samples"] == summary.images["train"] + summary.images["val"]


def test_plan_batches_and_buckets_do_not_change_the_output(inputs: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The columnar plan works in batches (pass 2, hashing, spill reads) and writes items files through
    buckets: repeated ids, copies and duplicates that straddle batch or bucket edges must resolve as in one batch."""
    from treeclip.data import plan

    again = str(inputs["csv"].parent / "images/img2.jpg")
    repeated = write_csv(tmp_path / "repeated.csv", [row(again, GANNET, "")] * 3)
    images = inputs["csv"].parent / "images"
    exclude = tmp_path / "exclude.csv"
    exclude.write_text(f"sha256\n{hashlib.sha256((images / 'img3.jpg').read_bytes()).hexdigest()}\n")
    common = dict(sources=[f"csv:{inputs['clean_csv']}", f"folder:{inputs['folder']}", f"csv:{repeated}"],
                  image_size=16, shard_size=2, val_fraction=0.3, exclude=[exclude], allow_absolute_paths=True)
    whole = build_dataset(out=tmp_path / "whole", **common)
    for name, value in (("_BATCH", 1), ("_HASH_ROWS", 2), ("_BUCKET_ROWS", 3)):
        monkeypatch.setattr(plan, name, value)
    small = build_dataset(out=tmp_path / "small", **common)
    assert whole.counts["repeated_id"] == 2 and whole.counts["excluded"] >= 1 and whole.counts["duplicates"] >= 1
    assert len(shard_bytes(tmp_path / "whole")) >= 3
    assert shard_bytes(tmp_path / "whole") == shard_bytes(tmp_path / "small") and small.counts == whole.counts
    for name in ("manifest.json", "catalog.parquet", "dropped.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "small" / name).read_bytes(), name
    assert not (tmp_path / "small/.build/plan").exists()  # the items files go once the build is complete


def test_pass_one_per_source_in_worker_processes_equals_one_process(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Pass 1 runs one job per source (here in 2 spawned processes, finishing in any order); merging their
    alignment tallies in source order must give the one-process build's alignment, shards and tables."""
    common = dict(sources=[f"csv:{inputs['csv']}", f"folder:{inputs['folder']}", f"csv:{inputs['clean_csv']}"],
                  image_size=16, shard_size=3, val_fraction=0.3)
    one = build_dataset(out=tmp_path / "one", workers=1, **common)
    two = build_dataset(out=tmp_path / "two", workers=2, **common)
    assert [str(p) for p in one.problems] == [str(p) for p in two.problems] and one.problems
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    for name in ("alignment.json", "alignment.txt", "manifest.json", "catalog.parquet", "dropped.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_rows_with_a_gap_are_filled_from_the_backbone_or_kept_and_counted(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A row with its family empty under a known order is mended to its deepest unbroken run (genus, species):
    filled back from a backbone when one knows the genus, else kept at genus/species; either way counted."""
    gapped = ("Animalia", "Chordata", "Aves", "Passeriformes", "", "Ptilotula", "penicillata")
    write_jpeg(tmp_path / "src/a.jpg", seed=1)
    write_jpeg(tmp_path / "src/b.jpg", seed=2)
    source = write_csv(tmp_path / "src/rows.csv", [row("a.jpg", gapped, ""), row("b.jpg", GANNET, "")])
    kept = build_dataset(sources=[f"csv:{source}"], out=tmp_path / "kept", image_size=16)
    assert kept.counts["gap_kept"] == 1 and "gap_filled" not in kept.counts and kept.counts["samples"] == 2
    rows = {r["source_id"]: r for r in pq.read_table(tmp_path / "kept/catalog.parquet").to_pylist()}
    assert [rows["a.jpg"][rank] for rank in ("order", "genus", "species")] == ["", "Ptilotula", "penicillata"]
    backbone = write_csv(tmp_path / "backbone.csv", [row("", HONEYEATER, "")])
    filled = build_dataset(sources=[f"csv:{source}"], out=tmp_path / "filled", image_size=16, backbone=backbone)
    assert filled.counts["gap_filled"] == 1 and "gap_kept" not in filled.counts
    rows = {r["source_id"]: r for r in pq.read_table(tmp_path / "filled/catalog.parquet").to_pylist()}
    assert tuple(rows["a.jpg"][rank] for rank in RANKS) == HONEYEATER
    assert main(["build", "--source", f"csv:{source}", "--out", str(tmp_path / "cli"), "--image-size", "16"]) == 0
    summary = capsys.readouterr().out
    assert "1 rows had a gap in their ranks (e.g. family empty under a known order): 0 filled" in summary


def test_exclusion_key_sets_keep_the_first_file_and_match_exactly() -> None:
    """`KeySet` stores digests, not strings: a repeated entry keeps its first file, entries added after a
    lookup are still found, and a string differing by one character (or a prefix) does not match."""
    from treeclip.data.exclude import KeySet

    keys = KeySet()
    for i in range(3 * KeySet._CHUNK // 2):  # spans a chunk edge
        keys.add(f"csv:img{i}.jpg", "a.csv")
    keys.add("csv:img7.jpg", "b.csv")
    assert keys.get("csv:img7.jpg") == "a.csv" and len(keys) == 3 * KeySet._CHUNK // 2
    keys.add("csv:late.jpg", "b.csv")
    assert keys.get("csv:late.jpg") == "b.csv" and "csv:img7.jp" not in keys and "csv:img7.jpG" not in keys
    assert KeySet().get("anything") == ""


def test_dedup_compares_whole_sha256_not_its_prefix(tmp_path: Path) -> None:
    """Dedup buckets rows by an 8-byte prefix of their sha256: two images whose sha256 share that prefix land in
    one bucket and are distinct, a true copy is dropped with the kept key, and keys ending in zero digits keep
    all their hex digits."""
    import pyarrow as pa

    from treeclip.data import plan as plan_module
    from treeclip.data.exclude import Exclusions
    from treeclip.data.partitions import read_partition, write_partitioned

    twins = [b"\x01" * 8 + bytes([n]) * 24 for n in (1, 2)]  # same first 8 bytes, different sha256
    digests = [twins[0], twins[1], twins[0], b"\x02" * 32]
    rows = [{"position": i, "stable": f"csv:{i}", "key": f"{i:024x}", "source": "csv", "source_id": str(i),
             "path": f"/x/{i}.jpg", "origin": f"f:{i}", "license": "", "owner": "", "sha256": "", "member_tar": None,
             "member_offset": None, "member_size": None, **dict.fromkeys(RANKS, ""), "common": "", "digest": digest}
            for i, digest in enumerate(digests)]
    write_partitioned(pa.Table.from_pylist(rows, schema=plan_module._CANDIDATE_SCHEMA), np.zeros(4, np.int64), 1,
                      tmp_path / "bytes-000000.arrow")  # one id bucket's output, all in sha256 bucket 0
    buckets = plan_module._digest_bucket(pa.chunked_array([pa.array(twins, pa.binary(32))]), 7)
    assert buckets[0] == buckets[1]  # the twins meet in one bucket: only the whole digest tells them apart
    job = plan_module._BytesJob(0, val_fraction=0.0, seed=0, ranges=1, work=str(tmp_path), dropped=str(tmp_path))
    kept = plan_module.settle_bytes(job, Exclusions())
    problems = ProblemLog(tmp_path / "problems.csv")
    plan = plan_module.Plan(jobs=[], alignment=None, problems=problems,  # type: ignore[arg-type]
                            dropped_files=[kept.dropped])
    assert [(d["id"], d["kept_id"], d["origin"]) for d in plan.dropped_rows()] == [(rows[2]["key"], "0" * 24, "f:2")]
    assert kept.tally["duplicates"][0] == 1
    train = read_partition([tmp_path / "kept-000000.arrow"], 0, plan_module._RANGED_SCHEMA)  # its only range
    assert kept.counts.tolist() == [3, 0] and train.column("key").to_pylist() == [rows[i]["key"] for i in (0, 1, 3)]


def test_problem_log_writes_problems_csv_in_batches_and_reads_it_back(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """More problems than one write batch, with origins with and without a line and reasons that need CSV
    quoting: the file equals `problems_csv` of the list and reads back as the list (nothing held back or lost)."""
    from treeclip.formats.problems import Problem, problems_csv

    monkeypatch.setattr(ProblemLog, "batch_rows", 3)
    problems = [Problem(f"dir, with comma/t{i}.csv:{i + 1}", f'bad "row" {i}\nsecond line') for i in range(6)]
    problems += [Problem("C:/folder/no_line.csv", "no data rows"), Problem("a:b", "origin ends in no number")]
    log = ProblemLog(tmp_path / "log.csv")
    for problem in problems:
        log.append(problem)
    assert len(log) == 8 and list(log) == problems  # two of them not yet written
    log.append(Problem("late.csv:3", "after a read"))
    log.move(tmp_path / "problems.csv")
    assert not (tmp_path / "log.csv").exists()
    expected = [*problems, Problem("late.csv:3", "after a read")]
    assert (tmp_path / "problems.csv").read_text(encoding="utf-8") == problems_csv(expected)
    assert list(log) == expected


def test_problems_stream_to_problems_csv_in_source_order_across_buckets_and_batches(
        inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Problems are appended to a file as they are met: pass 1's from each source's job file in source order,
    then repeated ids (from the id buckets' sorted files) in source order, then bad images. With one-row id
    buckets and 2-row write batches, every problem is listed once, in that order, in problems.csv, in
    `result.problems` and in the manifest (a bug that read the job files in completion or bucket order, or
    lost the last unwritten batch, fails)."""
    from treeclip.data import plan

    monkeypatch.setattr(plan, "_BUCKET_ROWS", 1)
    monkeypatch.setattr(ProblemLog, "batch_rows", 2)
    images = inputs["csv"].parent / "images"
    img0, img1 = str(images / "img0.jpg"), str(images / "img1.jpg")
    first = tmp_path / "first.csv"
    first.write_text("path,species\n" f"{tmp_path}/none1.jpg,Morus bassanus\n{img0},Morus bassanus\n"
                     f"{img0},Morus bassanus\n{tmp_path}/none2.jpg,Morus bassanus\n")
    second = tmp_path / "second.csv"
    second.write_text("path,species\n" f"{tmp_path}/none3.jpg,Morus alba\n{img1},Morus alba\n{img1},Morus alba\n")
    result = build_dataset(sources=[f"csv:{first}", f"csv:{second}", f"csv:{inputs['csv']}"], out=tmp_path / "out",
                           image_size=16, shard_size=2, allow_absolute_paths=True)
    listed = list(csv.DictReader((tmp_path / "out/problems.csv").open(encoding="utf-8")))
    where = [(Path(p["file"]).name, p["line"], p["reason"].split(" ")[0]) for p in listed]
    assert where[:5] == [("first.csv", "2", "image"), ("first.csv", "5", "image"), ("second.csv", "2", "image"),
                         ("first.csv", "4", "source"), ("second.csv", "4", "source")]
    assert sorted(where[5:]) == [("catalog.csv", line, "bad") for line in ("10", "11", "9")]
    assert len(result.problems) == 8 and [f"{p.origin}: {p.reason}" for p in result.problems] == \
        result.manifest["problems"]["first"]
    assert result.counts["repeated_id"] == 2 and result.counts["bad_images"] == 3
    assert not (tmp_path / "out/.build/problems.csv").exists()


def _source_with_bad_images(root: Path, n: int, *, size: tuple[int, int] = (40, 30)) -> Path:
    """A csv: source of `n` images over three species, with a bad image (truncated, or not an image at all)
    after every fifth, so that the bad images fall in several shards of both splits."""
    lineages = [(HONEYEATER, "White-plumed Honeyeater"), (GANNET, "Northern Gannet"), (MULBERRY, "White Mulberry")]
    rows = []
    for i in range(n):
        good = write_jpeg(root / "img" / f"{i:04d}.jpg", seed=2000 + i, size=size)
        rows.append(row(f"img/{i:04d}.jpg", *lineages[i % 3]))
        if i % 5 == 2:
            bad = root / "img" / f"bad{i:04d}.jpg"
            bad.write_bytes(good.read_bytes()[: 100 + i] if i % 10 == 2 else f'not an image {i}, "quoted"\n'.encode())
            rows.append(row(f"img/bad{i:04d}.jpg", *lineages[i % 3]))
    return write_csv(root / "catalog.csv", rows)


def _changed_after_planning(image: Path) -> Callable[[int, int], None]:
    """A `progress` callback that changes `image`'s bytes when shard writing starts (after planning hashed it)."""
    original = image.read_bytes()

    def progress(done: int, total: int) -> None:
        if done == 0:
            image.write_bytes(original[:-2] + b"\0\0")

    progress.restore = lambda: image.write_bytes(original)  # type: ignore[attr-defined]
    return progress


OUTPUTS = ("catalog.parquet", "dropped.csv", "problems.csv", "manifest.json")


def test_bad_images_in_several_shards_listed_once_in_shard_order(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad images met while writing shards (undecodable, or changed since planning) are read back from the
    shards' journal entries: dropped.csv and problems.csv end with them in shard order (the order a one-worker
    build meets them), each once, whether shards finish in order, in 2 processes or in reverse order. Then a
    resume after a lost catalog part, a corrupted one (same size: only its sha256 tells) and a lost journal
    entry rewrites exactly those shards and gives the same bytes. Catches bad images merged in completion
    order, lost or listed twice, and a missing or corrupt catalog part skipped or trusted on resume."""
    from treeclip.data import build

    source = _source_with_bad_images(tmp_path / "src", 36)
    progress = _changed_after_planning(tmp_path / "src/img/0007.jpg")
    common = dict(sources=[f"csv:{source}"], image_size=16, shard_size=3, val_fraction=0.3, progress=progress)
    met: list[Problem] = []
    try:
        one = build_dataset(out=tmp_path / "one", workers=1, on_problem=met.append, **common)
        progress.restore()
        build_dataset(out=tmp_path / "two", workers=2, **common)
        progress.restore()
        monkeypatch.setattr(build, "map_unordered", lambda fn, jobs, **_: (fn(job) for job in reversed(jobs)))
        build_dataset(out=tmp_path / "reversed", workers=1, **common)
    finally:
        progress.restore()
    bad = [(p.origin, p.reason) for p in met if p.reason.startswith("bad image")]
    assert len(bad) == one.counts["bad_images"] == 8 and sum("file changed" in reason for _, reason in bad) == 1
    journals = [json.loads(p.read_text()) for p in (tmp_path / "one/.build/journal").glob("*.json")]
    assert len({j["shard"].split("/")[0] for j in journals if j["skipped"]}) == 2  # in train and val shards
    assert sum(1 for j in journals if j["skipped"]) >= 5
    dropped = list(csv.DictReader((tmp_path / "one/dropped.csv").open(encoding="utf-8")))
    assert [(d["origin"], d["reason"]) for d in dropped[-len(bad):]] == bad
    assert not any(d["reason"].startswith("bad image") for d in dropped[: -len(bad)])
    problems = [(p.origin, p.reason) for p in one.problems]
    assert problems == [(p.origin, p.reason) for p in met] and problems[-len(bad):] == bad
    for other in ("two", "reversed"):
        assert shard_bytes(tmp_path / other) == shard_bytes(tmp_path / "one")
        for name in OUTPUTS:
            assert (tmp_path / other / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (other, name)

    out = tmp_path / "reversed"
    entries = sorted((out / ".build/journal").glob("*.json"))
    with_bad = [p for p in entries if json.loads(p.read_text())["skipped"]]
    lost_part = with_bad[0]
    corrupt_part = next(p for p in with_bad[1:] if json.loads(p.read_text())["samples"])
    lost_journal = next(p for p in reversed(entries) if p not in (lost_part, corrupt_part))
    lost_part.with_suffix(".arrow").unlink()
    data = corrupt_part.with_suffix(".arrow").read_bytes()
    phylum = re.search(rb"Chordata|Tracheophyta", data)  # a taxon, not an id (those are checked against the tar)
    corrupt_part.with_suffix(".arrow").write_bytes(data[: phylum.end() - 1] + b"X" + data[phylum.end():])
    lost_journal.unlink()
    redo = {out / json.loads(p.read_text())["shard"] for p in (lost_part, corrupt_part)}
    redo.add(out / lost_journal.name.replace("-", "/shard-").replace(".json", ".tar"))
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.tar")}
    (out / "manifest.json").unlink()
    try:
        build_dataset(out=out, workers=1, resume=True, **common)
    finally:
        progress.restore()
    assert {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime} == redo
    assert shard_bytes(out) == shard_bytes(tmp_path / "one")
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_sigkill_with_bad_images_then_resume_lists_each_bad_image_once(tmp_path: Path) -> None:
    """A build with bad images in many shards, SIGKILLed once shards exist, then resumed: the kept shards'
    bad images come from their journal entries, the others' from the shards written again, so dropped.csv,
    problems.csv and the catalog equal an uninterrupted build's (a bad image lost or listed twice fails)."""
    source = _source_with_bad_images(tmp_path / "src", 200, size=(320, 300))
    common = ["--source", f"csv:{source}", "--image-size", "160", "--shard-size", "12", "--val-fraction", "0.1"]
    out, reference = tmp_path / "out", tmp_path / "reference"
    args = ["build", *common, "--out", str(out), "--workers", "2"]
    survivors = kill_once_shards_appear(args, out, timeout=60)
    assert survivors
    assert main([*args, "--resume"]) == 1  # the bad images
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in survivors.items()), "complete shards were rewritten"
    assert main(["build", *common, "--out", str(reference), "--workers", "1"]) == 1
    assert shard_bytes(out) == shard_bytes(reference)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    bad = [d for d in csv.DictReader((out / "dropped.csv").open(encoding="utf-8")) if d["reason"].startswith("bad")]
    assert len(bad) == len({d["id"] for d in bad}) == 40
