"""The miniature tree of life: determinism, catalog layout, held-out species, names, inherited looks, CLI errors."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from treeclip.cli import main
from treeclip.data.synth import CATALOG_COLUMNS, TAXONOMY_COLUMNS, build_world, write_world
from treeclip.taxonomy import RANK_NAMES, Rank, TaxonTree, Taxon

TINY = dict(images_per_species=3, image_size=16, holdout=0.25, val_fraction=0.34)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, species=40, seed=7, **TINY)
    return out


def test_same_seed_is_byte_identical_and_other_seed_differs(world_dir: Path, tmp_path: Path) -> None:
    write_world(tmp_path / "again", species=40, seed=7, **TINY)
    write_world(tmp_path / "other", species=40, seed=8, **TINY)
    first, again, other = _files(world_dir), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first["catalog.csv"] != other["catalog.csv"]
    first_images = [data for name, data in first.items() if name.endswith(".png")]
    other_images = [data for name, data in other.items() if name.endswith(".png")]
    assert not set(first_images) & set(other_images)


def test_catalog_layout_and_splits(world_dir: Path) -> None:
    with open(world_dir / "catalog.csv", encoding="utf-8") as handle:
        assert handle.readline().strip().split(",") == list(CATALOG_COLUMNS)
    assert list(CATALOG_COLUMNS) == ["path", "split", *RANK_NAMES, "common", "decimalLatitude", "decimalLongitude",
                                    "eventDate"]
    rows = _rows(world_dir / "catalog.csv")
    assert len(rows) == 40 * 3
    assert {row["split"] for row in rows} == {"train", "val", "unseen"}
    for row in rows[::7]:
        assert row["path"] == f"images/{row['genus']}_{row['species']}/{Path(row['path']).name}"
        with Image.open(world_dir / row["path"]) as image:
            assert image.format == "PNG" and image.size == (16, 16) and image.mode == "RGB"
        assert row["species"].islower() and row["common"]
    taxonomy = _rows(world_dir / "taxonomy.csv")
    assert list(taxonomy[0]) == list(TAXONOMY_COLUMNS) and len(taxonomy) == 40
    manifest = json.loads((world_dir / "world.json").read_text())
    assert manifest["counts"]["images"] == dict(Counter(row["split"] for row in rows))
    assert manifest["parameters"]["seed"] == 7 and manifest["counts"]["taxa"]["species"] == 40
    assert not list(world_dir.rglob("*.tmp"))


def test_unseen_species_have_no_training_images_but_seen_genus_mates(world_dir: Path) -> None:
    rows = _rows(world_dir / "catalog.csv")
    splits_by_species = defaultdict(set)
    for row in rows:
        splits_by_species[tuple(row[rank] for rank in RANK_NAMES)].add(row["split"])
    unseen = [lineage for lineage, splits in splits_by_species.items() if "unseen" in splits]
    assert len(unseen) == 10  # 25% of 40
    listed = (world_dir / "unseen.txt").read_text().splitlines()
    assert sorted(listed) == sorted(f"{lineage[5]} {lineage[6]}" for lineage in unseen)
    for lineage in unseen:
        assert splits_by_species[lineage] == {"unseen"}
        mates = [other for other in splits_by_species if other[:6] == lineage[:6] and other != lineage]
        assert any("train" in splits_by_species[mate] for mate in mates)
    for lineage, splits in splits_by_species.items():
        assert splits == {"unseen"} or "train" in splits


def test_holdout_only_from_genera_with_two_or_more_species() -> None:
    world = build_world(species=300, seed=3, holdout=0.9)
    by_genus = defaultdict(list)
    for member in world.species:
        by_genus[member.taxon.lineage[:6]].append(member.unseen)
    assert any(len(flags) == 1 for flags in by_genus.values())
    assert all(not all(flags) for flags in by_genus.values())
    assert sum(member.unseen for member in world.species) > 100


def test_names_unique_with_rank_suffixes_and_partly_informative_common_names() -> None:
    world = build_world(species=2000, seed=11)
    taxa = [member.taxon for member in world.species]
    for rank in Rank:
        names = {taxon.lineage[rank] for taxon in taxa}
        assert len(names) == world.taxa_per_rank[rank.label]
        assert len({taxon.lineage[: rank + 1] for taxon in taxa}) == len(names)
    assert all(t.family.endswith(("idae", "aceae")) for t in taxa)
    assert all(t.order.endswith(("iformes", "ida", "optera", "ales")) for t in taxa)
    assert all(t.species.islower() and t.species.isalpha() and t.genus[0].isupper() for t in taxa)
    commons = [t.common for t in taxa]
    assert all(commons) and len(set(commons)) == len(commons)
    assert not any(t.genus.lower()[:5] in t.common.lower() for t in taxa)
    nouns = defaultdict(set)  # the head noun says nothing about the kingdom
    for t in taxa:
        nouns[t.kingdom].add(t.common.split()[-1])
    assert all(len(kingdom_nouns) > 0.8 * len(set.union(*nouns.values())) for kingdom_nouns in nouns.values())
    genera = defaultdict(list)  # ... but relatives tend to share it, as in real names (synth_names docstring)
    for t in taxa:
        genera[t.lineage[:6]].append(t.common.split()[-1])
    pairs = [a == b for nouns_ in genera.values() for i, a in enumerate(nouns_) for b in nouns_[i + 1:]]
    assert 0.8 < sum(pairs) / len(pairs) < 0.97


def test_homonym_option_reuses_genus_names_across_kingdoms_only() -> None:
    plain = build_world(branching=(3, 1, 1, 1, 2, 5, 2), seed=2)
    assert len({m.taxon.genus for m in plain.species}) == plain.taxa_per_rank["genus"]
    world = build_world(branching=(3, 1, 1, 1, 2, 5, 2), seed=2, homonyms=0.5)
    genera = {m.taxon.lineage[:6] for m in world.species}
    assert max(Counter((genus[0], genus[5]) for genus in genera).values()) == 1  # unique within a kingdom
    assert max(Counter(genus[5] for genus in genera).values()) > 1  # shared across kingdoms


def _histograms(out: Path) -> dict[Taxon, np.ndarray]:
    """Mean 4x4x4 colour histogram of each species' images."""
    sums: dict[Taxon, list[np.ndarray]] = defaultdict(list)
    for row in _rows(out / "catalog.csv"):
        pixels = np.asarray(Image.open(out / row["path"]), dtype=np.int64) // 64
        bins = np.bincount((pixels[..., 0] * 16 + pixels[..., 1] * 4 + pixels[..., 2]).ravel(), minlength=64)
        sums[Taxon(tuple(row[rank] for rank in RANK_NAMES))].append(bins / bins.sum())
    return {taxon: np.mean(hists, axis=0) for taxon, hists in sums.items()}


