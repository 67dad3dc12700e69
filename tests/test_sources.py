"""Source readers, each on a small fixture in its real layout generated here (a few tiny images each),
with the bad rows and files a real data set has."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import tarfile
from collections.abc import Iterable

import pytest
from PIL import Image

from treeclip.data.records import Problem, Record
from treeclip.data.sources import KINDS, open_source
from treeclip.errors import UsageError
from treeclip.formats.shards import read_member

Path = pathlib.Path


def jpeg(path: Path, colour: tuple[int, int, int] = (90, 120, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG")
    return path


def jpeg_bytes(colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def write_table(path: Path, header: list[str], rows: Iterable[list[str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def collect(spec: str) -> tuple[list[Record], list[Problem]]:
    items = list(open_source(spec).records())
    records = [item for item in items if isinstance(item, Record)]
    problems = [item for item in items if isinstance(item, Problem)]
    assert len(records) + len(problems) == len(items)
    for record in records:
        assert record.origin and record.source == spec.split(":")[0]
    return records, problems


def by_id(records: list[Record]) -> dict[str, Record]:
    return {record.source_id: record for record in records}


def reasons(problems: list[Problem]) -> str:
    return "\n".join(f"{p.origin} {p.reason}" for p in problems)


MORUS_PLANT = ["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"]
MORUS_BIRD = ["Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"]


# --- spec parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,message",
    [
        ("flickr:/tmp", r"unknown kind 'flickr'.*inat21, bioscan, eol, tol10m, csv, folder, wds"),
        ("/tmp/data.csv", "unknown kind"),
        ("csv:", "no path given"),
        ("csv:{tmp}/absent.csv", "CSV file not found"),
        ("folder:{tmp}/absent", "image directory not found"),
        ("inat21:{tmp}", "none of train, train_mini, val"),
        ("eol:{tmp}/m.csv", "missing taxonomy"),
        ("eol:{tmp}/m.csv,colour=red", "unknown option 'colour'"),
        ("tol10m:{tmp}/m.csv", "missing images"),
        ("bioscan:{tmp}/m.csv,{tmp},{tmp}", "too many fields"),
        ("wds:{tmp}/shards/*.tar", "no shard files match"),
    ],
)
def test_bad_specs_are_usage_errors_naming_the_spec(tmp_path: Path, spec: str, message: str) -> None:
    write_table(tmp_path / "m.csv", ["a"], [])
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(UsageError, match=message) as error:
        open_source(spec)
    assert repr(spec) in str(error.value)


def test_records_stream_lazily(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv", ["path", "genus", "species"], [["a.jpg", "Pica", "pica"]])
    stream = open_source(f"csv:{tmp_path / 't.csv'}").records()
    assert iter(stream) is stream and not isinstance(stream, (list, tuple))
    assert set(KINDS) == {"inat21", "bioscan", "eol", "tol10m", "csv", "folder", "wds", "download"}


# --- csv -------------------------------------------------------------------------------------------------


def test_csv_synth_layout_homonym_and_bad_rows(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        jpeg(tmp_path / "images" / name)
    header = ["path", "split", "kingdom", "phylum", "class", "order", "family", "genus", "species", "common"]
    table = write_table(
        tmp_path / "catalog.csv",
        header,
        [
            ["images/a.jpg", "train", *MORUS_PLANT, "White mulberry"],
            ["images/b.jpg", "val", *MORUS_BIRD, "Northern gannet"],
            ["images/c.jpg", "train", "Animalia", "Chordata"],  # malformed: too few fields
            ["images/missing.jpg", "train", *MORUS_BIRD, ""],
            ["images/d.jpg", "train", "Animalia", "Chordata", "Aves", "", "Sulidae", "Morus", "bassanus", ""],
            [str(tmp_path / "images" / "d.jpg"), "", "Animalia", "12345", "", "", "", "", "", ""],
        ],
    )
    records, problems = collect(f"csv:{table}")
    assert [r.source_id for r in records] == ["images/a.jpg", "images/b.jpg", "images/d.jpg"]
    plant, bird, gap = records
    assert plant.taxon.lineage == tuple(MORUS_PLANT) and plant.taxon.common == "White mulberry"
    assert bird.taxon.lineage == tuple(MORUS_BIRD) and bird.split_hint == "val"
    assert plant.taxon != bird.taxon and plant.taxon.genus == bird.taxon.genus == "Morus"
    assert plant.path == str(tmp_path / "images" / "a.jpg") and plant.origin == f"{table}:2"
    # a row with a gap (order empty) keeps its deepest unbroken run; the backbone/alignment fills the rest
    assert gap.taxon.lineage == ("", "", "", "", "Sulidae", "Morus", "bassanus")
    # exact row numbers, in row order: the malformed row is row 4, the rows after it keep theirs
    assert [p.origin for p in problems] == [f"{table}:4", f"{table}:5", f"{table}:7"]
    text = reasons(problems)
    assert "expected 10 fields, found 4" in text and "image not found" in text
    assert "leaves the table's folder" in text  # an absolute path is refused by default


def test_csv_tsv_with_cls_and_filepath_columns(tmp_path: Path) -> None:
    jpeg(tmp_path / "x.png")
    table = write_table(
        tmp_path / "list.tsv",
        ["filepath", "Kingdom", "Phylum", "cls", "Order", "Family", "genus", "species", "common_name"],
        [
            [
                "x.png",
                "Animalia",
                "Arthropoda",
                "Insecta",
                "Diptera",
                "Culicidae",
                "",
                "Aedes vexans",
                "floodwater mosquito",
            ]
        ],
        delimiter="\t",
    )
    (record,), problems = collect(f"csv:{table}")
    assert not problems
    assert record.taxon.lineage == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Culicidae", "Aedes", "vexans")
    assert record.taxon.common == "floodwater mosquito"


def test_csv_unclosed_quote_is_reported_not_swallowed(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    table = tmp_path / "t.csv"
    rows = ["path,genus,species", "a.jpg,Morus,alba", 'a.jpg,"Pica" x,pica', 'a.jpg,Pica,"pica', "a.jpg,Morus,alba"]
    table.write_text("\n".join(rows) + "\n")
    records, problems = collect(f"csv:{table}")
    # pyarrow reads '"Pica" x' leniently as 'Pica x'; the unclosed quote swallows the last line and is reported
    assert [r.taxon.scientific for r in records] == ["Morus alba", "Pica pica"]
    assert [p.origin for p in problems] == [f"{table}:4"]
    assert "spans several lines" in problems[0].reason and "unclosed quote" in problems[0].reason


def test_csv_without_path_column_is_one_problem(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv", ["genus", "species"], [["Pica", "pica"]])
    records, problems = collect(f"csv:{table}")
    assert not records and len(problems) == 1 and "no image path column" in problems[0].reason


# --- folder ------------------------------------------------------------------------------------------------


def test_folder_names_parsed_or_mapped(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    jpeg(root / "Pica hudsonia" / "1.jpg")
    jpeg(root / "Animalia Chordata Aves Passeriformes Corvidae" / "sub" / "2.jpg")
    jpeg(root / "03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata" / "3.jpg")
    jpeg(root / "Tomato___Late_blight" / "4.jpg")
    jpeg(root / "Pepper,_bell___healthy" / "5.jpg")
    (root / "Pica hudsonia" / "notes.txt").write_text("not an image")
    records, problems = collect(f"folder:{root}")
    ids = by_id(records)
    assert ids["Pica hudsonia/1.jpg"].taxon.lineage[5:] == ("Pica", "hudsonia")
    assert ids["Animalia Chordata Aves Passeriformes Corvidae/sub/2.jpg"].taxon.family == "Corvidae"
    ptilotula = next(r for r in records if r.source_id.endswith("3.jpg"))
    assert ptilotula.taxon.scientific == "Ptilotula penicillata" and ptilotula.taxon.kingdom == "Animalia"
    assert len(records) == 3
    assert sorted(Path(p.origin).name for p in problems) == ["Pepper,_bell___healthy", "Tomato___Late_blight"]

    mapping = write_table(
        tmp_path / "map.csv",
        ["folder", "kingdom", "phylum", "class", "order", "family", "genus", "species"],
        [
            [
                "tomato late blight",
                "Chromista",
                "Oomycota",
                "Oomycetes",
                "Peronosporales",
                "Peronosporaceae",
                "Phytophthora",
                "infestans",
            ],
            [
                "Pepper,_bell___healthy",
                "Plantae",
                "Tracheophyta",
                "Magnoliopsida",
                "Solanales",
                "Solanaceae",
                "Capsicum",
                "annuum",
            ],
        ],
    )
    records, problems = collect(f"folder:{root},{mapping}")
    assert not problems and len(records) == 5
    assert by_id(records)["Tomato___Late_blight/4.jpg"].taxon.scientific == "Phytophthora infestans"


def test_folder_split_layout(tmp_path: Path) -> None:
    jpeg(tmp_path / "train" / "Pica pica" / "a.jpg")
    jpeg(tmp_path / "val" / "Pica pica" / "b.jpg")
    records, problems = collect(f"folder:{tmp_path}")
    assert not problems
    splits = {r.source_id: r.split_hint for r in records}
    assert splits == {"train/Pica pica/a.jpg": "train", "val/Pica pica/b.jpg": "val"}


# --- inat21 ------------------------------------------------------------------------------------------------

GANNET_DIR = "00001_Animalia_Chordata_Aves_Suliformes_Sulidae_Morus_bassanus"
MULBERRY_DIR = "00002_Plantae_Tracheophyta_Magnoliopsida_Rosales_Moraceae_Morus_alba"


def inat_category(cid: int, ranks: list[str], common: str, dirname: str | None) -> dict[str, object]:
    keys = ["kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet"]
    category: dict[str, object] = {
        "id": cid,
        "name": f"{ranks[5]} {ranks[6]}",
        "common_name": common,
        "supercategory": "x",
        **dict(zip(keys, ranks)),
    }
    if dirname:
        category["image_dir_name"] = dirname
    return category


def test_inat21_json_wins_and_folder_fallback(tmp_path: Path) -> None:
    for split in ("train", "val", "train_mini"):
        jpeg(tmp_path / split / GANNET_DIR / f"{split}-g.jpg")
        jpeg(tmp_path / split / MULBERRY_DIR / f"{split}-m.jpg")
    (tmp_path / "val" / "not_a_class").mkdir()
    jpeg(tmp_path / "val" / "not_a_class" / "x.jpg")
    renamed = ["Animalia", "Chordata", "Aves", "Pelecaniformes", "Sulidae", "Morus", "bassanus"]
    train = {
        "info": {},
        "images": [
            {"id": 10, "file_name": f"train/{GANNET_DIR}/train-g.jpg"},
            {"id": 11, "file_name": f"train/{MULBERRY_DIR}/train-m.jpg"},
            {"id": 12, "file_name": f"train/{MULBERRY_DIR}/gone.jpg"},
        ],
        "categories": [
            inat_category(1, renamed, "Northern Gannet", GANNET_DIR),
            inat_category(2, MORUS_PLANT, "White Mulberry", None),  # no image_dir_name: use annotations
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1},
            {"id": 2, "image_id": 11, "category_id": 2},
            {"id": 3, "image_id": 12, "category_id": 2},
        ],
    }
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "train_mini.json").write_text(json.dumps(train)[:-40])  # truncated: unreadable
    records, problems = collect(f"inat21:{tmp_path}")
    ids = by_id(records)
    gannet = ids[f"train/{GANNET_DIR}/train-g.jpg"]
    assert gannet.taxon.order == "Pelecaniformes" and gannet.taxon.common == "Northern Gannet"  # JSON wins
    assert gannet.origin == f"{tmp_path / 'train.json'}:images[0]" and gannet.split_hint == "train"
    assert ids[f"train/{MULBERRY_DIR}/train-m.jpg"].taxon.common == "White Mulberry"
    # val has no JSON: folders, names still from train.json's categories where it has image_dir_name
    val_gannet = ids[f"val/{GANNET_DIR}/val-g.jpg"]
    assert val_gannet.taxon.order == "Pelecaniformes" and val_gannet.split_hint == "val"
    val_mulberry = ids[f"val/{MULBERRY_DIR}/val-m.jpg"]
    assert val_mulberry.taxon.lineage == tuple(MORUS_PLANT) and val_mulberry.taxon.common == ""
    assert val_mulberry.taxon != gannet.taxon
    # train_mini.json unreadable → reported, then read from folders
    assert f"train_mini/{GANNET_DIR}/train_mini-g.jpg" in ids
    assert len(records) == 2 + 2 + 2
    text = reasons(problems)
    assert "train_mini.json unreadable JSON" in text
    assert "images[2] image not found" in text and "not_a_class" in text
    assert len(problems) == 3


# --- bioscan -----------------------------------------------------------------------------------------------


def test_bioscan_layouts_missing_ranks_and_binomials(tmp_path: Path) -> None:
    images = tmp_path / "cropped_256"
    jpeg(images / "part18" / "5351601.jpg")
    jpeg(images / "BIOUG1-A01.jpg")
    header = [
        "sampleid",
        "processid",
        "phylum",
        "class",
        "order",
        "family",
        "subfamily",
        "genus",
        "species",
        "image_file",
        "chunk_number",
        "large_diptera_family",
    ]
    table = write_table(
        tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv",
        header,
        [
            [
                "S1",
                "P1",
                "Arthropoda",
                "Insecta",
                "Diptera",
                "Culicidae",
                "Culicinae",
                "not_classified",
                "Aedes vexans",
                "5351601.jpg",
                "18",
                "train",
            ],
            [
                "S2",
                "P2",
                "Arthropoda",
                "Insecta",
                "Diptera",
                "Cecidomyiidae",
                "not_classified",
                "not_classified",
                "not_classified",
                "BIOUG1-A01.jpg",
                "3",
                "no_split",
            ],
            ["S3", "P3", "Arthropoda", "Insecta", "Diptera", "Sciaridae", "", "", "", "absent.jpg", "4", "test"],
        ],
        delimiter="\t",
    )
    records, problems = collect(f"bioscan:{table},{images}")
    ids = by_id(records)
    assert ids["P1"].taxon.lineage == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Culicidae", "Aedes", "vexans")
    assert ids["P1"].path == str(images / "part18" / "5351601.jpg") and ids["P1"].split_hint == "train"
    assert ids["P2"].taxon.lineage == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae", "", "")
    assert ids["P2"].origin == f"{table}:3"
    assert len(problems) == 1 and problems[0].origin == f"{table}:4" and "absent.jpg" in problems[0].reason


def test_bioscan5m_split_chunk_layout(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "train" / "a" / "P9.jpg")
    table = write_table(
        tmp_path / "BIOSCAN_5M_Insect_Dataset_metadata.csv",
        ["processid", "phylum", "class", "order", "family", "genus", "species", "split", "chunk"],
        [["P9", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Bombus", "Bombus terrestris", "train", "a"]],
    )
    (record,), problems = collect(f"bioscan:{table},images={tmp_path / 'images'}")
    assert not problems and record.taxon.scientific == "Bombus terrestris" and record.split_hint == "train"


# --- eol -----------------------------------------------------------------------------------------------------

MANIFEST_HEADER = [
    "EOL content ID",
    "EOL page ID",
    "Medium Source URL",
    "EOL Full-Size Copy URL",
    "License Name",
    "Copyright Owner",
]


def eol_manifest(tmp_path: Path, pages: list[tuple[str, str]]) -> Path:
    images = tmp_path / "media"
    rows = []
    for content, page in pages:
        url = f"https://content.eol.org/data/media/7e/{content}.98765.jpg"
        rows.append([content, page, "https://example.org/src.jpg", url, "cc-by", f"owner {content}"])
    jpeg(images / f"{pages[0][0]}.jpg")
    for content, _ in pages[1:]:
        jpeg(images / f"{content}.98765.jpg")  # found by the full-size URL's basename
    return write_table(tmp_path / "media_manifest.csv", MANIFEST_HEADER, rows)


def test_eol_with_rank_table(tmp_path: Path) -> None:
    manifest = eol_manifest(tmp_path, [("100", "1"), ("101", "2"), ("102", "999")])
    taxonomy = write_table(
        tmp_path / "ranks.csv",
        ["eol_page_id", "kingdom", "phylum", "class", "order", "family", "genus", "species", "vernacular_name"],
        [["1", *MORUS_PLANT, "white mulberry"], ["2", *MORUS_BIRD, "northern gannet"]],
    )
    records, problems = collect(f"eol:{manifest},{tmp_path / 'media'},{taxonomy}")
    ids = by_id(records)
    assert ids["100"].taxon.lineage == tuple(MORUS_PLANT) and ids["100"].taxon.common == "white mulberry"
    assert ids["101"].path.endswith("101.98765.jpg") and ids["101"].license == "cc-by"
    assert ids["101"].owner == "owner 101" and ids["101"].taxon != ids["100"].taxon
    assert len(problems) == 1 and "page 999 is not in the taxonomy" in problems[0].reason
    # keyword form, image root defaulting to the manifest's folder (no images there → all missing)
    records, problems = collect(f"eol:{manifest},taxonomy={taxonomy}")
    assert not records and sum("not found" in p.reason for p in problems) == 2


def test_eol_parent_pointer_walk(tmp_path: Path) -> None:
    pages = [("200", "51"), ("201", "61"), ("202", "71"), ("203", "81"), ("204", "91"), ("205", "95")]
    manifest = eol_manifest(tmp_path, pages)
    header = ["taxonID", "parentNameUsageID", "taxonRank", "scientificName", "canonicalName", "eolID", "vernacularName"]
    nodes = [
        ["t1", "", "kingdom", "Plantae Haeckel, 1866", "Plantae", "", ""],
        ["t2", "t1", "phylum", "Tracheophyta", "Tracheophyta", "", ""],
        ["t3", "t2", "class", "Magnoliopsida", "Magnoliopsida", "", ""],
        ["t3b", "t3", "clade", "Rosids", "Rosids", "", ""],  # not one of the 7 ranks: passed through
        ["t4", "t3b", "order", "Rosales", "Rosales", "", ""],
        ["t5", "t4", "family", "Moraceae", "Moraceae", "", ""],
        ["t6", "t5", "genus", "Morus L.", "Morus", "", ""],
        ["t7", "t6", "species", "Morus alba L.", "Morus alba", "51", "white mulberry"],
        ["a1", "", "kingdom", "Animalia", "Animalia", "", ""],
        ["a2", "a1", "phylum", "Chordata", "Chordata", "", ""],
        ["a3", "a2", "class", "Aves", "Aves", "", ""],
        ["a4", "a3", "order", "Suliformes", "Suliformes", "", ""],
        ["a5", "a4", "family", "Sulidae", "Sulidae", "", ""],
        ["a6", "a5", "genus", "Morus Vieillot, 1816", "Morus", "", ""],
        ["a7", "a6", "species", "Morus bassanus (Linnaeus, 1758)", "Morus bassanus", "", ""],
        ["a8", "a7", "subspecies", "Morus bassanus x", "Morus bassanus x", "61", "northern gannet"],
        ["c1", "c2", "genus", "Loopus", "Loopus", "", ""],  # c1 → c2 → c1: a cycle
        ["c2", "c1", "family", "Loopidae", "Loopidae", "", ""],
        ["c3", "c1", "species", "Loopus loopus", "Loopus loopus", "71", ""],
        ["u1", "nowhere", "genus", "Orphanus", "Orphanus", "", ""],  # parent unknown: partial lineage
        ["u2", "u1", "species", "Orphanus solus", "Orphanus solus", "81", ""],
        ["g1", "a3", "family", "Gappidae", "Gappidae", "", ""],  # no order node: a gap under Aves
        ["g2", "g1", "genus", "Gappus", "Gappus", "", ""],
        ["g3", "g2", "species", "Gappus gappus", "Gappus gappus", "91", ""],
        ["s1", "a5", "species", "Sula sula", "Sula sula", "95", "red-footed booby"],  # no genus node
    ]
    taxonomy = write_table(tmp_path / "taxon.tab", header, nodes, delimiter="\t")
    records, problems = collect(f"eol:{manifest},images={tmp_path / 'media'},taxonomy={taxonomy}")
    ids = by_id(records)
    assert ids["200"].taxon.lineage == tuple(MORUS_PLANT) and ids["200"].taxon.common == "white mulberry"
    assert ids["201"].taxon.lineage == tuple(MORUS_BIRD) and ids["201"].taxon.common == "northern gannet"
    assert ids["203"].taxon.lineage == ("", "", "", "", "", "Orphanus", "solus")
    assert ids["204"].taxon.lineage == ("", "", "", "", "Gappidae", "Gappus", "gappus")
    assert ids["205"].taxon.lineage == ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Sula", "sula")
    assert len(problems) == 1 and "cycle" in problems[0].reason and problems[0].origin.endswith(":4")


def test_eol_unrecognised_taxonomy_is_a_problem(tmp_path: Path) -> None:
    manifest = eol_manifest(tmp_path, [("300", "1")])
    taxonomy = write_table(tmp_path / "other.csv", ["id", "name"], [["1", "Morus alba"]])
    records, problems = collect(f"eol:{manifest},{tmp_path / 'media'},{taxonomy}")
    assert not records
    assert "neither a 7-rank table" in problems[0].reason and "page 1 is not in the taxonomy" in problems[1].reason


# --- tol10m --------------------------------------------------------------------------------------------------

TOL_HEADER = [
    "split",
    "treeoflife_id",
    "eol_content_id",
    "eol_page_id",
    "bioscan_part",
    "bioscan_filename",
    "inat21_filename",
    "inat21_cls_name",
    "inat21_cls_num",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "species",
    "common",
]


def test_tol10m_catalog_layout(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    jpeg(root / "eol" / "aaaa-1.jpg")
    jpeg(root / "bioscan" / "part18" / "5351601.jpg")
    inat_name = "Animalia_Chordata_Aves_Suliformes_Sulidae_Morus_bassanus"
    jpeg(root / "inat21" / "train" / f"00001_{inat_name}" / "f00.jpg")
    insect = ["Animalia", "Arthropoda", "Insecta", "Diptera", "Culicidae", "", ""]
    rows = [
        ["train", "aaaa-1", "1234.0", "51.0", "", "", "", "", "", *MORUS_PLANT, "white mulberry"],
        [
            "val",
            "bbbb-2",
            "",
            "",
            "18.0",
            "5351601.jpg",
            "",
            "",
            "",
            *insect,
            "Animalia Arthropoda Insecta Diptera Culicidae",
        ],
        ["train", "cccc-3", "", "", "", "", "f00.jpg", inat_name, "1", *MORUS_BIRD, "Morus bassanus"],
        ["train_small", "cccc-3", "", "", "", "", "f00.jpg", inat_name, "1", *MORUS_BIRD, "Morus bassanus"],
        ["train", "dddd-4", "999", "1", "", "", "", "", "", *MORUS_PLANT, ""],
    ]
    catalog = write_table(tmp_path / "catalog.csv", TOL_HEADER, rows)
    records, problems = collect(f"tol10m:{catalog},{root}")
    ids = by_id(records)
    assert sorted(ids) == ["aaaa-1", "bbbb-2", "cccc-3"]
    assert ids["aaaa-1"].taxon.common == "white mulberry" and ids["aaaa-1"].path == str(root / "eol" / "aaaa-1.jpg")
    assert ids["bbbb-2"].taxon.family == "Culicidae" and ids["bbbb-2"].taxon.common == ""  # fallback dropped
    assert ids["bbbb-2"].split_hint == "val"
    assert ids["cccc-3"].taxon.lineage == tuple(MORUS_BIRD) and ids["cccc-3"].taxon.common == ""
    assert len(problems) == 1 and problems[0].origin == f"{catalog}:6" and "dddd-4" in problems[0].reason


# --- wds -----------------------------------------------------------------------------------------------------


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_wds_ours_and_released_style(tmp_path: Path) -> None:
    ours = {
        "kingdom": "Animalia",
        "phylum": "Chordata",
        "class": "Aves",
        "order": "Suliformes",
        "family": "Sulidae",
        "genus": "Morus",
        "species": "bassanus",
        "common": "Northern Gannet",
    }
    released_tag = b"a photo of kingdom Animalia phylum Arthropoda class Insecta order Diptera family Culicidae."
    image = jpeg_bytes()
    write_shard(
        tmp_path / "shards" / "train" / "shard-000000.tar",
        [
            ("s1", {"jpg": image, "taxon.json": json.dumps(ours).encode(), "sci.txt": b"a photo of Morus bassanus."}),
            (
                "s2",
                {
                    "jpg": image,
                    "taxonTag.txt": released_tag,
                    "taxonomic_name.txt": b"Animalia Arthropoda Insecta Diptera Culicidae",
                    "common_name.txt": b"Animalia Arthropoda Insecta Diptera Culicidae",
                },
            ),
            ("s3", {"jpg": image, "taxonomic_name.txt": b"Morus alba", "common_name.txt": b"white mulberry"}),
            ("s4", {"jpg": image, "taxon.json": b"{not json"}),
            ("s5", {"taxon.json": json.dumps(ours).encode()}),
        ],
    )
    lineage = json.dumps({"lineage": MORUS_PLANT}).encode()
    write_shard(tmp_path / "shards" / "val" / "shard-000000.tar", [("v1", {"png": image, "taxon.json": lineage})])
    records, problems = collect(f"wds:{tmp_path / 'shards'}")
    ids = by_id(records)
    assert ids["s1"].taxon.lineage == tuple(MORUS_BIRD) and ids["s1"].taxon.common == "Northern Gannet"
    # the image is not kept in memory: the record points at its member and carries its hash
    assert read_member(ids["s1"].member) == image and ids["s1"].sha256 == hashlib.sha256(image).hexdigest()
    assert ids["s1"].path == "" and ids["s1"].split_hint == "train"
    assert ids["s2"].taxon.lineage == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Culicidae", "", "")
    assert ids["s2"].taxon.common == ""
    assert ids["s3"].taxon.scientific == "Morus alba" and ids["s3"].taxon.common == "white mulberry"
    assert ids["v1"].taxon.lineage == tuple(MORUS_PLANT) and ids["v1"].split_hint == "val"
    assert ids["s1"].origin.endswith("train/shard-000000.tar:s1")
    assert sorted(p.origin.rsplit(":", 1)[1] for p in problems) == ["s4", "s5"]
    assert "unreadable taxon.json" in reasons(problems) and "no image" in reasons(problems)


def test_wds_brace_range_and_truncated_shard(tmp_path: Path) -> None:
    taxon = json.dumps({"genus": "Morus", "species": "alba"}).encode()
    samples = [(f"k{i}", {"jpg": jpeg_bytes((i * 40, 0, 0)) + bytes(3000), "taxon.json": taxon}) for i in range(4)]
    write_shard(tmp_path / "shard-000000.tar", samples[:2])
    broken = write_shard(tmp_path / "shard-000001.tar", samples[2:])
    with tarfile.open(broken) as tar:
        cut = tar.getmember("k3.jpg").offset_data + 100
    broken.write_bytes(broken.read_bytes()[:cut])  # ends inside k3's image
    records, problems = collect(f"wds:{tmp_path}/shard-{{000000..000001}}.tar")
    assert [r.source_id for r in records] == ["k0", "k1", "k2"]
    assert len(problems) == 1 and "unreadable shard" in problems[0].reason
    assert problems[0].origin == str(tmp_path / "shard-000001.tar")


@pytest.mark.parametrize("alias", ["path", "filepath", "file_path", "file_name", "filename", "image",
                                   "image_path", "file", "Image_Path"])
def test_every_path_alias_is_read_by_csv_source_and_exclusions(tmp_path: Path, alias: str) -> None:
    """One alias list for every table reader: an exclusion table keyed by the column a csv: source reads (the
    exclusion reader used to know only 5 of the 8 names, so such a table excluded nothing by path), and
    make-benchmark's catalog (it knew 3)."""
    from treeclip.data.exclude import load_exclusions  # noqa: PLC0415
    from treeclip.eval.heldout import read_catalog  # noqa: PLC0415

    jpeg(tmp_path / "pics/a.jpg")
    table = write_table(tmp_path / "t.csv", [alias, "genus", "species"], [["pics/a.jpg", "Pica", "pica"]])
    (record,), problems = collect(f"csv:{table}")
    assert not problems and Path(record.path) == (tmp_path / "pics/a.jpg").resolve()
    found = load_exclusions([table])
    assert len(found.paths) == 1 and found.paths.get(str((tmp_path / "pics/a.jpg").resolve())) == "t.csv"
    assert [Path(image.path) for image in read_catalog(table)] == [tmp_path / "pics/a.jpg"]


