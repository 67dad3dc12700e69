"""Benchmark loaders on fixtures in each real layout, bad layouts → UsageError, and make-benchmark."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from treeclip.cli import main
from treeclip.data.exclude import load_exclusions
from treeclip.errors import UsageError
from treeclip.eval.benchmarks import load_task
from treeclip.data.records import Record
from treeclip.data.sources import open_source
from treeclip.eval.heldout import make_benchmark, read_species_list
from treeclip.predict.taxa import read_taxa

LINEAGE = ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae")


def _image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return str(path)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


RARE_HEADER = ["", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name", "filepath",
               "class"]


def _rare(root: Path) -> Path:
    rows = []
    for i, (genus, epithet, common) in enumerate([("Ptilotula", "penicillata", "White-plumed Honeyeater"),
                                                  ("Ptilotula", "penicillata", "White-plumed Honeyeater"),
                                                  ("Manorina", "melanocephala", "Noisy Miner")]):
        filepath = f"images/{genus}_{epithet}/{i}.jpg"
        _image(root / filepath)
        rows.append([str(i), *LINEAGE, genus, epithet, common, filepath, f"{genus} {epithet}"])
    _write_csv(root / "metadata.csv", RARE_HEADER, rows)
    return root


def test_rare_species_layout(tmp_path: Path) -> None:
    bench = load_task(f"rare:{_rare(tmp_path / 'rare')}")
    assert len(bench.paths) == 3 and bench.labels == [1, 1, 0]
    assert bench.class_names == ["Manorina melanocephala", "Ptilotula penicillata"]
    assert bench.taxonomic and bench.classes[1].family == "Meliphagidae"
    assert bench.class_strings("taxon_com")[1] == (
        "Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata with common name "
        "White-plumed Honeyeater")
    assert bench.class_strings("sci") == ["Manorina melanocephala", "Ptilotula penicillata"]
    assert bench.class_strings("com")[0] == "Noisy Miner"


def test_bioclip_csv_layout(tmp_path: Path) -> None:
    rows = [[str(i), _image(tmp_path / "img" / f"{i}.png").split("/")[-2] + f"/{i}.png", label]
            for i, label in enumerate(["Tomato___Late_blight", "Tomato___healthy", "Tomato___healthy"])]
    table = _write_csv(tmp_path / "plantvillage.csv", ["", "filepath", "class"], rows)
    bench = load_task(f"bioclip-csv:{table}")
    assert bench.labels == [0, 1, 1] and bench.class_names == ["Tomato___Late_blight", "Tomato___healthy"]
    assert not bench.taxonomic
    assert bench.class_strings("asis") == bench.class_strings("taxon_com") == bench.class_names


def test_metaalbum_layout(tmp_path: Path) -> None:
    root = tmp_path / "INS_Mini"
    rows = []
    for i, family in enumerate(["Coccinellidae", "Coccinellidae", "Apidae"]):
        _image(root / "images" / f"{i}.jpg")
        rows.append([f"{i}.jpg", family, "Insecta"])
    _write_csv(root / "labels.csv", ["FILE_NAME", "CATEGORY", "SUPER_CATEGORY"], rows)
    (root / "info.json").write_text(json.dumps({"dataset_name": "Insects", "image_column_name": "FILE_NAME",
                                                "category_column_name": "CATEGORY"}))
    bench = load_task(f"metaalbum:{root}")
    assert bench.class_names == ["Apidae", "Coccinellidae"] and bench.labels == [1, 1, 0]
    assert bench.classes[0].family == "Apidae"  # a family name is read as a taxon
    assert bench.paths[2].endswith("images/2.jpg")


def test_inat21_val_layout(tmp_path: Path) -> None:
    folder = tmp_path / "inat" / "val" / "03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata"
    _image(folder / "a.jpg")
    _image(folder / "b.jpg")
    bench = load_task(f"inat21:{tmp_path / 'inat'}")
    assert len(bench.paths) == 2 and bench.classes[0].scientific == "Ptilotula penicillata"
    assert bench.class_strings("sci") == ["Ptilotula penicillata"]


def write_synth(root: Path) -> Path:
    """A synth-like world: 2 genera × 2 species; Gb dura is held out (unseen)."""
    rows = []
    species = [("Ga", "alba", "train"), ("Ga", "bella", "train"), ("Gb", "cara", "train"), ("Gb", "dura", "unseen")]
    for genus, epithet, split in species:
        for i in range(6):
            row_split = "val" if split == "train" and i >= 4 else split
            path = f"images/{genus}_{epithet}/{i}.png"
            colour = (200 if genus == "Ga" else 20, 40 * i, 100 if epithet in ("alba", "cara") else 220)
            _image(root / path, colour)
            rows.append([path, row_split, "Animalia", "Chordata", "Aves", "Passeriformes", f"{genus}idae", genus,
                         epithet, f"bird {epithet}"])
    _write_csv(root / "catalog.csv", ["path", "split", "kingdom", "phylum", "class", "order", "family", "genus",
                                      "species", "common"], rows)
    return root


def test_synth_variants(tmp_path: Path) -> None:
    root = write_synth(tmp_path / "world")
    unseen = load_task(f"synth:{root}")
    assert [t.scientific for t in unseen.classes] == ["Gb dura"] and len(unseen.paths) == 6
    seen = load_task(f"synth:{root}:seen")
    assert [t.scientific for t in seen.classes] == ["Ga alba", "Ga bella", "Gb cara"] and len(seen.paths) == 6
    open_set = load_task(f"open=synth:{root}:open")
    assert open_set.name == "open"
    assert len(open_set.classes) == 4 and {open_set.labels[0]} == set(open_set.labels)
    assert open_set.classes[open_set.labels[0]].scientific == "Gb dura"


def test_csv_source_task(tmp_path: Path) -> None:
    root = write_synth(tmp_path / "world")
    bench = load_task(f"csv:{root / 'catalog.csv'}")
    assert len(bench.paths) == 24 and len(bench.classes) == 4


def test_folder_source_task(tmp_path: Path) -> None:
    for name in ("Passer domesticus", "Corvus corax"):
        _image(tmp_path / "photos" / name / "1.jpg")
    bench = load_task(f"folder:{tmp_path / 'photos'}")
    assert sorted(t.scientific for t in bench.classes) == ["Corvus corax", "Passer domesticus"]
    assert bench.class_strings("sci") == [t.scientific for t in bench.classes]


@pytest.mark.parametrize("spec, message", [
    ("nope:/x", "expected [NAME=]KIND:PATH"),
    ("rare", "expected [NAME=]KIND:PATH"),
    ("rare:{tmp}/missing", "metadata.csv not found"),
    ("metaalbum:{tmp}", "info.json not found"),
    ("synth:{tmp}:seen", "catalog.csv not found"),
    ("bioclip-csv:{tmp}/bad.csv", "missing column(s) class"),
    ("bioclip-csv:{tmp}/gone.csv", "image(s) not found"),
])
def test_bad_tasks_name_the_file_and_layout(tmp_path: Path, spec: str, message: str) -> None:
    _write_csv(tmp_path / "bad.csv", ["", "filepath"], [["0", "a.jpg"]])
    _write_csv(tmp_path / "gone.csv", ["", "filepath", "class"], [["0", "a.jpg", "x"]])
    with pytest.raises(UsageError, match=re.escape(message)):
        load_task(spec.format(tmp=tmp_path))


def _catalog(tmp_path: Path) -> Path:
    rows = []
    plan = {("Ptilotula", "penicillata"): ("eol", 5), ("Manorina", "melanocephala"): ("eol", 2),
            ("Passer", "domesticus"): ("eol", 4), ("Corvus", "corax"): ("eol", 4)}
    for (genus, epithet), (source, n) in plan.items():
        for i in range(n):
            path = _image(tmp_path / "pool" / f"{genus}_{epithet}_{i}.jpg", (10 * i, 50, 90))
            rows.append([f"{genus}{i}", "train", source, str(i), path, *LINEAGE[:4], "Fam", genus, epithet, "", ""])
    rows.append(["inat1", "train", "inat21", "x", "", *LINEAGE[:4], "Fam", "Passer", "domesticus", "", ""])
    header = ["id", "split", "source", "source_id", "path", "kingdom", "phylum", "class", "order", "family", "genus",
              "species", "common", "sha256"]
    return _write_csv(tmp_path / "catalog.csv", header, rows)


def test_make_benchmark(tmp_path: Path) -> None:
    species = tmp_path / "iucn.txt"
    species.write_text("Ptilotula penicillata (Gould, 1837)\nManorina melanocephala\nPasser domesticus\n"
                       "# comment\nCorvus corax\n")
    assert read_species_list(species)[0] == "Ptilotula penicillata"
    out = tmp_path / "bench"
    result = make_benchmark(catalog=_catalog(tmp_path), species_file=species, out_dir=out, images_per_species=3,
                            exclude_sources=["inat21"], seed=7)
    assert result.kept == {"Ptilotula penicillata": 3, "Corvus corax": 3}
    assert "inat21" in result.skipped["Passer domesticus"] and "only 2" in result.skipped["Manorina melanocephala"]
    bench = load_task(f"rare:{out}")
    assert len(bench.paths) == 6 and [t.scientific for t in bench.classes] == ["Corvus corax", "Ptilotula penicillata"]
    with open(out / "exclude.csv") as handle:
        excluded = list(csv.DictReader(handle))
    assert len(excluded) == 6 and set(excluded[0]) == {"species", "sha256", "path"}
    assert len(excluded[0]["sha256"]) == 64 and Path(excluded[0]["path"]).is_file()
    exclusions = load_exclusions([out / "exclude.csv"])  # what `treeclip build --exclude` reads
    assert set(exclusions.names) == {"ptilotula penicillata", "corvus corax"}
    assert all(row["sha256"] in exclusions.hashes for row in excluded)
    # round trip: the metadata.csv make-benchmark writes (,kingdom,phylum,cls,...,filepath,class) keeps every rank
    # right in eval, `bank build --taxonomy` and `build --source csv:` (the class rank used to become the genus)
    expected = {(*LINEAGE[:4], "Fam", "Corvus", "corax"), (*LINEAGE[:4], "Fam", "Ptilotula", "penicillata")}
    assert {t.lineage for t in bench.classes} == expected
    assert {t.lineage for t in read_taxa(out / "metadata.csv")} == expected
    records = [r for r in open_source(f"csv:{out / 'metadata.csv'}").records() if isinstance(r, Record)]
    assert len(records) == 6 and {r.taxon.lineage for r in records} == expected
    again = make_benchmark(catalog=tmp_path / "catalog.csv", species_file=species, out_dir=tmp_path / "b2",
                           images_per_species=3, exclude_sources=["inat21"], seed=7)
    assert again.kept == result.kept
    assert (out / "metadata.csv").read_text() == (tmp_path / "b2" / "metadata.csv").read_text()


def test_make_benchmark_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    species = tmp_path / "species.csv"
    _write_csv(species, ["scientific_name"], [["Corvus corax"]])
    argv = ["make-benchmark", "--catalog", str(_catalog(tmp_path)), "--species", str(species), "--images", "2",
            "--out", str(tmp_path / "out"), "--link", "symlink"]
    assert main(argv) == 0
    assert "1 species, 2 images" in capsys.readouterr().out
    assert (tmp_path / "out" / "images" / "Corvus_corax").is_dir()
    assert main([*argv[:2], str(tmp_path / "none.csv"), *argv[3:]]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err
