"""TaxonTree: children, paths, lowest common ancestors, distances, ranks and leaves; scale to 100k taxa."""

from __future__ import annotations

import itertools
import string
import time

import pytest

from treeclip.taxonomy import Rank, Taxon, TaxonTree

SPARROW = ("Animalia", "Chordata", "Aves", "Passeriformes", "Passeridae", "Passer", "domesticus")
TREE_SPARROW = SPARROW[:6] + ("montanus",)
SNOW_FINCH = SPARROW[:5] + ("Montifringilla", "nivalis")
HONEYEATER = ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata")
EAGLE = ("Animalia", "Chordata", "Aves", "Accipitriformes", "Accipitridae", "Aquila", "chrysaetos")
FROG = ("Animalia", "Chordata", "Amphibia", "Anura", "Ranidae", "Rana", "temporaria")
BEE = ("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apis", "mellifera")
OAK = ("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur")
LINEAGES = [SPARROW, TREE_SPARROW, SNOW_FINCH, HONEYEATER, EAGLE, FROG, BEE, OAK]


@pytest.fixture(scope="module")
def tree() -> TaxonTree:
    taxa = [Taxon(lineage) for lineage in LINEAGES]
    taxa += [Taxon(SPARROW, "House Sparrow"), Taxon(SPARROW[:6], "sparrows"), Taxon(("Fungi",))]
    return TaxonTree(taxa)


@pytest.mark.parametrize(
    ("prefix", "children"),
    [
        ((), ["Animalia", "Fungi", "Plantae"]),
        (("Animalia",), ["Arthropoda", "Chordata"]),
        (("Animalia", "Chordata"), ["Amphibia", "Aves"]),
        (SPARROW[:4], ["Meliphagidae", "Passeridae"]),
        (SPARROW[:5], ["Montifringilla", "Passer"]),
        (SPARROW[:6], ["domesticus", "montanus"]),
        (SPARROW, []),
        (("Fungi",), []),
    ],
)
def test_children(tree: TaxonTree, prefix: tuple[str, ...], children: list[str]) -> None:
    assert tree.children(prefix) == children


@pytest.mark.parametrize(
    "prefix", [("Bacteria",), ("Animalia", "Mollusca"), SPARROW[:6] + ("italiae",), ("Fungi", ""), SPARROW[:3] + ("",)]
)
def test_children_of_unknown_prefix_raise(tree: TaxonTree, prefix: tuple[str, ...]) -> None:
    with pytest.raises(KeyError, match="not in the tree"):
        tree.children(prefix)


def test_contains_and_len(tree: TaxonTree) -> None:
    assert len(tree) == 10  # 8 species + the genus Passer + the kingdom Fungi (duplicates merged)
    assert Taxon(SPARROW) in tree and Taxon(SPARROW[:3]) in tree and SPARROW[:3] in tree and () in tree
    assert ("Animalia", "Mollusca") not in tree and SPARROW[:3] + ("",) not in tree and "Animalia" not in tree


def test_path(tree: TaxonTree) -> None:
    assert tree.path(Taxon(SPARROW)) == [SPARROW[: i + 1] for i in range(7)]
    assert tree.path(SPARROW[:3]) == [("Animalia",), ("Animalia", "Chordata"), SPARROW[:3]]
    assert tree.path(Taxon(("Fungi",))) == [("Fungi",)]


@pytest.mark.parametrize(
    ("a", "b", "lca", "distance"),
    [
        (SPARROW, SPARROW, SPARROW, 0),
        (SPARROW, TREE_SPARROW, SPARROW[:6], 1),  # same genus
        (SPARROW, SNOW_FINCH, SPARROW[:5], 2),  # same family
        (SPARROW, HONEYEATER, SPARROW[:4], 3),  # same order
        (SPARROW, EAGLE, SPARROW[:3], 4),  # same class
        (SPARROW, FROG, SPARROW[:2], 5),  # same phylum
        (SPARROW, BEE, SPARROW[:1], 6),  # same kingdom
        (SPARROW, OAK, (), 7),  # different kingdoms
        (SPARROW, SPARROW[:6], SPARROW[:6], 1),  # a species and its genus
        (SPARROW[:6], SPARROW[:3], SPARROW[:3], 3),  # distance is counted from the deeper taxon
        (("Fungi",), OAK, (), 7),
        (("",) * 5 + ("Passer", "domesticus"), ("",) * 5 + ("Passer", "montanus"), ("",) * 5 + ("Passer",), 1),
        (("",) * 5 + ("Passer", "domesticus"), ("",) * 5 + ("Rana", "temporaria"), (), 7),
        (("",) * 5 + ("Passer", "domesticus"), SPARROW, (), 7),  # unknown ranks never match known ones
    ],
)
def test_lca_and_distance(tree: TaxonTree, a: tuple[str, ...], b: tuple[str, ...], lca: tuple[str, ...],
                          distance: int) -> None:
    for x, y in ((a, b), (b, a)):
        assert tree.lca(Taxon(x), Taxon(y)) == lca
        assert tree.lca(x, y) == lca  # lineage tuples work as well
        assert tree.distance(Taxon(x), Taxon(y)) == distance