# --- sources read in parts -------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_table_sources_read_in_parts_give_the_whole_sources_items(tmp_path: Path, rows: int) -> None:
    """csv:, tol10m:, bioscan: and download: read part after part (`Source.parts`, `records(part)`) give the
    items the whole source gives, in its order; download: keeps a retried URL's final row even when it lies
    in a later part than the failed attempt (a per-part 'last row' would keep both or neither)."""
    from treeclip.data.download.journal import STATUS_COLUMNS  # noqa: PLC0415

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        jpeg(tmp_path / "dl" / "images" / name)
        jpeg(tmp_path / "images" / name)
    status = [dict(zip(STATUS_COLUMNS, [""] * len(STATUS_COLUMNS))) for _ in range(5)]
    for values, (key, outcome, image, genus) in zip(status, [
            ("k1", "error", "", "Morus"), ("k2", "ok", "images/a.jpg", "Morus"),
            ("k3", "ok", "images/gone.jpg", "Pica"), ("k1", "ok", "images/b.jpg", "Morus"),
            ("k4", "ok", "images/c.jpg", "Pica")]):
        values.update(key=key, outcome=outcome, path=image, genus=genus, species="alba", source="table",
                      source_id=key, reason="HTTP 500" if outcome == "error" else "")
    write_table(tmp_path / "dl" / "status.csv", list(STATUS_COLUMNS), [list(v.values()) for v in status])
    csv_rows = [["images/a.jpg", "Morus", "alba"], ["images/b.jpg", "Pica"], ["images/x.jpg", "Pica", "pica"],
                ["images/c.jpg", "Pica", "pica"]]
    tol_rows = [["a", "train", "Morus", "alba"], ["b", "train_small", "Pica", "pica"], ["c", "train", "Pica", "pica"],
                ["zz", "train", "Pica", "pica"]]
    bioscan_rows = [["P1", "a.jpg", "Diptera", "Aedes"], ["P2", "none.jpg", "Diptera", ""],
                    ["P3", "c.jpg", "Diptera", "phyMalaise01"]]
    tol = write_table(tmp_path / "t.csv", ["treeoflife_id", "split", "genus", "species"], tol_rows)
    bioscan = write_table(tmp_path / "m.tsv", ["processid", "image_file", "order", "genus"], bioscan_rows,
                          delimiter="\t")
    table = write_table(tmp_path / "c.csv", ["path", "genus", "species"], csv_rows)
    specs = [f"download:{tmp_path / 'dl'}", f"csv:{table}", f"tol10m:{tol},{tmp_path / 'images'}", f"bioscan:{bioscan},{tmp_path / 'images'}"]
    for index, spec in enumerate(specs):
        whole = list(open_source(spec).records())
        source = open_source(spec)
        parts = source.parts(rows=rows, prefix=str(tmp_path / f"part-{index}-{rows}"))
        assert len(parts) > 1 or rows == 3
        assert [item for part in parts for item in open_source(spec).records(part)] == whole, spec
    kept = [r.source_id for r in open_source(specs[0]).records() if isinstance(r, Record)]
    assert kept == ["table:k2", "table:k1", "table:k4"]


def colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def wds_spec(root: Path) -> str:
    """Four shards: samples with a repeated key and copied bytes across shards, a sample without an image, a
    shard cut inside a member (unreadable), one under val/."""
    lineage = json.dumps({"lineage": MORUS_PLANT}).encode()
    bird = json.dumps({"lineage": MORUS_BIRD}).encode()
    write_shard(root / "train" / "shard-000000.tar", [("w0", {"jpg": jpeg_bytes(colour(0)), "taxon.json": lineage}),
                                                      ("w1", {"jpg": jpeg_bytes(colour(1)), "taxon.json": bird})])
    write_shard(root / "train" / "shard-000001.tar", [("w2", {"taxon.json": bird}),
                                                      ("w1", {"jpg": jpeg_bytes(colour(2)), "taxon.json": bird}),
                                                      ("w3", {"jpg": jpeg_bytes(colour(0)), "taxon.json": lineage})])
    broken = write_shard(root / "train" / "shard-000002.tar",
                         [(f"w{i}", {"jpg": jpeg_bytes(colour(i)) + bytes(3000), "taxon.json": bird}) for i in (4, 5)])
    with tarfile.open(broken) as tar:
        cut = tar.getmember("w5.jpg").offset_data + 100
    broken.write_bytes(broken.read_bytes()[:cut])
    write_shard(root / "val" / "shard-000000.tar", [("v0", {"png": jpeg_bytes(colour(6)), "taxon.json": lineage})])
    return f"wds:{root}"


