"""The format layer on real-format rows (headers and values copied from the public files in
shared/realdata-samples: BioCLIP's Rare Species and Meta-Album CSVs, BIOSCAN-1M's TSV, iNat2021's val.json,
the eBird checklist, BioCLIP's *_in_training.json), and the layouts issue 12 lists as broken."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from treeclip.data.exclude import load_exclusions
from treeclip.data.records import Problem, Record
from treeclip.data.sources import open_source
from treeclip.errors import UsageError
from treeclip.eval.benchmarks import load_task, split_task_specs
from treeclip.formats import open_table, parse_column_map, resolve, taxon_of
from treeclip.formats import tables
from treeclip.formats.columns import TAXON_ROLES
from treeclip.formats.shards import read_taxon_json
from treeclip.predict.taxa import read_taxa
from treeclip.taxonomy import Taxon

RARE_HEADER = ",kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class"
RARE_ROWS = [  # bioclip_rare_species_metadata_head30.csv
    "0,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata,purple wartyback,"
    "2024-03-20/12853737_449393_eol-full-size-copy.jpg,Cyclonaias tuberculata",
    "1,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata,purple wartyback,"
    "2024-03-20/21411803_449393_eol-full-size-copy.jpg,Cyclonaias tuberculata",
]
WARTYBACK = ("Animalia", "Mollusca", "Bivalvia", "Unionida", "Unionidae", "Cyclonaias", "tuberculata")
META_ALBUM_LABELS = ["rice leaf roller", "Mango flat beak leafhopper", "Katodinium_or_Torodinium",
                     "Chaetoceros_didymus_flagellate", "Corn Gray leaf spot", "Chaetoceros_didymus",
                     "Amanita excelsa Gonn. & Rabenh."]


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 120, 30)).save(path, format="JPEG")
    return path


def write(path: Path, lines: list[str], *, newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + newline).encode("utf-8"))
    return path


def records(spec: str, **options: object) -> tuple[list[Record], list[Problem]]:
    found, problems = [], []
    for item in open_source(spec, **options).records():  # type: ignore[arg-type]
        (problems if isinstance(item, Problem) else found).append(item)
    return found, problems


# --- cls / class ----------------------------------------------------------------------------------------


def test_bioclip_header_reads_cls_as_the_class_rank_and_class_as_the_label() -> None:
    header = RARE_HEADER.split(",")
    columns = resolve(header, (*TAXON_ROLES, "label"))
    assert columns["class"] == "cls" and columns["label"] == "class" and columns["common"] == "common_name"
    # a lone `class` beside other ranks is the rank (TreeOfLife-10M catalog); beside none it is the label
    assert resolve(["kingdom", "class", "order"], TAXON_ROLES)["class"] == "class"
    assert "class" not in resolve(["", "filepath", "class"], TAXON_ROLES)
    assert resolve(["", "filepath", "class"], ("label",))["label"] == "class"


def test_bioclip_csv_in_build_bank_and_eval_keeps_the_class_rank(tmp_path: Path) -> None:
    root = tmp_path / "rare"
    write(root / "metadata.csv", [RARE_HEADER, *RARE_ROWS], newline="\r\n", bom=True)
    for row in RARE_ROWS:
        jpeg(root / row.split(",")[9])
    built, problems = records(f"csv:{root / 'metadata.csv'}")
    assert not problems and [r.taxon.lineage for r in built] == [WARTYBACK, WARTYBACK]
    assert built[0].taxon.common == "purple wartyback"
    assert [t.lineage for t in read_taxa(root / "metadata.csv")] == [WARTYBACK]  # bank build --taxonomy
    task = load_task(f"rare:{root}")
    assert [t.lineage for t in task.classes] == [WARTYBACK] and task.class_names == ["Cyclonaias tuberculata"]
    assert task.default_text_type == "taxon_com"
    assert task.class_strings("taxon_com") == [
        "Animalia Mollusca Bivalvia Unionida Unionidae Cyclonaias tuberculata with common name purple wartyback"]


def test_columns_option_maps_layouts_no_rule_guesses() -> None:
    assert parse_column_map("class=cls, species=epithet") == {"class": "cls", "species": "epithet"}
    assert resolve(["Klasse", "Gattung"], TAXON_ROLES, {"class": "Klasse", "genus": "Gattung"}) == {
        "class": "Klasse", "genus": "Gattung"}
    with pytest.raises(UsageError, match="has no column 'nope'"):
        resolve(["a"], TAXON_ROLES, {"genus": "nope"})
    with pytest.raises(UsageError, match="expected ROLE=COLUMN"):
        parse_column_map("genus")


def test_darwin_core_and_checklist_variants(tmp_path: Path) -> None:
    dwc = write(tmp_path / "dwc.tsv", ["dwc:kingdom\tdwc:class\tdwc:scientificName\tdwc:vernacularName",
                                      "Animalia\tAves\tPasser domesticus (Linnaeus, 1758)\tHouse Sparrow"])
    (taxon,) = read_taxa(dwc)
    # kingdom and class with no phylum/order/family: the deepest unbroken run is kept (the backbone fills the rest)
    assert taxon.lineage == ("", "", "", "", "", "Passer", "domesticus") and taxon.common == "House Sparrow"
    ebird = write(tmp_path / "ebird.csv", [  # ebird2024_taxonomy_head30.csv
        "scientific_name,ebird_common_name,ebird_ebird_code,ebird_order,ebird_family,genus",
        "Struthio camelus,Common Ostrich,ostric2,Struthioniformes,Struthionidae,Struthio"])
    (ostrich,) = read_taxa(ebird)
    assert ostrich.lineage[3:] == ("Struthioniformes", "Struthionidae", "Struthio", "camelus")
    assert ostrich.common == "Common Ostrich"


# --- eval labels ----------------------------------------------------------------------------------------


def test_meta_album_labels_are_verbatim_and_never_merge(tmp_path: Path) -> None:
    rows = [",filepath,class"]
    for index, label in enumerate(META_ALBUM_LABELS):
        jpeg(tmp_path / f"{index}.jpg")
        rows.append(f'{index},{index}.jpg,"{label}"')
    task = load_task(f"bioclip-csv:{write(tmp_path / 'metadata.csv', rows)}")
    assert task.default_text_type == "asis"
    assert sorted(task.class_strings("asis")) == sorted(META_ALBUM_LABELS)
    for kind in ("sci", "taxon_com", "com"):  # 7 classes, 7 texts for every text type
        assert len(set(task.class_strings(kind))) == 7, kind
    assert "rice leaf roller" in task.class_strings("sci")


def test_two_classes_with_one_text_is_an_error_naming_both(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    header = ",kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class"
    rows = [header, "0,Animalia,Chordata,Aves,Passeriformes,Passeridae,Passer,domesticus,,a.jpg,sparrow A",
            "1,Animalia,Chordata,Aves,Passeriformes,Passeridae,Passer,domesticus,,a.jpg,sparrow B"]
    task = load_task(f"bioclip-csv:{write(tmp_path / 'm.csv', rows)}")
    assert task.class_strings("asis") == ["sparrow A", "sparrow B"]
    with pytest.raises(UsageError, match="'sparrow A' and 'sparrow B' both get the text"):
        task.class_strings("sci")
    # no common name: BioCLIP's fallback, never "X with common name X"
    assert "with common name" not in task.texts("sci_com")[0]


def test_task_specs_keep_their_own_commas() -> None:
    assert split_task_specs(["a=folder:/d,/t.csv,b=rare:/r", "inat21:/i"]) == [
        "a=folder:/d,/t.csv", "b=rare:/r", "inat21:/i"]
    with pytest.raises(UsageError, match=r"expected \[NAME=\]KIND:PATH\[,EXTRA\]"):
        split_task_specs(["/just/a/path"])


def test_inat21_eval_takes_common_names_from_the_json(tmp_path: Path) -> None:
    known = "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"
    unknown = "03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata"
    jpeg(tmp_path / "val" / known / "a.jpg")
    jpeg(tmp_path / "val" / unknown / "b.jpg")
    category = {"id": 0, "name": "Lumbricus terrestris", "common_name": "Common Earthworm", "kingdom": "Animalia",
                "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida", "family": "Lumbricidae",
                "genus": "Lumbricus", "specific_epithet": "terrestris", "image_dir_name": known}
    (tmp_path / "val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [category]}))
    task = load_task(f"inat21:{tmp_path}")
    commons = {t.scientific: t.common for t in task.classes}
    assert commons == {"Lumbricus terrestris": "Common Earthworm", "Ptilotula penicillata": ""}


# --- image names and folder layouts ---------------------------------------------------------------------


def test_eol_images_with_the_downloaders_hyphenated_name(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "2024-03-20" / "12853737_449393_eol-full-size-copy.jpg")
    manifest = write(tmp_path / "media.csv", ["EOL content ID,EOL page ID,License Name,Copyright Owner",
                                              "12853737,449393,cc-by-nc-sa-3.0,Someone"])
    taxonomy = write(tmp_path / "taxa.csv", ["page_id,kingdom,phylum,class,order,family,genus,species",
                                             "449393,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,"
                                             "tuberculata"])
    found, problems = records(f"eol:{manifest},{tmp_path / 'images'},{taxonomy}")
    assert not problems and found[0].taxon.lineage == WARTYBACK and found[0].license == "cc-by-nc-sa-3.0"


def test_rare_species_as_downloaded_and_hyphen_folders(tmp_path: Path) -> None:
    folder = "Animalia-Mollusca-Bivalvia-Unionida-Unionidae-Cyclonaias-tuberculata"
    jpeg(tmp_path / folder / "12853737_449393.jpg")
    write(tmp_path / "metadata.csv", [
        "rarespecies_id,eol_content_id,eol_page_id,kingdom,phylum,class,order,family,genus,species,sciName,common,"
        "file_name",
        "75fd91cb-2881-41cd-88e6-de451e8b60e2,12853737,449393,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,"
        "Cyclonaias,tuberculata,Cyclonaias tuberculata,purple wartyback,12853737_449393.jpg"])
    task = load_task(f"rare:{tmp_path}")
    assert [t.lineage for t in task.classes] == [WARTYBACK] and task.classes[0].common == "purple wartyback"
    found, problems = records(f"folder:{tmp_path}")
    assert not problems and [r.taxon.lineage for r in found] == [WARTYBACK]


# --- BIOSCAN --------------------------------------------------------------------------------------------

BIOSCAN_HEADER = ("processid\tphylum\tclass\torder\tfamily\tsubfamily\tgenus\tspecies\timage_file\tlicence\t"
                  "licence_holder")


@pytest.mark.parametrize("genus, species, expected", [
    ("phyMalaise01", "", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "", "")),
    ("eulophMalaise01", "eulophMalaise01 sp1", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "", "")),
    ("ChrysSA", "", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "", "")),
    ("AlticinaeGEN", "", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "", "")),
    ("Dalbominus", "Dalbominus Malaise5255", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae",
                                              "Dalbominus", "")),
    ("Hydroporus", "Hydroporus striola", ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae",
                                          "Hydroporus", "striola")),
])
def test_bioscan_placeholders_cut_back_never_dropped(tmp_path: Path, genus: str, species: str,
                                                     expected: tuple[str, ...]) -> None:
    jpeg(tmp_path / "4286925.jpg")
    row = (f"PLECF2633-20\tArthropoda\tInsecta\tDiptera\tPhoridae\t\t{genus}\t{species}\t4286925.jpg\t"
           "CreativeCommons - Attribution\tCentre for Biodiversity Genomics")
    found, problems = records(f"bioscan:{write(tmp_path / 'meta.tsv', [BIOSCAN_HEADER, row])}")
    assert not problems and found[0].taxon.lineage == expected
    assert found[0].license == "CreativeCommons - Attribution"
    assert found[0].owner == "Centre for Biodiversity Genomics"


# --- species-only labels and backbones ------------------------------------------------------------------


def test_species_only_labels_build_with_partial_backbones(tmp_path: Path) -> None:
    from treeclip.data.build import build_dataset  # noqa: PLC0415

    jpeg(tmp_path / "img" / "a.jpg")
    table = write(tmp_path / "labels.csv", ["path,scientific_name", "img/a.jpg,Struthio camelus"])
    checklist = write(tmp_path / "ebird.csv", [
        "scientific_name,ebird_common_name,ebird_ebird_code,ebird_order,ebird_family,genus",
        "Struthio camelus,Common Ostrich,ostric2,Struthioniformes,Struthionidae,Struthio"])
    above = write(tmp_path / "orders.csv", ["kingdom,phylum,class,order",
                                            "Animalia,Chordata,Aves,Struthioniformes"])
    result = build_dataset(sources=[f"csv:{table}"], out=tmp_path / "out", image_size=16,
                           backbone=[checklist, above])
    assert result.counts["samples"] == 1
    import pyarrow.parquet as pq  # noqa: PLC0415

    (row,) = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pylist()
    assert (row["kingdom"], row["class"], row["order"], row["species"]) == ("Animalia", "Aves",
                                                                            "Struthioniformes", "camelus")
    assert row["common"] == "Common Ostrich"


# --- hostile CSV catalogs (issue 14) --------------------------------------------------------------------


def test_catalog_paths_cannot_leave_the_catalog_folder(tmp_path: Path) -> None:
    jpeg(tmp_path / "outside.jpg")
    table = write(tmp_path / "cat" / "c.csv", ["path,genus,species", "/etc/shadow,Passer,domesticus",
                                                "../outside.jpg,Passer,domesticus"])
    found, problems = records(f"csv:{table}")
    assert not found and len(problems) == 2 and all("leaves the table's folder" in p.reason for p in problems)
    found, _ = records(f"csv:{table}", allow_absolute_paths=True)
    assert "outside.jpg" in [Path(r.path).name for r in found]  # the user allowed it
    nested = write(tmp_path / "cat" / "n.csv", ["path,genus,species", "sub/../../outside.jpg,Passer,domesticus"])
    found, problems = records(f"csv:{nested}")
    assert not found and "leaves the table's folder" in problems[0].reason


def test_duplicate_header_columns_are_refused(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    table = write(tmp_path / "c.csv", ["path,genus,species,genus", "a.jpg,Passer,domesticus,Corvus"])
    found, problems = records(f"csv:{table}")  # one problem for the file; other sources of a build still run
    assert not found and "column 'genus' appears 2 times" in problems[0].reason
    with pytest.raises(UsageError, match="column 'genus' appears 2 times"):
        read_taxa(table)  # a taxonomy file of bank build: a usage error (exit 2) naming the file


def test_invalid_utf8_and_multiline_names_are_problems(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    table = tmp_path / "c.csv"
    table.write_bytes(b'path,genus,species,common\na.jpg,Passer,domesticus,House \xff sparrow\n'
                      b'a.jpg,"Passer\ndomesticus",x,\na.jpg,Corvus,corax,Raven\n')
    found, problems = records(f"csv:{table}")
    assert [r.taxon.scientific for r in found] == ["Corvus corax"]
    assert "not valid UTF-8" in problems[0].reason and "spans several lines" in problems[1].reason


def test_row_numbers_are_exact_after_malformed_multiline_and_blank_rows(tmp_path: Path) -> None:
    """Origins are 'file:N' with N the row as a spreadsheet shows it (header row 1, a quoted value spanning
    lines one row, blank lines not rows), also for the rows after a malformed one and for the malformed row."""
    rows = [row.replace("2024-03-20/", "") for row in RARE_ROWS]
    for row in rows:
        jpeg(tmp_path / row.split(",")[9])
    multiline = '"4\nsecond line",' + rows[0].split(",", 1)[1]  # the unused index column spans two lines
    table = write(tmp_path / "metadata.csv", [RARE_HEADER, rows[0], rows[1] + ",extra field", "", multiline, "",
                                              rows[1].replace("tuberculata,purple", "tuberculata,,purple"),
                                              rows[1]], newline="\r\n")
    found, problems = records(f"csv:{table}")
    assert [r.origin for r in found] == [f"{table}:2", f"{table}:4", f"{table}:6"]
    assert [(p.origin, p.reason.split(" (")[0]) for p in problems] == [
        (f"{table}:3", "malformed row skipped"), (f"{table}:5", "malformed row skipped")]


def test_row_numbers_match_a_python_csv_count_across_blocks(tmp_path: Path) -> None:
    """A table of several CSV blocks with malformed, multi-line and blank rows: every good row's number and
    every malformed row's number is its record number as Python's csv module counts them."""
    import csv  # noqa: PLC0415
    import random  # noqa: PLC0415

    chance = random.Random(7)
    lines = ["id,genus,species"]
    for i in range(150_000):
        draw = chance.random()
        lines.append(f"{i},Passer,domesticus,x" if draw < 0.002 else f'{i},"Passer\nmulti",domesticus'
                     if draw < 0.004 else "" if draw < 0.006 else f"{i},Passer,domesticus{'x' * (i % 30)}")
    path = write(tmp_path / "big.csv", lines)
    with open(path, newline="") as handle:
        records_in_order = [row for row in csv.reader(handle) if row]
    expected_good = {n: row[0] for n, row in enumerate(records_in_order, 1) if n > 1 and len(row) == 3}
    expected_bad = [n for n, row in enumerate(records_in_order, 1) if len(row) != 3]
    good, bad = {}, []
    for item in open_table(path).rows({"id": "id"}):
        if isinstance(item, Problem):
            bad.append(int(item.origin.rsplit(":", 1)[1]))
        else:
            good[item[0]] = item[1]["id"]
    assert path.stat().st_size > 4 * tables._BLOCK_BYTES and len(expected_bad) > 200
    assert good == expected_good and bad == expected_bad


@pytest.mark.parametrize("rows", [1, 2, 7, 1000])
def test_table_parts_read_exactly_as_the_whole_table(tmp_path: Path, rows: int) -> None:
    """`Table.parts` (a CSV/TSV staged to Arrow files, a Parquet file cut at row groups) read part after part
    gives the whole table's rows, values, row numbers and problems, in the same order: malformed rows before,
    between and after the rows, a non-UTF-8 value, a multi-line value, blank lines, CRLF."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    body = [RARE_HEADER, "x,y", *RARE_ROWS, "", '"5\nlines",' + RARE_ROWS[0].split(",", 1)[1], "bad,row", "",
            *RARE_ROWS, RARE_ROWS[1] + ",extra", RARE_ROWS[0], "last,bad", "also,bad"]
    text = ("\r\n".join(body) + "\r\n").encode().replace(b"purple wartyback", b"purple \xffwartyback", 1)
    (tmp_path / "t.csv").write_bytes(text)
    (tmp_path / "t.tsv").write_bytes(text.replace(b",", b"\t"))
    pq.write_table(pa.table({"genus": [f"G{i}" for i in range(11)], "id": list(range(11))}), tmp_path / "t.parquet",
                   row_group_size=3)
    for name, columns in (("t.csv", {"g": "genus", "c": "common_name", "n": ""}), ("t.tsv", {"g": "genus"}),
                          ("t.parquet", {"g": "genus", "id": "id"})):
        table = open_table(tmp_path / name)
        whole = list(table.rows(columns))
        parts = open_table(tmp_path / name).parts(columns, rows=rows, prefix=str(tmp_path / f"{name}-{rows}"))
        group_rows = -(-rows // 3) * 3  # Parquet: whole row groups of 3
        assert len(parts) == (-(-11 // group_rows) if name == "t.parquet" else -(-table.read // rows))
        assert [item for part in parts for item in open_table(tmp_path / name).rows(columns, part)] == whole, name
        assert sum(isinstance(item, Problem) for item in whole) >= (0 if name == "t.parquet" else 5)


def test_parquet_parts_never_end_on_empty_row_groups(tmp_path: Path) -> None:
    """A Parquet file whose last row group is empty (other writers make them): no part is left without rows,
    so reading it part by part gives no 'no data rows' problem that the whole file does not give."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from treeclip.data.sources.base import table_rows  # noqa: PLC0415

    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, pa.schema([("genus", pa.string())])) as writer:
        for names in (["Aedes", "Morus", "Pica"], ["Corvus", "Passer"], []):
            writer.write_table(pa.table({"genus": pa.array(names, pa.string())}))
    parts = open_table(path).parts({"g": "genus"}, rows=2, prefix="")
    items = [item for part in parts for item in table_rows(path, "t", lambda t: {"g": "genus"}, part)]
    assert len(parts) == 2 and [item[1] for item in items] == [2, 3, 4, 5, 6]


def test_header_only_catalog_is_a_problem(tmp_path: Path) -> None:
    found, problems = records(f"csv:{write(tmp_path / 'c.csv', ['path,genus,species'])}")
    assert not found and [p.reason for p in problems] == ["no data rows (only a header)"]


def test_tabs_inside_names_are_spaces_not_cuts() -> None:
    assert taxon_of({"genus": "Passer", "species": "domesticus", "common": "House\tsparrow"}, "x").common == \
        "House sparrow"


# --- shards, species lists ------------------------------------------------------------------------------


def test_deeply_nested_taxon_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nested too deeply|at most"):
        read_taxon_json(b"[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_taxon_json(b"[" * 20_000)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("k.jpg", b"x"), ("k.taxon.json", b"[" * 50_000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    found, problems = records(f"wds:{shard}")
    assert not found and "taxon.json" in problems[0].reason


def test_bioclip_in_training_json_excludes_species_and_eol_images(tmp_path: Path) -> None:
    unseen = tmp_path / "unseen_in_training.json"
    unseen.write_text(json.dumps({
        "Animalia-Arthropoda-Arachnida-Araneae-Pisauridae-Dolomedes-plantarius": [
            "/fs/ess/PAS2136/rare-species/2024-03-20/22254267_1198625_eol-full-size-copy.jpg"]}))
    seen = tmp_path / "seen_in_training.json"
    seen.write_text(json.dumps({"Achoerodus gouldii": [
        "/fs/scratch/PAS2136/eol/data/interim/media_cargo/30106074_46572112_eol-full-size-copy.jpg"]}))
    exclusions = load_exclusions([unseen, seen])
    assert set(exclusions.names) == {"dolomedes plantarius", "achoerodus gouldii"}
    assert len(exclusions.ids) == 2 and "eol:22254267" in exclusions.ids and "eol:30106074" in exclusions.ids
    empty = write(tmp_path / "empty.txt", ["# nothing here"])
    with pytest.raises(UsageError, match="yields no species"):
        load_exclusions([empty])


def test_table_reader_sniffs_once_and_reads_parquet(tmp_path: Path) -> None:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    semicolon = write(tmp_path / "t.txt", ["genus;species", "Passer;domesticus"], newline="\r\n", bom=True)
    table = open_table(semicolon)
    assert table.header == ["genus", "species"] and table.delimiter == ";"
    assert list(table.rows({"g": "genus", "s": "species"})) == [(2, {"g": "Passer", "s": "domesticus"})]
    pq.write_table(pa.table({"genus": ["Passer"], "species": ["domesticus"], "id": [7]}), tmp_path / "t.parquet")
    rows = list(open_table(tmp_path / "t.parquet").rows({"g": "genus", "id": "id"}))
    assert rows == [(2, {"g": "Passer", "id": "7"})]
    assert Taxon(("", "", "", "", "", "Passer", "domesticus")) in read_taxa(tmp_path / "t.parquet")


def test_wds_members_are_referenced_not_held_and_huge_ones_skipped(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import io  # noqa: PLC0415

    from treeclip.data.sources import wds  # noqa: PLC0415
    from treeclip.formats.shards import read_member  # noqa: PLC0415

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="JPEG")
    image = buffer.getvalue()
    taxon = json.dumps({"genus": "Passer", "species": "domesticus"}).encode()
    shard = tmp_path / "s.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        for name, data in (("a.jpg", image), ("a.taxon.json", taxon), ("b.jpg", image * 40),
                           ("b.taxon.json", taxon)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(wds, "MAX_IMAGE_BYTES", len(image) * 10)
    found, problems = records(f"wds:{shard}")
    assert [r.source_id for r in found] == ["a"] and read_member(found[0].member) == image  # gzip, by offset
    assert "member b.jpg is" in problems[0].reason and "skipped" in problems[0].reason


def test_bank_build_reads_bioclip_csv_and_lists_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_predict_fixtures import export_tiny_model  # noqa: PLC0415

    from treeclip.cli import main  # noqa: PLC0415

    model = export_tiny_model(tmp_path / "model")
    bad = "2,Animalia,12345,,,,,,,x.jpg,nothing"  # a row with no usable name
    taxonomy = write(tmp_path / "metadata.csv", [RARE_HEADER, *RARE_ROWS, bad])
    code = main(["bank", "build", "--taxonomy", str(taxonomy), "--model", str(model), "--out", str(tmp_path / "bank"),
                 "--text-type", "sci", "--templates", "photo", "--batch-size", "8"])
    assert code == 1 and "rows without a usable taxon" in capsys.readouterr().err
    names = json.loads((tmp_path / "bank" / "txt_emb_species.json").read_text())
    assert names == [[list(WARTYBACK), "purple wartyback"]]  # the class rank is Bivalvia, from `cls`
    problems = (tmp_path / "bank" / "problems.csv").read_text().splitlines()
    assert problems[0] == "file,line,reason" and problems[1].startswith(f"{taxonomy},4,")


def test_inat21_licence_and_rights_holder_reach_the_record(tmp_path: Path) -> None:
    folder = "03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata"
    file_name = f"val/{folder}/df8edd4c-fbb4-4886-8600-a429e5efac23.jpg"
    jpeg(tmp_path / file_name)
    image = {"id": 2686843, "width": 284, "height": 222, "file_name": file_name, "license": 2,
             "rights_holder": "megatherium", "date": "2007-10-31 00:00:00+00:00"}  # inat2021_val_json_excerpt
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [image], "annotations": [{"id": 2686843, "image_id": 2686843, "category_id": 3938}],
        "categories": [], "licenses": [{"id": 2, "name": "Attribution-NonCommercial License"}]}))
    found, _ = records(f"inat21:{tmp_path}")
    assert found[0].license == "Attribution-NonCommercial License" and found[0].owner == "megatherium"


def test_tol10m_finds_eol_images_by_the_downloaders_name(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "eol" / "12853737_449393_eol-full-size-copy.jpg")
    catalog = write(tmp_path / "catalog.csv", [
        "split,treeoflife_id,eol_content_id,eol_page_id,bioscan_part,bioscan_filename,inat21_filename,"
        "inat21_cls_name,inat21_cls_num,kingdom,phylum,class,order,family,genus,species,common",
        "train,0a1b2c3d,12853737,449393,,,,,,Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata,"
        "purple wartyback"])
    found, problems = records(f"tol10m:{catalog},{tmp_path / 'images'}")
    assert not problems and found[0].taxon.lineage == WARTYBACK and found[0].source_id == "0a1b2c3d"


def test_every_image_table_finds_the_path_column_by_the_same_names(tmp_path: Path) -> None:
    """One list of path-column names (formats.PATH_ALIASES): a location table written with `image_path` (as
    iNat-style exports name it) is read, as a build or calibration table with that column is."""
    from treeclip.predict.location import read_location_table  # noqa: PLC0415

    table = tmp_path / "where.csv"
    table.write_text("image_path,latitude,longitude\nowl.jpg,52.1,5.2\n", encoding="utf-8")
    locations = read_location_table(table)
    assert locations["owl.jpg"].lat == pytest.approx(52.1) and str(tmp_path / "owl.jpg") in locations


def test_problem_summary_counts_kinds_not_particulars() -> None:
    """A million repeated ids or unreadable images are a few kinds of problem: the summary a build or download
    prints must not grow a count line per id, path or number."""
    from treeclip.formats.problems import summary_lines

    problems = [Problem(f"a.csv:{n}", reason) for n in range(300) for reason in (
        f"source id 'x{n}' repeated; kept the first", f"cannot read image /data/{n}.jpg: truncated",
        f"image for content {n} not found under /images", f"image not found: /data/{n}.jpg")]
    lines = summary_lines(problems, examples=5)
    assert lines[5] == f"... and {len(problems) - 5} more"
    assert lines[6:] == ["     300  source id '…' repeated; kept the first", "     300  cannot read image …",
                         "     300  image for content N not found under …", "     300  image not found"]