def test_distance_is_a_metric_on_full_lineages(tree: TaxonTree) -> None:
    taxa = [Taxon(lineage) for lineage in LINEAGES]
    for a, b, c in itertools.product(taxa, repeat=3):
        assert tree.distance(a, b) == tree.distance(b, a)
        assert (tree.distance(a, b) == 0) == (a == b)
        assert tree.distance(a, c) <= tree.distance(a, b) + tree.distance(b, c)


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        (Rank.KINGDOM, [("Animalia",), ("Fungi",), ("Plantae",)]),
        ("phylum", [("Animalia", "Arthropoda"), ("Animalia", "Chordata"), ("Plantae", "Tracheophyta")]),
        (Rank.FAMILY, sorted({lineage[:5] for lineage in LINEAGES})),
        ("genus", sorted({lineage[:6] for lineage in LINEAGES})),
        (Rank.SPECIES, sorted(LINEAGES)),
    ],
)
def test_taxa_at(tree: TaxonTree, rank: Rank | str, expected: list[tuple[str, ...]]) -> None:
    assert tree.taxa_at(rank) == expected


def test_taxa_at_unknown_rank(tree: TaxonTree) -> None:
    with pytest.raises(ValueError, match="tribe"):
        tree.taxa_at("tribe")


def test_leaves(tree: TaxonTree) -> None:
    leaves = tree.leaves()
    assert [leaf.lineage for leaf in leaves] == sorted(LINEAGES + [("Fungi",) + ("",) * 6])
    assert Taxon(SPARROW[:6]) not in leaves  # the genus Passer has species below it
    assert next(leaf for leaf in leaves if leaf == Taxon(SPARROW)).common == "House Sparrow"


def test_rootless_taxa_hang_below_unknown_nodes() -> None:
    tree = TaxonTree([Taxon(("",) * 5 + ("Passer", "domesticus")), Taxon(SPARROW)])
    assert tree.children(()) == ["", "Animalia"]
    assert tree.children(("",) * 5) == ["Passer"]
    assert tree.taxa_at("kingdom") == [("Animalia",)]
    assert tree.taxa_at("genus") == [("",) * 5 + ("Passer",), SPARROW[:6]]


@pytest.mark.parametrize("bad", [[SPARROW], [Taxon()], ["Passer domesticus"]])
def test_bad_input_raises(bad: list[object]) -> None:
    with pytest.raises(ValueError):
        TaxonTree(bad)  # type: ignore[arg-type]


def _word(index: int, prefix: str) -> str:
    letters = ""
    while True:
        index, digit = divmod(index, 26)
        letters += string.ascii_lowercase[digit]
        if not index:
            return prefix + letters


def test_hundred_thousand_taxa_build_in_linear_time() -> None:
    n = 100_000  # 10 species per genus, 10 genera per family, ... 2 phyla
    taxa = [
        Taxon(("Animalia", _word(i // 50_000, "Ph"), _word(i // 10_000, "Cl"), _word(i // 1000, "Or"),
               _word(i // 100, "Fa"), _word(i // 10, "Ge"), _word(i, "ep")))
        for i in range(n)
    ]
    start = time.perf_counter()
    tree = TaxonTree(taxa)
    counts = [len(tree.taxa_at(rank)) for rank in Rank]
    leaves = tree.leaves()
    elapsed = time.perf_counter() - start
    assert counts == [1, 2, 10, 100, 1000, 10_000, n]
    assert len(tree) == n and leaves[0] == min(taxa) and len(leaves) == n
    assert len(tree.children(taxa[0].lineage[:5])) == 10
    assert [tree.distance(taxa[0], taxa[j]) for j in (0, 1, 10, 100, 1000, 10_000, 50_000)] == [0, 1, 2, 3, 4, 5, 6]
    assert elapsed < 20, f"building and listing a 100k-taxon tree took {elapsed:.1f}s"
