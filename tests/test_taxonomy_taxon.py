"""Rank and Taxon: parsing rank names, validation, derived names, equality/hash/order by lineage."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import pytest

from treeclip.taxonomy import RANK_NAMES, Rank, Taxon

HONEYEATER = ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata")


@pytest.mark.parametrize(
    ("name", "rank"),
    [
        ("kingdom", Rank.KINGDOM),
        ("Kingdom", Rank.KINGDOM),
        (" PHYLUM ", Rank.PHYLUM),
        ("division", Rank.PHYLUM),
        ("class", Rank.CLASS),
        ("cls", Rank.CLASS),
        ("class_", Rank.CLASS),
        ("Order", Rank.ORDER),
        ("family", Rank.FAMILY),
        ("genus", Rank.GENUS),
        ("species", Rank.SPECIES),
        ("specific_epithet", Rank.SPECIES),
        ("specificEpithet", Rank.SPECIES),
        ("epithet", Rank.SPECIES),
        (Rank.ORDER, Rank.ORDER),
    ],
)
def test_rank_parse(name: str, rank: Rank) -> None:
    assert Rank.parse(name) is rank


@pytest.mark.parametrize("bad", ["subspecies", "tribe", "", "kingdoms", 3, None])
def test_rank_parse_rejects_unknown_names(bad: object) -> None:
    with pytest.raises(ValueError, match=repr(bad) if bad != "" else "rank"):
        Rank.parse(bad)  # type: ignore[arg-type]


def test_rank_names_match_enum() -> None:
    assert RANK_NAMES == ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    assert [r.label for r in Rank] == list(RANK_NAMES)
    assert [int(r) for r in Rank] == list(range(7))


def test_full_taxon_properties() -> None:
    taxon = Taxon(HONEYEATER, "White-plumed Honeyeater")
    assert (taxon.kingdom, taxon.phylum, taxon.cls, taxon.order) == HONEYEATER[:4]
    assert (taxon.family, taxon.genus, taxon.species) == HONEYEATER[4:]
    assert taxon.depth == 7 and taxon.rank is Rank.SPECIES
    assert taxon.scientific == "Ptilotula penicillata"
    assert taxon.taxonomic == "Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata"
    assert taxon.tagged == (
        "kingdom Animalia phylum Chordata class Aves order Passeriformes family Meliphagidae "
        "genus Ptilotula species penicillata"
    )
    assert taxon.common_or_fallback == "White-plumed Honeyeater"
    assert taxon.ranks() == dict(zip(RANK_NAMES, HONEYEATER))


@pytest.mark.parametrize(
    ("lineage", "depth", "rank", "scientific", "taxonomic", "fallback"),
    [
        (HONEYEATER[:6], 6, Rank.GENUS, "Ptilotula", " ".join(HONEYEATER[:6]), "Ptilotula"),
        (HONEYEATER[:3], 3, Rank.CLASS, "", "Animalia Chordata Aves", "Animalia Chordata Aves"),
        (HONEYEATER[:1], 1, Rank.KINGDOM, "", "Animalia", "Animalia"),
        (("",) * 5 + HONEYEATER[5:], 2, Rank.SPECIES, "Ptilotula penicillata", "Ptilotula penicillata",
         "Ptilotula penicillata"),
        (("",) * 4 + ("Apidae",), 1, Rank.FAMILY, "", "Apidae", "Apidae"),
        ((), 0, None, "", "", ""),
    ],
)
def test_partial_taxon_properties(
    lineage: tuple[str, ...], depth: int, rank: Rank | None, scientific: str, taxonomic: str, fallback: str
) -> None:
    taxon = Taxon(lineage)
    assert len(taxon.lineage) == 7 and taxon.lineage[: len(lineage)] == lineage
    assert taxon.depth == depth and taxon.rank == rank
    assert taxon.scientific == scientific and taxon.taxonomic == taxonomic
    assert taxon.common_or_fallback == fallback


def test_tagged_skips_missing_ranks() -> None:
    assert Taxon(HONEYEATER[:3]).tagged == "kingdom Animalia phylum Chordata class Aves"
    assert Taxon(("",) * 5 + ("Ptilotula", "penicillata")).tagged == "genus Ptilotula species penicillata"


def test_from_ranks_matches_constructor() -> None:
    built = Taxon.from_ranks("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula",
                             "penicillata", common="White-plumed Honeyeater")
    assert built == Taxon(HONEYEATER) and built.common == "White-plumed Honeyeater"
    assert Taxon.from_ranks(kingdom="Plantae", cls_="").lineage == ("Plantae",) + ("",) * 6
    assert Taxon.from_ranks(kingdom="Animalia", phylum="Chordata", cls_="Aves").cls == "Aves"


@pytest.mark.parametrize(
    ("lineage", "message"),
    [
        (("Animalia", "", "Aves"), "gap.*class 'Aves'.*phylum"),
        (HONEYEATER[:4] + ("", "Ptilotula"), "gap.*genus 'Ptilotula'"),
        (("",) * 6 + ("penicillata",), "epithet 'penicillata' has no genus"),
        (HONEYEATER + ("extra",), "8 ranks"),
        (("Animalia", 7), "phylum must be a string, got 7"),
        (("Animalia", None), "phylum must be a string, got None"),
        ("Animalia Chordata", "tuple of strings"),
        (None, "tuple of strings"),
    ],
)
def test_invalid_lineages_raise(lineage: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Taxon(lineage)  # type: ignore[arg-type]


def test_non_string_common_name_raises() -> None:
    with pytest.raises(ValueError, match="common name must be a string, got 3"):
        Taxon(HONEYEATER, 3)  # type: ignore[arg-type]


def test_list_lineage_becomes_padded_tuple() -> None:
    assert Taxon(["Fungi", "Basidiomycota"]).lineage == ("Fungi", "Basidiomycota", "", "", "", "", "")


def test_equality_and_hash_ignore_common_name() -> None:
    a, b = Taxon(HONEYEATER, "White-plumed Honeyeater"), Taxon(HONEYEATER, "")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Taxon(HONEYEATER[:6])
    assert a != HONEYEATER  # not equal to a bare tuple


def test_ordering_by_lineage() -> None:
    taxa = [Taxon(HONEYEATER), Taxon(HONEYEATER[:6]), Taxon(("Animalia", "Arthropoda")), Taxon(("Fungi",), "z")]
    assert [t.lineage[:2] for t in sorted(taxa)] == [
        ("Animalia", "Arthropoda"), ("Animalia", "Chordata"), ("Animalia", "Chordata"), ("Fungi", ""),
    ]
    assert Taxon(HONEYEATER[:6]) < Taxon(HONEYEATER) <= Taxon(HONEYEATER, "x")
    assert Taxon(("Fungi",)) > Taxon(("Animalia",)) and Taxon(("Fungi",)) >= Taxon(("Fungi",), "c")
    with pytest.raises(TypeError):
        _ = Taxon(HONEYEATER) < HONEYEATER  # type: ignore[operator]


def test_frozen_and_slotted() -> None:
    taxon = Taxon(HONEYEATER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        taxon.common = "x"  # type: ignore[misc]
    assert not hasattr(taxon, "__dict__")


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        (Rank.KINGDOM, ("Animalia",)),
        ("class", HONEYEATER[:3]),
        (Rank.GENUS, HONEYEATER[:6]),
        (Rank.SPECIES, HONEYEATER),
    ],
)
def test_prefix_truncates_and_drops_common(rank: Rank | str, expected: tuple[str, ...]) -> None:
    prefix = Taxon(HONEYEATER, "White-plumed Honeyeater").prefix(rank)
    assert prefix.lineage == expected + ("",) * (7 - len(expected))
    assert prefix.common == ""


def test_prefix_rejects_unknown_rank() -> None:
    with pytest.raises(ValueError, match="tribe"):
        Taxon(HONEYEATER).prefix("tribe")


def test_pickle_round_trip_keeps_common_name() -> None:
    taxon = Taxon(HONEYEATER, "White-plumed Honeyeater")
    restored = pickle.loads(pickle.dumps(taxon))
    assert restored == taxon and restored.common == "White-plumed Honeyeater"


def test_taxonomy_imports_only_the_standard_library() -> None:
    code = (
        "import sys, treeclip.taxonomy\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', 'PIL', 'open_clip'})\n"
        "ours = sorted(m for m in sys.modules if m.startswith('treeclip.') and not m.startswith('treeclip.taxonomy'))\n"
        "print(heavy, ours)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] []"
