"""`treeclip predict / embed / index / search` end to end on a tiny model: odd and broken images, output
formats, resume after SIGKILL, EXIF orientation."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.cli import main
from treeclip.predict.classifier import ImageEmbedder
from treeclip.predict.writers import DWC_COLUMNS, RowWriter

PYBIOCLIP_COLUMNS = ["file_name", "kingdom", "phylum", "class", "order", "family", "genus", "species_epithet",
                     "species", "common_name", "score"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model_dir = export_tiny_model(root / "model")
    tiny_bank(model_dir, random_taxa(60), root / "bank")
    return {"root": root, "model": model_dir, "bank": root / "bank"}


def _photo(seed: int, size: tuple[int, int] = (48, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _halves(size: tuple[int, int] = (60, 30)) -> Image.Image:
    """Red top, blue bottom, a green stripe at the left: any rotation changes it."""
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (0, size[1] // 2, size[0], size[1]))
    image.paste((30, 200, 30), (0, 0, size[0] // 6, size[1]))
    return image


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming a huge image (no pixel data needed to be refused)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 4))


def _odd_and_broken(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Valid images in odd encodings, and broken files with the reason expected in the output."""
    folder.mkdir(parents=True, exist_ok=True)
    _photo(1).save(folder / "plain.jpg", quality=90)
    _photo(2).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray((np.random.default_rng(3).random((32, 48)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    rgba = _photo(4).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(5).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    data = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(_bomb_png())
    good = ["plain.jpg", "cmyk.jpg", "deep16.png", "alpha.png", "rotated.jpg"]
    broken = {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.jpg": "not an image",
              "bomb.png": "decompression bomb"}
    return good, broken


def test_odd_images_predicted_broken_ones_reported(setup: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good, broken = _odd_and_broken(tmp_path / "images")
    out = tmp_path / "pred.jsonl"
    code = main(["predict", str(tmp_path / "images"), "--model", str(setup["model"]), "--bank", str(setup["bank"]),
                 "--format", "jsonl", "--output", str(out), "--k", "2", "--batch-size", "3"])
    assert code == 1
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(Path(row["file_name"]).name, []).append(row)
    assert set(by_name) == set(good) | set(broken)
    for name in good:
        assert len(by_name[name]) == 2 and "error" not in by_name[name][0] and by_name[name][0]["species"]
    for name, reason in broken.items():
        assert len(by_name[name]) == 1 and reason in by_name[name][0]["error"]
        assert f"{name}: " in err and reason in err.split(f"{name}: ")[1].splitlines()[0]
    assert "4 of 9 images could not be read" in err


def test_exif_orientation_applied_before_the_model(setup: dict, tmp_path: Path) -> None:
    upright = _halves()
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels must be turned 90° clockwise for display
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    stored.save(tmp_path / "tagged.png", exif=exif.tobytes())
    stored.save(tmp_path / "untagged.png")
    embedder = ImageEmbedder.from_pretrained(str(setup["model"]))
    rows = embedder.predict([str(tmp_path / f"{name}.png") for name in ("upright", "tagged", "untagged")])
    vectors = {Path(row["path"]).stem: np.array(row["embedding"]) for row in rows}
    assert np.allclose(vectors["tagged"], vectors["upright"], atol=1e-5)
    assert not np.allclose(vectors["untagged"], vectors["upright"], atol=1e-3)


def test_csv_dwc_and_parquet_outputs(setup: dict, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        _photo(10 + i).save(folder / f"img{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"")
    common = ["--model", str(setup["model"]), "--bank", str(setup["bank"])]
    assert main(["predict", str(folder), *common, "--k", "3", "--output", str(tmp_path / "p.csv")]) == 1
    with open(tmp_path / "p.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == [*PYBIOCLIP_COLUMNS, "error"]
    assert len(rows) == 4 * 3 + 1 and rows[-1]["error"] == "empty file" and rows[-1]["score"] == ""
    family = tmp_path / "f.csv"
    assert main(["predict", str(folder / "img0.jpg"), *common, "--rank", "family", "--output", str(family)]) == 0
    assert family.read_text().splitlines()[0] == "file_name,kingdom,phylum,class,order,family,score,error"
    dwc_out = tmp_path / "d.csv"
    assert main(["predict", f"{folder}/img*.jpg", *common, "--format", "dwc", "--k", "1", "--output", str(dwc_out)]) == 0
    with open(dwc_out, newline="") as handle:
        dwc = list(csv.DictReader(handle))
    assert list(dwc[0]) == list(DWC_COLUMNS) and len(dwc) == 4
    assert dwc[0]["taxonRank"] == "species"
    assert dwc[0]["scientificName"] == f"{dwc[0]['genus']} {dwc[0]['specificEpithet']}"
    assert f"model {setup['model']}" in dwc[0]["identificationRemarks"] and "score" in dwc[0]["identificationRemarks"]
    parquet = tmp_path / "r.parquet"
    assert main(["predict", str(folder), *common, "--rollup", "0.9", "--format", "parquet", "--output", str(parquet)]) == 1
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(table) == 5 and not (tmp_path / "r.parquet.parts").exists()
    assert {row["rank"] for row in table if row["error"] is None} <= {"unknown", "kingdom", "phylum", "class", "order",
                                                                     "family", "genus", "species"}


def test_custom_labels_with_bins_and_list_file(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photo(20).save(tmp_path / "a.jpg")
    (tmp_path / "list.txt").write_text("a.jpg\n")
    (tmp_path / "labels.txt").write_text("red fox\ngrey wolf\nbarn owl\n")
    (tmp_path / "bins.csv").write_text("label,group\nred fox,canid\ngrey wolf,canid\nbarn owl,owl\n")
    code = main(["predict", f"@{tmp_path / 'list.txt'}", "--model", str(setup["model"]), "--labels",
                 f"@{tmp_path / 'labels.txt'}", "--bins", str(tmp_path / "bins.csv"), "--format", "jsonl"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["classification"] for row in rows) == ["canid", "owl"]
    assert sum(row["score"] for row in rows) == pytest.approx(1.0, abs=1e-5)


def test_usage_errors_are_one_line(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _photo(30).save(tmp_path / "a.jpg")
    local = ["--model", str(setup["model"]), "--bank", str(setup["bank"])]
    assert main(["predict", str(tmp_path / "missing.jpg"), *local]) == 2
    assert main(["predict", str(tmp_path / "a.jpg"), "--rank", "tribe", "--bank", str(setup["bank"])]) == 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["predict", str(tmp_path / "a.jpg")]) == 2  # the default hub model, not cached, offline
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "missing.jpg" in lines[0] and "tribe" in lines[1]
    assert "--model hf-hub:imageomics/bioclip-2: not in the local Hugging Face cache" in lines[2]
    assert "run `treeclip demo` for an offline one" in lines[2]
    import huggingface_hub

    def offline(**_: object) -> None:
        raise OSError("offline")

    (tmp_path / "hub" / "models--imageomics--bioclip-2" / "snapshots" / "abc").mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert main(["predict", str(tmp_path / "a.jpg")]) == 2  # model cached, its released bank not
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "TreeOfLife-200M" in line and "--model DIR --bank DIR" in line
    assert "treeclip-demo/model" in line and "treeclip-demo/bank" in line


def test_writer_repairs_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    rows = [{"file_name": name, "score": s} for name in ("a", "b", "c") for s in (0.5, 0.25)]
    with RowWriter(out, fmt="jsonl", columns=["file_name", "score"]) as writer:
        writer.write(rows[:4])
    with open(out, "a") as handle:  # killed while writing the next batch: c has one of its two rows
        handle.write(json.dumps(rows[4]) + '\n{"file_name": "d", "sco')
    with RowWriter(out, fmt="jsonl", columns=["file_name", "score"]) as writer:
        assert writer.done == {"a", "b"}
    assert [json.loads(line)["file_name"] for line in out.read_text().splitlines()] == ["a", "a", "b", "b"]


def test_resume_after_sigkill(setup: dict, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"img{i:03d}.png" for i in range(240)]
    for i, name in enumerate(names):
        _photo(100 + i, size=(24, 24)).save(folder / name)
    out = tmp_path / "pred.csv"
    command = [sys.executable, "-m", "treeclip", "predict", str(folder), "--model", str(setup["model"]),
               "--bank", str(setup["bank"]), "--k", "2", "--batch-size", "1", "--workers", "1", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.read_text().count("\n") > 10:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = list(csv.DictReader(io.StringIO(out.read_text())))
    assert 0 < len({row["file_name"] for row in first}) < len(names)  # really stopped half-way
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=180)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    counts: dict[str, int] = {}
    for row in rows:
        counts[Path(row["file_name"]).name] = counts.get(Path(row["file_name"]).name, 0) + 1
    assert sorted(counts) == names and set(counts.values()) == {2}


def test_embed_index_search(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss", reason="the vector index needs faiss-cpu")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        _photo(40 + i).save(folder / f"img{i}.png")
    (folder / "bad.png").write_bytes(b"junk")
    emb = tmp_path / "emb.parquet"
    assert main(["embed", str(folder), "--model", str(setup["model"]), "--output", str(emb)]) == 1
    table = pq.read_table(emb).to_pylist()
    vectors = np.array([row["embedding"] for row in table if row["embedding"] is not None])
    assert len(vectors) == 6 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert {row["model"] for row in table if row["error"] is None} == {str(setup["model"])}
    assert main(["index", str(emb), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), str(folder / "img3.png"), "--k", "3"]) == 0
    hits = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and hits[0][2].endswith("img3.png") and float(hits[0][1]) == pytest.approx(1.0, abs=1e-4)
    assert main(["search", str(tmp_path / "index"), "--text", "a photo of a fox", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_subset_checklist_from_the_command_line(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photo(50).save(tmp_path / "a.jpg")
    genus = json.loads((setup["bank"] / "txt_emb_species.json").read_text())[0][0][5]
    (tmp_path / "checklist.csv").write_text(f"genus\n{genus}\n")
    code = main(["predict", str(tmp_path / "a.jpg"), "--model", str(setup["model"]), "--bank", str(setup["bank"]),
                 "--subset", str(tmp_path / "checklist.csv"), "--k", "50", "--format", "jsonl"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {row["genus"] for row in rows} == {genus}
    assert sum(row["score"] for row in rows) == pytest.approx(1.0, abs=1e-5)


def test_subset_columns_names_a_checklist_column_no_rule_knows(setup: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    _photo(51).save(tmp_path / "a.jpg")
    genus = json.loads((setup["bank"] / "txt_emb_species.json").read_text())[0][0][5]
    (tmp_path / "checklist.csv").write_text(f"site,gattung\nplot 1,{genus}\n")
    argv = ["predict", str(tmp_path / "a.jpg"), "--model", str(setup["model"]), "--bank", str(setup["bank"]),
            "--subset", str(tmp_path / "checklist.csv"), "--k", "50", "--format", "jsonl"]
    assert main(argv) == 2  # no rank column recognised: one line, before any model loads
    assert "has no rank col" in capsys.readouterr().err
    assert main([*argv, "--columns", "genus=gattung"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {row["genus"] for row in rows} == {genus}
    assert main(argv[:6] + ["--columns", "genus=gattung"]) == 2  # --columns without --subset is a usage error
    assert "add --subset FILE" in capsys.readouterr().err
