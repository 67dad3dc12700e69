"""Taxonomic alignment (`treeclip.data.align`) and backbone files (`treeclip.data.backbone`)."""

from __future__ import annotations

import csv
import json
import pickle
import random
from pathlib import Path

import pytest

from treeclip.data.align import Aligner, Alignment, write_report
from treeclip.data.backbone import read_backbone
from treeclip.data.records import Record
from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon

MULBERRY = ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus")
GANNET = ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus")
INSECTA = ("Animalia", "Arthropoda", "Insecta")
GALL_MIDGE = (*INSECTA, "Diptera", "Cecidomyiidae")


def bare(*names: str) -> tuple[str, ...]:
    """A lineage that names only its lowest ranks (e.g. genus and epithet)."""
    return ("",) * (7 - len(names)) + names


def record(source: str, lineage: tuple[str, ...], common: str = "", n: int = 0) -> Record:
    return Record(source=source, source_id=f"{source}-{n}", path="", taxon=Taxon(lineage, common))


def align(rows: list[tuple[str, tuple[str, ...], str, int]], **kwargs) -> Alignment:
    """Observe `count` records per (source, lineage, common, count) row and align them."""
    aligner = Aligner(**kwargs)
    for source, lineage, common, count in rows:
        for n in range(count):
            aligner.observe(record(source, lineage, common, n))
    return aligner.finalize()


def aligned(alignment: Alignment, source: str, lineage: tuple[str, ...]) -> tuple[str, ...] | None:
    taxon = alignment.resolve(record(source, lineage))
    return None if taxon is None else taxon.lineage


def decisions(alignment: Alignment, kind: str) -> list[dict]:
    return [d for d in alignment.decisions if d["kind"] == kind]


def test_homonym_genus_stays_two_taxa_with_their_own_common_names() -> None:
    alignment = align([
        ("inat21", (*MULBERRY, "alba"), "White Mulberry", 3),
        ("inat21", (*GANNET, "bassanus"), "Northern Gannet", 2),
        ("eol", bare("Morus", "alba"), "", 1),  # the binomial is known in one homonym only
        ("eol", bare("Morus", ""), "mulberries", 4),  # the bare genus fits both: ambiguous
    ])
    plant = alignment.resolve(record("inat21", (*MULBERRY, "alba")))
    bird = alignment.resolve(record("inat21", (*GANNET, "bassanus")))
    assert plant.lineage == (*MULBERRY, "alba") and plant.common == "White Mulberry"
    assert bird.lineage == (*GANNET, "bassanus") and bird.common == "Northern Gannet"
    assert alignment.resolve(record("eol", bare("Morus", "alba"))) == plant
    assert alignment.resolve(record("eol", bare("Morus", ""))) is None
    assert "ambiguous" in alignment.why_dropped(record("eol", bare("Morus", "")))
    [homonym] = decisions(alignment, "homonym")
    assert homonym["rank"] == "genus" and homonym["name"] == "Morus"
    assert sorted(t["lineage"][0] for t in homonym["taxa"]) == ["Animalia", "Plantae"]
    [ambiguous] = decisions(alignment, "ambiguous")
    assert ambiguous["records"] == 4 and len(ambiguous["options"]) == 2
    assert alignment.report["homonyms"]["count"] == 1
    assert pickle.loads(pickle.dumps(alignment)).resolve(record("x", (*GANNET, "bassanus"))) == bird
    # "mulberries" belonged to a dropped, ambiguous record: neither homonym may carry it
    assert {t.common for t in alignment.taxa.values()} == {"White Mulberry", "Northern Gannet"}


def test_homonym_records_never_merge_even_when_one_side_is_partial() -> None:
    alignment = align([
        ("inat21", (*MULBERRY, "alba"), "", 1),
        ("eol", bare("Aves", "Suliformes", "Sulidae", "Morus", "bassanus"), "", 1),
    ], require_kingdom=False)
    assert aligned(alignment, "eol", bare("Aves", "Suliformes", "Sulidae", "Morus", "bassanus")) == \
        bare("Aves", "Suliformes", "Sulidae", "Morus", "bassanus")
    assert decisions(alignment, "homonym")[0]["name"] == "Morus"


