"""Location prior: occurrence tables as GBIF/Darwin Core and plain CSVs have them, H3 counts, smoothing over
neighbouring cells and up the tree, seasons, storage, the CLI; EXIF GPS/dates written by real libraries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ExifTags, Image

from treeclip.cli import main
from treeclip.errors import UsageError
from treeclip.predict.location import Location, make_locator, month_of, read_exif_location, read_location_table
from treeclip.predict.prior import (GENUS_SHARE, LocationPrior, OccurrenceReader, apply_prior, season_of)

import h3

# GBIF "simple CSV" download layout (tab-separated, .csv name), cut to its first 32 columns.
GBIF_HEADER = ("gbifID\tdatasetKey\toccurrenceID\tkingdom\tphylum\tclass\torder\tfamily\tgenus\tspecies\t"
               "infraspecificEpithet\ttaxonRank\tscientificName\tverbatimScientificName\t"
               "verbatimScientificNameAuthorship\tcountryCode\tlocality\tstateProvince\toccurrenceStatus\t"
               "individualCount\tpublishingOrgKey\tdecimalLatitude\tdecimalLongitude\t"
               "coordinateUncertaintyInMeters\tcoordinatePrecision\televation\televationAccuracy\tdepth\t"
               "depthAccuracy\teventDate\tday\tmonth")
BIRD = "Animalia\tChordata\tAves\tPasseriformes\tParidae"
SYDNEY, LONDON, PERTH = (-33.87, 151.21), (51.51, -0.13), (-31.95, 115.86)


def _gbif_row(gbif_id: int, lineage: str, genus: str, species: str, lat: object, lon: object, date: str,
              status: str = "PRESENT") -> str:
    return (f"{gbif_id}\t50c9509d-22c7-4a22-a47d-8c48425ef4a7\thttps://www.inaturalist.org/observations/{gbif_id}\t"
            f"{lineage}\t{genus}\t{species}\t\tSPECIES\t{species} (Linnaeus, 1758)\t{species}\t\tAU\t\t\t{status}\t"
            f"\t28eb1a3f-1c15-4a95-931a-4af90ecb574d\t{lat}\t{lon}\t30.0\t\t\t\t\t\t{date}\t{date[8:10]}\t{date[5:7]}")


@pytest.fixture()
def gbif(tmp_path):
    rows = [
        _gbif_row(1, BIRD, "Parus", "Parus major", *LONDON, "2021-05-03T08:15:00"),
        _gbif_row(2, BIRD, "Parus", "Parus major", *LONDON, "2021-05-04"),
        _gbif_row(3, BIRD, "Parus", "Parus minor", *SYDNEY, "2020-12-24"),
        _gbif_row(4, BIRD, "Cyanistes", "Cyanistes caeruleus", *LONDON, "2021-06/2021-07"),
        _gbif_row(5, BIRD, "Cyanistes", "Cyanistes caeruleus", *LONDON, "2021-05-01", status="ABSENT"),
        _gbif_row(6, BIRD, "Parus", "Parus major", "", "", "2021-05-01"),
        _gbif_row(7, BIRD, "Parus", "Parus major", 0, 0, "2021-05-01"),
        _gbif_row(8, BIRD, "Parus", "Parus major", 95.0, 10.0, "2021-05-01"),
    ]
    path = tmp_path / "occurrence.csv"
    path.write_text(GBIF_HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


BANK = [("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"),
        ("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "minor"),
        ("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Cyanistes", "caeruleus"),
        ("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Periparus", "ater"),
        ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina")]


def test_gbif_table_is_read_and_bad_records_are_counted(gbif) -> None:
    reader = OccurrenceReader(gbif)
    records = list(reader)
    assert [r.taxon.scientific for r in records] == ["Parus major", "Parus major", "Parus minor",
                                                     "Cyanistes caeruleus"]
    assert records[0].taxon.lineage[:5] == tuple(BIRD.split("\t"))
    assert [r.month for r in records] == [5, 5, 12, 6]  # timestamps and ISO intervals give their month
    assert dict(reader.skipped) == {"occurrenceStatus absent": 1, "missing or out-of-range coordinates": 2,
                                    "coordinates 0,0": 1}


def test_factors_smooth_over_cells_and_up_the_tree(gbif) -> None:
    prior = LocationPrior.build(OccurrenceReader(gbif), resolution=3).bind(BANK, floor=0.02)
    at_london = prior.factors(Location(*LONDON))
    major, minor, caeruleus, ater, rosa = at_london
    assert major == pytest.approx(2 / 3)  # two records in the cell: d / (d + 1)
    assert caeruleus == pytest.approx(1 / 2)
    assert minor == pytest.approx(GENUS_SHARE * 2 / 3)  # never seen here: borrows from Parus (2 records)
    assert ater == pytest.approx(0.1 * 3 / 4)  # another genus: borrows from the family (3 records)
    assert rosa == pytest.approx(0.02)  # no record anywhere: the floor, never zero
    assert min(major, caeruleus) > max(minor, ater)  # recorded near the photo beats every borrowed value
    # a point in a neighbouring cell still sees the London records, at half weight
    origin = h3.latlng_to_cell(*LONDON, 3)
    neighbour = next(c for c in h3.grid_disk(origin, 1) if c != origin)
    assert prior.factors(Location(*h3.cell_to_latlng(neighbour)))[0] == pytest.approx(1 / 2)
    far = prior.factors(Location(*PERTH))  # 3,000 km from Sydney: nothing near
    assert far.tolist() == pytest.approx([0.02] * 5)


def test_seasons_count_in_season_records_twice(gbif) -> None:
    prior = LocationPrior.build(OccurrenceReader(gbif), by_season=True).bind(BANK, floor=0.02)
    assert season_of(5) == season_of(3) == 2 and season_of(12) == season_of(1) == 1
    spring, winter = (prior.factors(Location(*LONDON, month=m))[0] for m in (5, 1))
    assert spring == pytest.approx(4 / 5) and winter == pytest.approx(2 / 3)


def test_prior_round_trips_through_parquet(gbif, tmp_path) -> None:
    built = LocationPrior.build(OccurrenceReader(gbif), by_season=True)
    loaded = LocationPrior.load(built.save(tmp_path / "prior.parquet"))
    assert loaded.counts == built.counts and loaded.info == built.info
    assert loaded.name == "prior.parquet"
    (tmp_path / "other.parquet").write_bytes((tmp_path / "prior.parquet").read_bytes()[:100])
    with pytest.raises(UsageError, match="other.parquet"):
        LocationPrior.load(tmp_path / "other.parquet")


def test_apply_prior_renormalises_and_keeps_every_taxon() -> None:
    probs = np.array([[0.5, 0.3, 0.2]])
    out = apply_prior(probs, np.array([1.0, 0.02, 0.5]), weight=1.0)
    assert out.sum() == pytest.approx(1.0) and (out > 0).all()
    assert out[0, 0] / out[0, 1] == pytest.approx((0.5 / 0.3) * 50)
    assert apply_prior(probs, np.array([1.0, 0.02, 0.5]), weight=0.0) == pytest.approx(probs)


def test_plain_lat_lon_taxon_csv(tmp_path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("lat,lon,taxon\n51.5,-0.1,Parus major\n51.5,-0.1,not a taxon 123\n-33.9,151.2,Parus\n")
    reader = OccurrenceReader(path)
    records = list(reader)
    assert [r.taxon.scientific for r in records] == ["Parus major", "Parus"]
    assert reader.skipped == {"no usable taxon": 1}


def test_cli_builds_reports_skips_and_refuses_empty_input(gbif, tmp_path, capsys) -> None:
    out = tmp_path / "prior.parquet"
    assert main(["prior", "build", str(gbif), "--out", str(out), "--by-season"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 records: occurrenceStatus absent" in err and "4 records in 2 cells" in err
    assert LocationPrior.load(out).info.skipped["coordinates 0,0"] == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("decimalLatitude,decimalLongitude,species\n0,0,Parus major\n")
    assert main(["prior", "build", str(empty), "--out", str(tmp_path / "none.parquet")]) == 2
    assert "no usable occurrence records" in capsys.readouterr().err and not (tmp_path / "none.parquet").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    assert main(["prior", "build", str(bad), "--out", str(out)]) == 2
    assert "needs latitude/longitude columns" in capsys.readouterr().err


# ---------------------------------------------------------------- EXIF (written by Pillow / pillow-heif)
def _exif(lat: tuple, lat_ref: str, lon: tuple, lon_ref: str, date: str | None) -> Image.Exif:
    exif = Image.Exif()
    if date:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = date
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({ExifTags.GPS.GPSLatitudeRef: lat_ref, ExifTags.GPS.GPSLatitude: lat,
                ExifTags.GPS.GPSLongitudeRef: lon_ref, ExifTags.GPS.GPSLongitude: lon})
    return exif


def test_exif_gps_and_date_from_a_jpeg(tmp_path) -> None:
    path = tmp_path / "gps.jpg"
    exif = _exif((33.0, 52.0, 4.8), "S", (151.0, 12.0, 36.0), "E", "2021:12:25 09:30:00")
    Image.new("RGB", (16, 16), (30, 120, 40)).save(path, exif=exif)
    location = read_exif_location(path)
    assert location.lat == pytest.approx(-33.868) and location.lon == pytest.approx(151.21)
    assert location.month == 12 and location.source == "exif"
    west = tmp_path / "west.jpg"
    Image.new("RGB", (16, 16)).save(west, exif=_exif((51.0, 30.0, 0.0), "N", (0.0, 7.0, 48.0), "W", None))
    assert read_exif_location(west) == Location(51.5, -0.13, None, source="exif")


def test_heic_exif_when_pillow_heif_is_installed(tmp_path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "gps.heic"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, exif=_exif((48.0, 51.0, 0.0), "N", (2.0, 21.0, 0.0),
                                                                     "E", "2022:07:14 12:00:00"))
    location = read_exif_location(path)
    assert (round(location.lat, 2), round(location.lon, 2), location.month) == (48.85, 2.35, 7)


def test_photo_without_gps_falls_back_to_no_location(tmp_path) -> None:
    plain, png, broken = tmp_path / "plain.jpg", tmp_path / "plain.png", tmp_path / "broken.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    Image.new("RGB", (8, 8)).save(png)
    broken.write_bytes(b"not an image")
    assert [read_exif_location(p) for p in (plain, png, broken)] == [None, None, None]
    assert make_locator("auto")(str(plain)) is None and make_locator("auto")("missing.jpg") is None


def test_location_table_and_dates(tmp_path) -> None:
    table = tmp_path / "where.csv"
    table.write_text("path,latitude,longitude,eventDate\na.jpg,51.5,-0.1,2020-03-02\nb.jpg,200,0,\n")
    locations = read_location_table(table)
    assert locations["a.jpg"] == Location(51.5, -0.1, 3, source="where.csv")
    assert locations[str(tmp_path / "a.jpg")].month == 3 and "b.jpg" not in locations
    assert month_of("2019:06:30 10:00:00") == 6 and month_of("2019") is None
    with pytest.raises(ValueError, match="latitude"):
        Location(91.0, 0.0)