def folder_spec(root: Path) -> str:
    """Class folders (images in nested sub-folders, hidden files and folders, a text file, a link to a folder,
    which `os.walk` does not enter), a folder with sub-folders that is no taxon name, a mapping table with an
    unusable row, and the same bytes in two class folders."""
    jpeg(root / "Pica pica" / "a.jpg", colour(0))
    jpeg(root / "Pica pica" / "sub" / "b.jpg", colour(1))
    jpeg(root / "Pica pica" / "sub" / "deeper" / "c2.jpg", colour(8))
    jpeg(root / "Pica pica" / ".hidden.jpg", colour(2))
    jpeg(root / "Pica pica" / ".thumbs" / "t.jpg", colour(2))
    (root / "Pica pica" / "notes.txt").write_text("not an image")
    jpeg(root / ".cache" / "Pica pica" / "c.jpg", colour(3))
    jpeg(root / "Tomato___Late_blight" / "d.jpg", colour(4))
    jpeg(root / "Tomato___Late_blight" / "x" / "d2.jpg", colour(4))
    jpeg(root / "Tomato___Late_blight" / "y" / "d3.jpg", colour(4))
    jpeg(root / "Morus alba" / "e.jpg", colour(0))
    jpeg(root / "Morus alba" / "f.png", colour(5))
    jpeg(root / "Sula sula" / "g.jpg", colour(6))
    jpeg(root / "white mulberry" / "h.jpg", colour(7))
    (root / "Pica pica" / "link").symlink_to(root / "Sula sula", target_is_directory=True)
    mapping = write_table(root.parent / f"{root.name}-map.csv", ["folder", "genus", "species"],
                          [["nothing mapped", "", ""], ["White_Mulberry", "Morus", "alba"]])
    return f"folder:{root},{mapping}"