@pytest.mark.parametrize(("rows", "backbone", "winner", "rule"), [
    # the backbone outvotes a majority of records
    ([("inat21", "Cecidomyiidae", 5), ("eol", "Sciaridae", 1)], "Sciaridae", "Sciaridae", "backbone"),
    # majority of records, against source precedence
    ([("inat21", "Cecidomyiidae", 1), ("eol", "Sciaridae", 3)], None, "Sciaridae", "majority"),
    # a tie in records: the source listed first in source_precedence
    ([("eol", "Cecidomyiidae", 2), ("inat21", "Sciaridae", 2)], None, "Sciaridae", "source_precedence"),
])
def test_conflicting_family_of_a_genus_is_resolved_by_the_stated_rule(rows, backbone, winner, rule) -> None:
    families = {family: (*INSECTA, "Diptera", family) for family in ("Cecidomyiidae", "Sciaridae")}
    taxa = [Taxon((*families[backbone], "Contarinia"))] if backbone else []
    alignment = align([(source, (*families[family], "Contarinia", "nasturtii"), "", n)
                          for source, family, n in rows], backbone=taxa)
    expected = (*families[winner], "Contarinia", "nasturtii")
    for source, family, _n in rows:
        assert aligned(alignment, source, (*families[family], "Contarinia", "nasturtii")) == expected
    [conflict] = decisions(alignment, "conflict")
    assert conflict["rule"] == rule and conflict["rank"] == "genus" and conflict["name"] == "Contarinia"
    assert conflict["chosen"] == [*families[winner], "Contarinia"]
    assert conflict["records_moved"] == sum(n for _s, family, n in rows if family != winner)
    assert alignment.report["conflicts"]["per_rule"] == {rule: 1}
    assert alignment.report["changed_ranks"]["family"] == conflict["records_moved"]
    assert not decisions(alignment, "homonym")


def test_conflict_prefers_a_placement_that_reaches_the_kingdom() -> None:
    full = (*INSECTA, "Diptera", "Cecidomyiidae", "Contarinia", "")
    orphan = bare("Zoraptera", "Sciaridae", "Contarinia", "")  # an order known nowhere else
    alignment = align([("eol", full, "", 1), ("inat21", orphan, "", 3)])
    assert aligned(alignment, "inat21", orphan) == full
    assert [d["rule"] for d in decisions(alignment, "conflict")] == ["anchored"]


def test_conflict_decision_counts_records_per_source() -> None:
    alignment = align([("inat21", (*INSECTA, "Diptera", "Sciaridae", "Bradysia"), "", 2),
                          ("bioscan", (*INSECTA, "Hymenoptera", "Sciaridae", "Bradysia"), "", 5),
                          ("eol", (*INSECTA, "Hymenoptera", "Sciaridae", "Bradysia"), "", 1)])
    [conflict] = decisions(alignment, "conflict")
    assert conflict["rank"] == "family" and conflict["rule"] == "majority"
    assert [(c["records"], c["sources"]) for c in conflict["candidates"]] == [
        (6, {"bioscan": 5, "eol": 1}), (2, {"inat21": 2})]
    assert aligned(alignment, "inat21", (*INSECTA, "Diptera", "Sciaridae", "Bradysia")) == \
        (*INSECTA, "Hymenoptera", "Sciaridae", "Bradysia", "")


def test_missing_higher_ranks_filled_from_the_backbone() -> None:
    backbone = [Taxon((*MULBERRY, "alba"), "white mulberry"), Taxon((*GANNET, "bassanus"))]
    aligner = Aligner(backbone=backbone)
    for n in range(3):
        aligner.observe(record("folder", bare("Morus", "alba"), n=n))
    aligner.observe(record("folder", bare("Moraceae", "Morus", "nigra")))
    alignment = aligner.finalize()
    taxon = alignment.resolve(record("folder", bare("Morus", "alba")))
    assert taxon.lineage == (*MULBERRY, "alba") and taxon.common == "white mulberry"
    assert aligned(alignment, "folder", bare("Moraceae", "Morus", "nigra")) == (*MULBERRY, "nigra")
    assert alignment.report["filled_ranks"] == {"kingdom": 4, "phylum": 4, "class": 4, "order": 4,
                                                "family": 3, "genus": 0, "species": 0}
    assert alignment.report["common_names"]["by_source"] == {"backbone": 1}
    assert alignment.report["taxa"]["backbone"] == 2