def test_image_similarity_follows_taxonomic_distance(tmp_path: Path) -> None:
    write_world(tmp_path, branching=(2, 2, 2, 2, 2, 3, 3), images_per_species=4, image_size=32, seed=0,
                holdout=0.0, val_fraction=0.0)
    hists = _histograms(tmp_path)
    tree = TaxonTree(hists)
    by_distance = defaultdict(list)
    for a, b in itertools.combinations(hists, 2):
        by_distance[tree.distance(a, b)].append(float(np.abs(hists[a] - hists[b]).sum()))
    same_genus, same_family, other_kingdom = (np.mean(by_distance[d]) for d in (1, 2, 7))
    assert len(by_distance[1]) >= 250 and len(by_distance[2]) >= 500
    assert same_genus < same_family < other_kingdom


class _Stop(Exception):
    pass


def test_ten_thousand_species_are_streamed_to_disk(tmp_path: Path) -> None:
    """Images are on disk species by species while the catalog is still being written."""
    seen = []

    def progress(done: int, total: int) -> None:
        assert total == 10_000
        seen.append(done)
        if done == 300:
            assert len(list((tmp_path / "images").rglob("*.png"))) == 300
            assert not (tmp_path / "catalog.csv").exists()
            raise _Stop

    with pytest.raises(_Stop):
        write_world(tmp_path, species=10_000, images_per_species=1, image_size=8, progress=progress)
    assert seen == list(range(1, 301))
    assert not [p for p in tmp_path.iterdir() if p.name != "images"]


@pytest.mark.parametrize("argv", [
    ["--species", "0"], ["--image-size", "-4"], ["--images-per-species", "0"], ["--holdout", "1"],
    ["--holdout", "-0.1"], ["--val-fraction", "1.5"], ["--branching", "2,2"], ["--branching", "2,2,2,0,2,2,2"],
    ["--species", "5", "--branching", "1,1,1,1,1,1,5"], ["--seed", "-1"],
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    try:
        code = main(["synth", str(tmp_path / "out"), *argv])
    except SystemExit as stop:  # argparse's own errors (mutually exclusive options)
        code = stop.code
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synth", str(tmp_path), "--species", "3", "--images-per-species", "2", "--image-size", "8",
            "--no-progress"]
    (tmp_path / "notes.txt").write_text("mine")
    assert main(args[:-1]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and len(error.strip().splitlines()) == 1
    assert main([*args, "--overwrite"]) == 0
    assert "3 species" in capsys.readouterr().out
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(_rows(tmp_path / "catalog.csv")) == 6


def test_geography_ranges_follow_the_tree_and_images_lie_in_their_range(world_dir: Path) -> None:
    from treeclip.data.synth_geo import distance_km
    from treeclip.predict.prior import OccurrenceReader

    world = build_world(species=40, seed=7, holdout=0.25)
    lineages = [m.taxon.lineage for m in world.species]
    same_genus, other_kingdom = [], []
    for i in range(len(lineages)):
        for j in range(i + 1, len(lineages)):
            km = distance_km(*world.centres[i], *world.centres[j])
            if lineages[i][Rank.GENUS] == lineages[j][Rank.GENUS] and lineages[i][0] == lineages[j][0]:
                same_genus.append(km)
            elif lineages[i][0] != lineages[j][0]:
                other_kingdom.append(km)
    assert np.median(same_genus) < 1000 < np.median(other_kingdom)  # relatives share a region
    assert any(km < 2 * 250 for km in same_genus)  # some sister ranges overlap
    index = {m.taxon.lineage: m.index for m in world.species}
    for row in _rows(world_dir / "catalog.csv"):
        member = index[tuple(row[rank] for rank in RANK_NAMES)]
        lat, lon = float(row["decimalLatitude"]), float(row["decimalLongitude"])
        assert distance_km(lat, lon, *world.centres[member]) <= world.radii[member] + 1.0
        assert row["eventDate"][:4].isdigit()
    records = list(OccurrenceReader(world_dir / "occurrences.csv"))
    assert len(records) == 40 * 40 and {r.taxon.lineage for r in records} == set(lineages)