def eol_spec(root: Path) -> str:
    """A manifest (missing page, missing image, empty ids, copied bytes) and a rank taxonomy with a bad row."""
    pages = [("100", "1"), ("101", "2"), ("102", "999"), ("103", "1"), ("104", "2"), ("105", "1")]
    manifest = eol_manifest(root, pages)
    (root / "media" / "103.98765.jpg").unlink()
    (root / "media" / "105.98765.jpg").write_bytes((root / "media" / "100.jpg").read_bytes())
    for i, content in enumerate(("101", "104")):
        jpeg(root / "media" / f"{content}.98765.jpg", colour(10 + i))
    with manifest.open("a", encoding="utf-8") as handle:
        handle.write(",2,,,cc-by,nobody\n")
    taxonomy = write_table(root / "ranks.csv", ["eol_page_id", "kingdom", "phylum", "class", "order", "family",
                                                "genus", "species"],
                           [["1", *MORUS_PLANT], ["7", "", "", "", "", "", "", ""], ["2", *MORUS_BIRD]])
    return f"eol:{manifest},{root / 'media'},{taxonomy}"


SPLIT_SOURCES = {"wds": wds_spec, "folder": folder_spec, "eol": eol_spec}


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("kind", list(SPLIT_SOURCES))
def test_tar_folder_and_eol_sources_read_in_parts_give_the_whole_sources_items(tmp_path: Path, kind: str,
                                                                               rows: int) -> None:
    """wds: (a part per shard), folder: (runs of class folders) and eol: (manifest parts) read part after part
    give the whole source's records and problems in its order: a shard, folder or row read twice or skipped, or
    the taxonomy's / mapping table's problems reported by every part (or by none), fail."""
    spec = SPLIT_SOURCES[kind](tmp_path / kind)
    whole = list(open_source(spec).records())
    parts = open_source(spec).parts(rows=rows, prefix=str(tmp_path / "staged"))
    # 4 shards; 5 class folders, two of 3 images cut at sub-folders (one of them twice); 7 manifest rows
    assert len(parts) == {"wds": 4, "folder": 13 - 4 * rows, "eol": 10 - 3 * rows}[kind]
    assert [item for part in parts for item in open_source(spec).records(part)] == whole
    problems = reasons([item for item in whole if isinstance(item, Problem)])
    expected = {"wds": ["unreadable shard", "no image"],
                "folder": ["not a taxon name", "no taxonomic names"],
                "eol": ["page 999 is not in the taxonomy", "not found", "empty content id", "no taxonomic names"]}
    assert all(text in problems for text in expected[kind]), problems
    records = [item.source_id for item in whole if isinstance(item, Record)]
    assert {"wds": ["w0", "w1", "w1", "w3", "w4", "v0"],
            "folder": ["Morus alba/e.jpg", "Morus alba/f.png", "Pica pica/a.jpg", "Pica pica/sub/b.jpg",
                       "Pica pica/sub/deeper/c2.jpg", "Sula sula/g.jpg", "white mulberry/h.jpg"],
            "eol": ["100", "101", "104", "105"]}[kind] == records


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", list(SPLIT_SOURCES))
def test_tar_folder_and_eol_sources_in_parts_build_the_same_bytes(tmp_path: Path, kind: str, workers: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A build with parts of 1 row (a part per shard, per class folder piece, per manifest row; in worker
    processes too, the parts pickled) gives the one-part build's shards, catalog, dropped.csv, problems.csv and
    manifest byte for byte: a part's records placed at a wrong offset flip which of a repeated id or of a copy
    of bytes is kept."""
    from test_plan_partitions import build_outputs  # noqa: PLC0415

    from treeclip.data import plan as plan_module  # noqa: PLC0415

    from treeclip.data.sources.base import Source  # noqa: PLC0415

    spec = SPLIT_SOURCES[kind](tmp_path / kind)
    split_into = []
    real_split = plan_module._split

    def recording_split(*args: object, **kwargs: object) -> list[object]:
        parts = real_split(*args, **kwargs)
        split_into.append(len(parts))
        return parts

    monkeypatch.setattr(plan_module, "_split", recording_split)
    with monkeypatch.context() as one_part:  # the reference: the source read whole, as before it had parts
        one_part.setattr(type(open_source(spec)), "parts", Source.parts)
        whole = build_outputs([spec], tmp_path / "whole", 1)
    dropped = whole["dropped.csv"].decode()
    assert "exact duplicate" in dropped and (kind != "wds" or "repeated source id" in dropped)
    monkeypatch.setattr(plan_module, "_PART_ROWS", 1)
    assert build_outputs([spec], tmp_path / "parts", workers) == whole
    assert split_into == [1, {"wds": 4, "folder": 9, "eol": 7}[kind]]