def test_ambiguous_fill_is_left_unfilled_and_logged() -> None:
    backbone = [Taxon((*MULBERRY, "alba")), Taxon((*GANNET, "bassanus"))]
    rows = [("folder", bare("Morus", "rubra"), "", 2), ("folder", bare("Quercus", "robur"), "", 1)]
    strict = align(rows, backbone=backbone)
    assert aligned(strict, "folder", bare("Morus", "rubra")) is None
    assert "ambiguous" in strict.why_dropped(record("folder", bare("Morus", "rubra")))
    assert "no kingdom" in strict.why_dropped(record("folder", bare("Quercus", "robur")))
    [ambiguous] = decisions(strict, "ambiguous")
    assert (ambiguous["rank"], ambiguous["name"], ambiguous["records"]) == ("genus", "Morus", 2)
    assert sorted(o[4] for o in ambiguous["options"]) == ["Moraceae", "Sulidae"]
    assert strict.report["ambiguous"]["count"] == 1
    lenient = align(rows, backbone=backbone, require_kingdom=False)
    assert aligned(lenient, "folder", bare("Morus", "rubra")) == bare("Morus", "rubra")
    assert lenient.report["filled_ranks"]["kingdom"] == 0


def test_genus_species_records_filled_from_another_sources_full_lineage() -> None:
    full = (*INSECTA, "Lepidoptera", "Nymphalidae", "Danaus", "plexippus")
    alignment = align([("inat21", full, "Monarch", 2),
                          ("folder", bare("Danaus", "plexippus"), "", 3),
                          ("folder", bare("Danaus", "gilippus"), "Queen", 1),
                          ("folder", bare("Danaus", ""), "", 1)])
    assert aligned(alignment, "folder", bare("Danaus", "plexippus")) == full
    assert alignment.resolve(record("folder", bare("Danaus", "plexippus"))).common == "Monarch"
    assert aligned(alignment, "folder", bare("Danaus", "gilippus")) == (*full[:6], "gilippus")
    assert aligned(alignment, "folder", bare("Danaus", "")) == (*full[:6], "")
    assert alignment.report["filled_ranks"]["kingdom"] == 5
    assert alignment.report["taxa"] == {"in": 4, "out": 3, "backbone": 0}


def test_bioscan_family_level_records_are_kept_to_family_and_lend_their_lineage() -> None:
    alignment = align([("bioscan", GALL_MIDGE, "", 6),
                          ("bioscan", (*GALL_MIDGE, "Contarinia"), "", 2),
                          ("csv", bare("Diptera", "Cecidomyiidae", "", ""), "", 1)])
    assert aligned(alignment, "bioscan", GALL_MIDGE) == (*GALL_MIDGE, "", "")
    assert aligned(alignment, "csv", bare("Diptera", "Cecidomyiidae", "", "")) == (*GALL_MIDGE, "", "")
    assert alignment.resolve(record("bioscan", GALL_MIDGE)).rank.label == "family"
    assert alignment.report["records"]["per_source"]["bioscan"] == {"in": 8, "out": 8, "dropped": 0}
    assert alignment.report["filled_ranks"] == {"kingdom": 1, "phylum": 1, "class": 1, "order": 0,
                                                "family": 0, "genus": 0, "species": 0}


def test_common_names_follow_source_precedence() -> None:
    rows = [("inat21", (*MULBERRY, "alba"), "White Mulberry", 1),
            ("eol", (*MULBERRY, "alba"), "white mulberry tree", 2),
            ("eol", (*MULBERRY, "alba"), "silkworm mulberry", 1),
            ("bioscan", (*MULBERRY, "nigra"), "", 1)]
    default = align(rows)
    assert default.resolve(record("eol", (*MULBERRY, "alba"))).common == "White Mulberry"
    assert default.resolve(record("bioscan", (*MULBERRY, "nigra"))).common == ""
    eol_first = align(rows, common_precedence=("eol", "inat21"))
    assert eol_first.resolve(record("inat21", (*MULBERRY, "alba"))).common == "white mulberry tree"
    assert eol_first.report["common_names"] == {"taxa_with": 1, "taxa_without": 1, "by_source": {"eol": 1}}


