"""`--engine ray` for build, predict and embed: the same outputs as the local engine, resumable the same way.

All Ray tests share one module-scoped local Ray runtime with 2 CPUs (the CLI reuses a running session).
Without Ray installed they are skipped, except the check that `--engine ray` then exits 2 with the install
hint.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_build import (GANNET, HONEYEATER, MULBERRY, _kill_test_source, kill_once_shards_appear, read_samples, row,
                        shard_bytes, write_csv, write_jpeg)
from test_plan_partitions import build_outputs, split_inputs  # noqa: F401 - split_inputs is a fixture
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.cli import main

LINEAGES = (HONEYEATER, GANNET, MULBERRY)


@pytest.fixture(scope="module")
def ray_runtime() -> object:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'treeclip[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A csv: source of 14 small JPEGs over three species, plus one truncated file."""
    root = tmp_path_factory.mktemp("raysrc")
    rows = []
    for i in range(14):
        write_jpeg(root / "images" / f"img{i:02d}.jpg", seed=i, size=(40 + i, 36))
        rows.append(row(f"images/img{i:02d}.jpg", LINEAGES[i % 3], f"common {i % 3}"))
    good = (root / "images" / "img00.jpg").read_bytes()
    (root / "images" / "broken.jpg").write_bytes(good[: len(good) // 2])
    rows.append(row("images/broken.jpg", HONEYEATER, ""))
    return write_csv(root / "catalog.csv", rows)


@pytest.fixture(scope="module")
def predict_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raypredict")
    model_dir = export_tiny_model(root / "model")
    tiny_bank(model_dir, random_taxa(40), root / "bank")
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    from PIL import Image  # noqa: PLC0415

    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(images / f"p{i:02d}.png")
    (images / "zz_broken.jpg").write_bytes(b"not an image")
    return {"model": model_dir, "bank": root / "bank", "images": images}


def test_engine_ray_without_ray_exits_2(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["build", "--source", f"csv:{source}", "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    assert main(["predict", str(source.parent / "images"), "--model", "x", "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("pip install 'treeclip[ray]'") == 2
    assert main(["build", "--source", f"csv:{source}", "--out", str(tmp_path / "o2"), "--ray-address", "auto"]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


def test_unreachable_ray_address_is_a_usage_error(source: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'treeclip[ray]'")
    args = ["build", "--source", f"csv:{source}", "--out", str(tmp_path / "out"), "--engine", "ray"]
    assert main([*args, "--ray-address", "127.0.0.1:1"]) == 2
    assert "--ray-address 127.0.0.1:1: no Ray cluster answers there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before planning


def test_build_on_ray_equals_local_and_resumes(ray_runtime: object, source: Path, tmp_path: Path) -> None:
    common = ["--source", f"csv:{source}", "--image-size", "32", "--shard-size", "3", "--val-fraction", "0.2"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["build", *common, "--out", str(local), "--workers", "1"]) == 1  # the truncated image
    assert main(["build", *common, "--out", str(on_ray), "--workers", "2", "--engine", "ray"]) == 1
    expected = shard_bytes(local)
    assert len(expected) >= 4
    assert shard_bytes(on_ray) == expected
    assert (on_ray / "catalog.parquet").read_bytes() == (local / "catalog.parquet").read_bytes()
    for name in ("dropped.csv", "manifest.json", "alignment.json", "alignment.txt"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name

    # resume: a lost shard is rewritten on Ray, the others are kept untouched
    lost = sorted(on_ray.glob("train/shard-*.tar"))[1]
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in on_ray.glob("*/shard-*.tar")}
    (on_ray / "manifest.json").unlink()
    assert main(["build", *common, "--out", str(on_ray), "--engine", "ray", "--resume"]) == 1
    assert shard_bytes(on_ray) == expected
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    assert (on_ray / "manifest.json").is_file()


def test_partitioned_plan_on_ray_equals_local(ray_runtime: object, source: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With 4-row buckets every plan stage runs as several Ray tasks (pass 2 per source; repeated ids and
    hashing per id bucket; exclusion and dedup per sha256 bucket; shard order per range): every output,
    problems.csv included, equals a one-bucket local build's."""
    from treeclip.data import plan

    common = ["--source", f"csv:{source}", "--source", f"csv:{source}", "--image-size", "32", "--shard-size", "3",
              "--val-fraction", "0.2"]  # the source twice: its 15 ids are repeated ids the second time
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["build", *common, "--out", str(local), "--workers", "1"]) == 1
    monkeypatch.setattr(plan, "_BUCKET_ROWS", 4)  # the bucket counts travel in the Ray tasks' arguments
    assert main(["build", *common, "--out", str(on_ray), "--workers", "2", "--engine", "ray"]) == 1
    assert shard_bytes(on_ray) == shard_bytes(local) and len(shard_bytes(local)) >= 4
    for name in ("catalog.parquet", "dropped.csv", "problems.csv", "manifest.json"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    assert (local / "dropped.csv").read_text().count("repeated source id") == 15


def test_shared_input_is_put_in_the_object_store_once(ray_runtime: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """`map_unordered(shared=...)` on Ray (how the plan sends the alignment and the exclusions): one
    ``ray.put`` for all jobs, and every task gets the value behind the reference (a bug that sent it inside
    every job, or passed the reference itself, fails)."""
    import ray

    from treeclip.data.engines import map_unordered
    from treeclip.data.plan import id_group

    puts: list[object] = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value: puts.append(value) or real_put(value))
    jobs = [f"id{i}" for i in range(9)]
    got = sorted(map_unordered(id_group, jobs, engine="ray", workers=2, shared="shared-kind"))
    assert got == sorted(id_group(job, "shared-kind") for job in jobs)
    assert puts == ["shared-kind"]

def test_build_on_ray_sigkill_then_resume(ray_runtime: object, tmp_path: Path) -> None:
    """`treeclip build --engine ray` killed (SIGKILL, with its whole process group: driver, local Ray runtime
    and workers) while shards are being written, then resumed on Ray: every image exactly once, and every
    output byte-identical to an uninterrupted local build's."""
    n = 360
    source = _kill_test_source(tmp_path / "src", n)
    common = ["--source", f"csv:{source}", "--image-size", "160", "--shard-size", "6", "--val-fraction", "0.1"]
    out, reference = tmp_path / "ray", tmp_path / "local"
    args = ["build", *common, "--out", str(out), "--workers", "2", "--engine", "ray"]
    survivors = kill_once_shards_appear(args, out, timeout=180)
    assert survivors and len(survivors) < n // 6
    assert main([*args[:-2], "--engine", "ray", "--resume"]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in survivors.items()), "complete shards were rewritten"
    samples = read_samples(out)
    assert len(samples) == n and pq.read_table(out / "catalog.parquet").num_rows == n
    assert main(["build", *common, "--out", str(reference), "--workers", "1"]) == 0
    assert shard_bytes(out) == shard_bytes(reference)
    for name in ("catalog.parquet", "dropped.csv", "manifest.json", "alignment.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_ray_equals_local_and_resumes(ray_runtime: object, predict_setup: dict[str, Path],
                                                 tmp_path: Path) -> None:
    base = ["predict", str(predict_setup["images"]), "--model", str(predict_setup["model"]), "--bank",
            str(predict_setup["bank"]), "--rank", "genus", "--k", "3", "--batch-size", "2", "--workers", "1"]
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main([*base, "--output", str(local)]) == 1  # the broken file is an error row
    assert main([*base, "--output", str(on_ray), "--engine", "ray"]) == 1
    expected = _read_csv(local)
    assert len(expected) == 11 * 3 + 1 and expected[-1]["error"]
    assert _read_csv(on_ray) == expected

    # resume: keep the header and the first 4 images' rows plus a torn line; Ray finishes the rest
    lines = on_ray.read_text(encoding="utf-8").splitlines(keepends=True)
    on_ray.write_text("".join(lines[: 1 + 4 * 3]) + lines[13][:10], encoding="utf-8")
    assert main([*base, "--output", str(on_ray), "--engine", "ray"]) == 1
    assert _read_csv(on_ray) == expected


def test_embed_on_ray_equals_local(ray_runtime: object, predict_setup: dict[str, Path], tmp_path: Path) -> None:
    base = ["embed", str(predict_setup["images"]), "--model", str(predict_setup["model"]), "--batch-size", "3"]
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert main([*base, "--output", str(local)]) == 1
    assert main([*base, "--output", str(on_ray), "--engine", "ray"]) == 1
    assert pq.read_table(on_ray).to_pylist() == pq.read_table(local).to_pylist()


def test_sources_in_parts_on_ray_equal_local(ray_runtime: object, split_inputs: list[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A csv: and a Parquet source in 3-row parts (the csv staged by a Ray task), pass 1 and pass 2 one Ray
    task per part (the part size and each part's first record index travel in the tasks' arguments), with
    repeated ids and copies of bytes across parts: every output equals the one-part local build's."""
    from treeclip.data import plan

    local = build_outputs(split_inputs, tmp_path / "local", 1)
    monkeypatch.setattr(plan, "_PART_ROWS", 3)
    assert build_outputs(split_inputs, tmp_path / "ray", 2, "--engine", "ray") == local


def test_bad_images_in_several_shards_on_ray_equal_local(ray_runtime: object, tmp_path: Path) -> None:
    """Bad images met by the Ray shard tasks (undecodable, or changed after planning) in several shards of
    both splits: dropped.csv and problems.csv (read back from the journal entries in shard order), the catalog
    (from the tasks' catalog parts) and the manifest equal a one-worker local build's byte for byte; a resume
    on Ray after a lost catalog part rewrites that shard and gives the same bytes again (catches bad images
    merged in the order the tasks finish, or a shard's part not written by the Ray task)."""
    from test_build import OUTPUTS, _changed_after_planning, _source_with_bad_images

    from treeclip.data.build import build_dataset

    source = _source_with_bad_images(tmp_path / "src", 30)
    progress = _changed_after_planning(tmp_path / "src/img/0012.jpg")
    common = dict(sources=[f"csv:{source}"], image_size=16, shard_size=2, val_fraction=0.3, progress=progress)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    try:
        expected = build_dataset(out=local, workers=1, **common)
        progress.restore()
        got = build_dataset(out=on_ray, workers=2, engine="ray", **common)
        progress.restore()
        assert got.counts["bad_images"] == expected.counts["bad_images"] == 7
        assert shard_bytes(on_ray) == shard_bytes(local)
        for name in OUTPUTS:
            assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
        parts = sorted((on_ray / ".build/journal").glob("*.arrow"))
        assert len(parts) == len(expected.manifest["shards"])
        parts[len(parts) // 2].unlink()
        (on_ray / "manifest.json").unlink()
        build_dataset(out=on_ray, workers=2, engine="ray", resume=True, **common)
    finally:
        progress.restore()
    for name in OUTPUTS:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
