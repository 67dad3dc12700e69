"""Where and how sure, on a tiny demo model (the demo's own steps at tiny size, one short training run):
the prior helps species top-1 on held-out images and never buries a true species recorded near the photo;
calibration; abstention on non-organism images; hierarchical consistency; clade filters; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from treeclip.cli import main
from treeclip.demo import geo
from treeclip.demo.pipeline import (MIXED, Layout, demo_settings, export_artifacts, make_architecture, make_shards,
                                    make_world, train_run)
from treeclip.errors import UsageError
from treeclip.predict.classifier import NOT_AN_ORGANISM, NOT_IN_BANK, TreeOfLifeClassifier
from treeclip.predict.location import Location
from treeclip.taxonomy import Rank

SETTINGS = demo_settings(quick=True, species=24, images_per_species=12, epochs=4, train_seeds=(0,))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, dict]:
    layout = Layout(tmp_path_factory.mktemp("geo") / "demo")
    layout.root.mkdir(parents=True)
    make_world(layout, SETTINGS, None)
    make_shards(layout, SETTINGS, None)
    make_architecture(layout, SETTINGS)
    checkpoint, _, _ = train_run(layout, SETTINGS, MIXED, None, 0, None)
    export_artifacts(layout, SETTINGS, checkpoint, None)
    numbers = geo.run_geo(layout.root, model=layout.model, bank=layout.bank, world=layout.world,
                          image_size=SETTINGS.image_size, seed=0)
    return layout, numbers


def test_prior_improves_species_top1_and_keeps_recorded_true_species(demo) -> None:
    _, numbers = demo
    effect = numbers["prior_effect"]
    assert effect["with_prior"]["species"] > effect["without_prior"]["species"]
    assert effect["with_prior"]["genus"] >= effect["without_prior"]["genus"]
    assert effect["true_species_recorded_near"] > 0.8 * effect["images"]  # the world's records cover its ranges
    assert effect["ranked_below_an_unrecorded_species"] == 0
    assert effect["min_true_probability"] > 0.0


def test_calibration_is_stored_with_the_bank(demo) -> None:
    layout, numbers = demo
    stored = json.loads((layout.bank / "calibration.json").read_text())
    assert stored["temperature"] == pytest.approx(numbers["calibration"]["temperature"])
    calibration = numbers["calibration"]
    assert stored["metrics"]["nll_after"] <= stored["metrics"]["nll_before"]  # the fit's own objective
    assert set(calibration["calibrated"]) >= {"nll", "ece", "coverage"}  # held-out numbers, reported as measured
    # temperature scaling keeps every image's ranking: full-coverage accuracy is unchanged
    assert calibration["calibrated"]["coverage"]["1.0"] == calibration["uncalibrated"]["coverage"]["1.0"]
    classifier = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank)
    assert classifier.temperature == pytest.approx(stored["temperature"])


def test_non_organisms_are_not_named_as_confident_species(demo) -> None:
    _, numbers = demo
    others, organisms = numbers["abstention"]["non_organisms"], numbers["abstention"]["organisms"]
    assert others.get("species", 0.0) == others.get("genus", 0.0) == 0.0
    assert geo.abstained(others) >= 0.6
    assert geo.abstained(others) > 2 * geo.abstained(organisms)
    assert "## Where and how sure" in geo.markdown(numbers)


def test_texture_rows_abstain_or_stay_above_genus(demo) -> None:
    layout, _ = demo
    classifier = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank)
    textures = sorted(str(p) for p in (layout.root / geo.NON_ORGANISMS).glob("*.png"))
    rows = classifier.predict(textures, rollup=0.5, abstain=True)
    assert {row["rank"] for row in rows} <= {NOT_AN_ORGANISM, NOT_IN_BANK, "unknown", "kingdom", "phylum", "class",
                                             "order", "family"}
    without = classifier.predict(textures, rollup=0.5)  # no abstention asked: no abstaining answer
    assert not {row["rank"] for row in without} & {NOT_AN_ORGANISM, NOT_IN_BANK}


def test_parents_are_never_below_children_with_prior_and_calibration(demo) -> None:
    layout, _ = demo
    classifier = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank,
                                                      prior=layout.root / geo.PRIOR_FILE)
    images = sorted((layout.world / "images").rglob("*.png"))[:16]
    features, _, _ = classifier.features([str(p) for p in images])
    where = [Location(10.0 * i - 60, 20.0 * i - 160, month=1 + i % 12) for i in range(len(images))]
    levels = classifier.index.aggregate_all(classifier.probabilities(features, where))
    for rank in range(Rank.SPECIES, Rank.KINGDOM, -1):
        parent = torch.from_numpy(classifier.index.groups[rank].parent)
        assert (levels[rank - 1][:, parent] >= levels[rank] - 1e-6).all()
    assert torch.allclose(levels[Rank.KINGDOM].sum(dim=1), torch.ones(len(images)))


def test_within_and_checklist_compose(demo, tmp_path) -> None:
    layout, _ = demo
    full = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank)
    kingdom, phylum = full.bank.lineages[0][0], full.bank.lineages[0][1]
    inside = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank, within=[phylum])
    assert {lineage[1] for lineage in inside.bank.lineages} == {phylum}
    genera = sorted({lineage[Rank.GENUS] for lineage in full.bank.lineages})
    checklist = tmp_path / "checklist.csv"
    checklist.write_text("genus\n" + "\n".join(genera[:8]) + "\n")
    both = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank, within=[kingdom])
    both.checklist = __import__("treeclip.predict.filters", fromlist=["read_checklist"]).read_checklist(checklist)
    kept = both.bank.lineages
    assert kept and all(l[0] == kingdom and l[Rank.GENUS] in genera[:8] for l in kept)
    with pytest.raises(UsageError, match="notaclade"):
        _ = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank, within=["NotAClade"]).bank


def test_predict_cli_with_exif_location_and_within(demo, tmp_path, capsys) -> None:
    layout, _ = demo
    source = sorted((layout.world / "images").rglob("*.png"))[0]
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (10.0, 30.0, 0.0),
                ExifTags.GPS.GPSLongitudeRef: "W", ExifTags.GPS.GPSLongitude: (20.0, 0.0, 0.0)})
    Image.open(source).convert("RGB").save(photo, exif=exif)
    no_gps = tmp_path / "no_gps.jpg"
    Image.open(source).convert("RGB").save(no_gps)
    out = tmp_path / "rows.jsonl"
    args = ["predict", str(photo), str(no_gps), "--model", str(layout.model), "--bank", str(layout.bank),
            "--prior", str(layout.root / geo.PRIOR_FILE), "--location", "auto", "--format", "jsonl",
            "--output", str(out), "--k", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    notes = {Path(row["file_name"]).name: row["prior"] for row in rows}
    assert notes["photo.jpg"].startswith("prior.parquet at 10.5000,-20.0000") and "exif" in notes["photo.jpg"]
    assert notes["no_gps.jpg"] == "none (no location)"
    dwc = tmp_path / "rows.dwc.csv"
    assert main([*args[:-4], "--format", "dwc", "--output", str(dwc)]) == 0
    assert "location prior: prior.parquet at 10.5000,-20.0000" in dwc.read_text()
    assert main(["predict", str(photo), "--model", str(layout.model), "--bank", str(layout.bank),
                 "--lat", "91", "--lon", "0", "--prior", str(layout.root / geo.PRIOR_FILE)]) == 2
    assert "latitude" in capsys.readouterr().err
    assert main(["predict", str(photo), "--model", str(layout.model), "--bank", str(layout.bank),
                 "--lat", "10"]) == 2


def test_calibrate_cli_writes_the_bank_calibration(demo, tmp_path, capsys) -> None:
    layout, _ = demo
    bank = shutil.copytree(layout.bank, tmp_path / "bank")  # the shared fixture's bank keeps run_geo's calibration
    assert main(["calibrate", str(layout.world / "catalog.csv"), "--split", "val", "--model", str(layout.model),
                 "--bank", str(bank)]) == 0
    err = capsys.readouterr().err
    assert "temperature" in err and "ECE" in err
    stored = json.loads((bank / "calibration.json").read_text())
    assert stored["fitted_on"] > 0 and stored["out_of_bank_threshold"] is not None
    assert np.isfinite(stored["metrics"]["nll_after"]) and stored["metrics"]["nll_after"] <= stored["metrics"][
        "nll_before"] + 1e-6


def test_http_api_takes_a_location_or_the_photos_gps(demo, tmp_path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from treeclip.serve.app import create_app

    layout, _ = demo
    classifier = TreeOfLifeClassifier.from_pretrained(str(layout.model), layout.bank,
                                                      prior=layout.root / geo.PRIOR_FILE)
    source = Image.open(sorted((layout.world / "images").rglob("*.png"))[0]).convert("RGB")
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({ExifTags.GPS.GPSLatitudeRef: "S", ExifTags.GPS.GPSLatitude: (12.0, 0.0, 0.0),
                ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (40.0, 30.0, 0.0)})
    with_gps, without = tmp_path / "gps.jpg", tmp_path / "plain.jpg"
    source.save(with_gps, exif=exif)
    source.save(without)
    files = [("files", ("gps.jpg", with_gps.read_bytes(), "image/jpeg")),
             ("files", ("plain.jpg", without.read_bytes(), "image/jpeg"))]
    with TestClient(create_app(classifier=classifier), base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/predict", files=files, data={"use_photo_gps": "true", "rollup": "0.5"}).json()
        notes = [result["rollup"]["prior"] for result in answer["results"]]
        assert notes[0].startswith("prior.parquet at -12.0000,40.5000") and notes[1] == "none (no location)"
        fixed = client.post("/v1/predict", files=files[1:], data={"lat": "5", "lon": "6", "date": "2020-07-01"})
        assert all("5.0000,6.0000 month 7" in row["prior"] for row in fixed.json()["results"][0]["rows"])
        assert client.post("/v1/predict", files=files[1:], data={"lat": "5"}).status_code == 400
        organism = client.post("/v1/predict", files=files[1:], data={"rollup": "0.5", "abstain": "true"}).json()
        texture = Image.new("RGB", (32, 32), (128, 128, 128))
        texture.save(tmp_path / "grey.png")
        grey = client.post("/v1/predict", files=[("files", ("grey.png", (tmp_path / "grey.png").read_bytes(),
                                                             "image/png"))], data={"rollup": "0.5", "abstain": "true"})
        assert organism["results"][0]["rollup"]["rank"] and grey.status_code == 200
        assert client.post("/v1/predict", files=files[1:], data={"abstain": "true"}).status_code == 400
        page = client.get("/").text
        assert 'id="location"' in page and 'id="use-gps"' in page