def test_report_counts_summary_and_files(tmp_path: Path) -> None:
    alignment = align([("inat21", (*MULBERRY, "alba"), "White Mulberry", 3),
                          ("inat21", (*GANNET, "bassanus"), "", 2),
                          ("eol", bare("Morus", ""), "", 4),
                          ("eol", bare("Ficus", "carica"), "", 1),
                          ("csv", ("",) * 7, "", 2)])
    report = alignment.report
    assert {k: report["records"][k] for k in ("in", "out", "dropped")} == {"in": 12, "out": 5, "dropped": 7}
    assert report["records"]["per_source"] == {"csv": {"in": 2, "out": 0, "dropped": 2},
                                               "eol": {"in": 5, "out": 0, "dropped": 5},
                                               "inat21": {"in": 5, "out": 5, "dropped": 0}}
    assert report["taxa"] == {"in": 5, "out": 2, "backbone": 0}
    assert report["dropped"] == {"ambiguous homonym: the ranks above it fit several taxa": 4,
                                 "no kingdom known from any source or the backbone": 1, "no taxon": 2}
    assert (report["homonyms"]["count"], report["homonyms"]["records"]) == (1, 5)
    assert (report["ambiguous"]["count"], report["ambiguous"]["records"]) == (1, 4)
    assert report["conflicts"]["count"] == 0 and sum(report["filled_ranks"].values()) == 0
    assert alignment.why_dropped(record("wds", (*MULBERRY, "nigra"))) == "not observed by the aligner"
    summary = alignment.summary()
    assert "12 in, 5 out, 7 dropped" in summary and "genus Morus" in summary
    decisions_path = write_report(alignment, tmp_path / "alignment.json")
    assert json.loads((tmp_path / "alignment.json").read_text()) == json.loads(json.dumps(report))
    lines = decisions_path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["homonym", "ambiguous"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment.decisions.jsonl", "alignment.json"]


def write(path: Path, rows: list[list[str]], delimiter: str) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        csv.writer(handle, delimiter=delimiter, quoting=quoting).writerows(rows)
    return path


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_parent_pointer_backbone_walk(tmp_path: Path, delimiter: str, caplog: pytest.LogCaptureFixture) -> None:
    header = ["taxonID", "parentNameUsageID", "taxonRank", "scientificName", "canonicalName", "taxonomicStatus"]
    rows = [header,
            ["1", "", "kingdom", "Plantae", "Plantae", "accepted"],
            ["2", "1", "phylum", "Tracheophyta", "Tracheophyta", "accepted"],
            ["3", "2", "class", "Magnoliopsida", "Magnoliopsida", "accepted"],
            ["4", "3", "order", "Rosales Bercht. & J.Presl", "", "accepted"],
            ["5", "4", "family", "Moraceae Gaudich.", "Moraceae", "accepted"],
            ["6", "5", "tribe", "Moreae", "Moreae", "accepted"],  # walked through
            ["7", "6", "genus", "Morus L.", "Morus", "accepted"],
            ["8", "7", "species", "Morus alba L.", "Morus alba", "accepted"],
            ["9", "7", "species", "Morus tatarica L.", "Morus tatarica", "synonym"],
            ["10", "8", "subspecies", "Morus alba var. x", "Morus alba x", "accepted"],
            ["20", "99", "family", "Sulidae", "Sulidae", "accepted"],  # parent 99 is missing
            ["21", "20", "genus", "Morus", "Morus", "accepted"],
            ["30", "32", "order", "Diptera", "Diptera", "accepted"],  # 30 -> 32 -> 31 -> 30: a cycle
            ["31", "30", "family", "Sciaridae", "Sciaridae", "accepted"],
            ["32", "31", "", "cyclic clade", "", "accepted"],
            ["33", "31", "genus", "Bradysia", "Bradysia", "accepted"],
            ["34", "", "SPECIES", "Apis mellifera Linnaeus, 1758", "", "accepted"]]
    taxa = read_backbone(write(tmp_path / "taxon.txt", rows, delimiter))
    lineages = {t.lineage for t in taxa}
    assert (*MULBERRY, "alba") in lineages and MULBERRY + ("",) in lineages
    assert ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "", "", "") in lineages
    assert not any(t.species == "tatarica" for t in taxa)
    assert bare("Sulidae", "Morus", "") in lineages
    # the cycle's members become roots: Bradysia keeps its family, which loses its order
    assert bare("Sciaridae", "Bradysia", "") in lineages and bare("Diptera", "", "", "") in lineages
    assert bare("Apis", "mellifera") in lineages
    assert len(taxa) == 13  # every row at one of the seven ranks except the synonym
    warnings = sorted(r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelname == "WARNING")
    assert warnings == ["1 rows: missing parent; lineages end there (first at line 12)",
                        "3 rows: cycle in the parent pointers; lineages end there (first at line 14)"]


def test_parent_pointer_rank_order_violation_cuts_the_lineage(tmp_path: Path) -> None:
    rows = [["taxonID", "parentNameUsageID", "taxonRank", "scientificName"],
            ["1", "", "genus", "Oddus"], ["2", "1", "family", "Oddidae"], ["3", "2", "genus", "Evenus"]]
    taxa = read_backbone(write(tmp_path / "t.csv", rows, ","))
    assert {t.lineage for t in taxa} == {bare("Oddus", ""), bare("Oddidae", "", ""), bare("Oddidae", "Evenus", "")}


def test_seven_rank_backbone_file_and_errors(tmp_path: Path) -> None:
    rows = [["page_id", "Kingdom", "Phylum", "Class", "Order", "Family", "Genus", "Species", "vernacularName"],
            ["1", "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "Morus alba L.",
             "white mulberry"],
            ["2", "Metazoa", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus", ""],
            ["3", "too", "few"]]
    taxa = read_backbone(write(tmp_path / "ranks.csv", rows, ","))
    assert [(t.lineage, t.common) for t in taxa] == [((*MULBERRY, "alba"), "white mulberry"),
                                                     ((*GANNET, "bassanus"), "")]
    with pytest.raises(UsageError, match="no such file"):
        read_backbone(tmp_path / "missing.csv")
    with pytest.raises(UsageError, match="header"):
        read_backbone(write(tmp_path / "other.csv", [["a", "b"], ["1", "2"]], ","))



def noisy_records(seed: int, n_species: int = 120, n_records: int = 1500) -> list[Record]:
    """Records of a random world with reused names (homonyms), cut lineages and moved families."""
    rng = random.Random(seed)
    world = []
    for epithet in range(n_species):
        kingdom = rng.choice(["Animalia", "Plantae"])
        world.append((kingdom, f"Phy{kingdom[0].lower()}{rng.randrange(2)}", f"Cla{rng.randrange(3)}",
                      f"Ord{rng.randrange(5)}", f"Fam{rng.randrange(12)}", f"Gen{rng.randrange(40)}", f"ep{epithet}"))
    records = []
    for n in range(n_records):
        lineage = list(rng.choice(world))
        roll = rng.random()
        if roll < 0.25:  # higher ranks missing
            top = rng.randrange(1, 6)
            lineage[:top] = [""] * top
        elif roll < 0.3:  # another family
            lineage[4] = f"Fam{rng.randrange(12)}"
        elif roll < 0.35:  # identified to a higher rank only
            bottom = rng.randrange(1, 7)
            lineage[bottom:] = [""] * (7 - bottom)
        records.append(Record(source=rng.choice(["inat21", "eol", "bioscan"]), source_id=str(n), path="",
                              taxon=Taxon(tuple(lineage), f"name {n % 7}")))
    return records


def test_aligned_taxa_form_one_tree_whatever_the_order_of_records() -> None:
    records = noisy_records(seed=0)
    results = []
    for order in (records, records[::-1]):
        aligner = Aligner()
        for item in order:
            aligner.observe(item)
        alignment = aligner.finalize()
        results.append({lineage: (t.lineage, t.common) for lineage, t in alignment.taxa.items()})
    assert results[0] == results[1]
    placement: dict[tuple, tuple[str, ...]] = {}
    for lineage, _common in results[0].values():
        for rank in range(1, 7):
            if lineage[rank]:  # one placement per name at a rank within kingdom/phylum/class
                key = (rank, lineage[5] if rank == 6 else "", lineage[rank], lineage[:min(rank, 3)])
                assert placement.setdefault(key, lineage[:rank]) == lineage[:rank]
    assert len(placement) > 100 and alignment.report["conflicts"]["count"] > 10
    assert alignment.report["homonyms"]["count"] > 10
