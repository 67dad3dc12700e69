"""The web page in a real browser: Debian's Chromium, driven by Playwright (never `playwright install`).

The test serves a tiny model with uvicorn on a loopback port, opens the page, uploads a generated photo
through the file picker and waits for the rendered answers (roll-up, lineage, a probability bar per rank),
then checks they are the API's answers for that photo: the lineage under the roll-up is the roll-up's own
path, the answers on that path are marked, genus and species names are italic, nothing is cut short without
a tooltip, the model is named by its full id, the CSV/JSON downloads hold the answers and the rank selector
asks for one rank; then it classifies the photo among custom labels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_serve_api import build_world, live_server, png_bytes

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'treeclip[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")

from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.serve.app import create_app  # noqa: E402
from treeclip.taxonomy import RANK_NAMES  # noqa: E402

CHROMIUM = os.environ.get("TREECLIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")


def test_page_identifies_an_uploaded_photo(tmp_path: Path) -> None:
    world = build_world(tmp_path / "world")
    app = create_app(classifier=TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"])))
    photo = tmp_path / "beetle.png"
    photo.write_bytes(png_bytes(11, size=(96, 80)))
    with live_server(app) as url, sync_api.sync_playwright() as playwright:
        threshold = _threshold_above_species(url, photo)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(url + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("taxa in the label bank")
            page.fill("#rollup", f"{threshold:.6f}")
            page.set_input_files("#file-input", str(photo))
            card = page.locator("article.card").first
            sync_api.expect(card.locator(".rollup")).to_be_visible(timeout=30_000)
            if os.environ.get("TREECLIP_SCREENSHOT"):
                page.screenshot(path=os.environ["TREECLIP_SCREENSHOT"], full_page=True)
            shown = _rendered(card)
            shown["model"] = page.locator("#model-info").inner_text()
            shown["untitled_cuts"] = page.evaluate(UNTITLED_CUTS)
            with page.expect_download() as csv_download:
                page.click("#download-csv")
            shown["csv"] = Path(csv_download.value.path()).read_text()
            with page.expect_download() as json_download:
                page.click("#download-json")
            shown["json"] = json.loads(Path(json_download.value.path()).read_text())
            page.select_option("#rank", "genus")
            page.set_input_files("#file-input", str(photo))
            genus_card = page.locator("article.card").first
            sync_api.expect(genus_card.locator(".rank h3")).to_have_count(1, timeout=30_000)
            shown["genus_only"] = [text.lower() for text in genus_card.locator(".rank h3").all_inner_texts()]
            page.select_option("#rank", "all")
            page.fill("#labels", "a red fox\na grey wolf")
            page.set_input_files("#file-input", str(photo))
            labels = page.locator("article.card").first.locator("ol.labels .name")
            sync_api.expect(labels).to_have_count(2, timeout=30_000)
            shown["labels"] = sorted(labels.all_inner_texts())
        finally:
            browser.close()
        expected = _api_answer(url, photo, rollup=f"{threshold:.6f}")
    assert not failed
    assert shown["name"] == "beetle.png"
    assert shown["ranks"] == list(RANK_NAMES)
    assert shown["bars"] == expected["bars"]  # the page's k=3 answers at each rank
    assert shown["rollup"].startswith(expected["rollup"])
    assert shown["lineage"] == expected["lineage"]  # the roll-up's own path, not the best species' lineage
    assert shown["on_path"] == expected["on_path"]
    assert shown["italic"] == expected["italic"]  # every genus and species name, nothing else
    assert not shown["untitled_cuts"], shown["untitled_cuts"]
    assert str(world["model"]) in shown["model"]  # the model's full id, not a bare folder name
    csv_rows = shown["csv"].strip().splitlines()
    assert csv_rows[0].startswith("file_name,kind,rank,kingdom") and len(csv_rows) == 1 + expected["bars"] + 1
    assert shown["json"][0]["file_name"] == "beetle.png" and len(shown["json"][0]["rows"]) == expected["bars"]
    assert shown["genus_only"] == ["genus"]
    assert shown["labels"] == ["a grey wolf", "a red fox"]  # the custom labels field replaced the bank


# Elements cut with an ellipsis (or overflowing) whose full text is not in a tooltip.
UNTITLED_CUTS = """() => Array.from(document.querySelectorAll('body *')).filter((node) => {
  const style = getComputedStyle(node);
  const cut = style.textOverflow === 'ellipsis' || (style.overflow === 'hidden' && node.scrollWidth > node.clientWidth);
  return cut && node.textContent.trim() && node.title !== node.textContent;
}).map((node) => node.outerHTML.slice(0, 120))"""


def _rendered(card: object) -> dict:
    return {"name": card.locator("h2").inner_text(), "rollup": card.locator(".rollup strong").inner_text(),
            "lineage": card.locator(".lineage").inner_text(),
            "ranks": [text.lower() for text in card.locator(".rank h3").all_inner_texts()],
            "bars": card.locator(".rank .fill").count(),
            "on_path": sorted(card.locator(".rank .on-path .name").all_inner_texts()),
            "italic": sorted(card.locator(".rank .name i").all_inner_texts())}


def _post(url: str, photo: Path, **data: str) -> dict:
    import httpx  # noqa: PLC0415

    return httpx.post(f"{url}/v1/predict", files=[("files", (photo.name, photo.read_bytes(), "image/png"))],
                      data={"rank": "all", "k": "3", **data}, timeout=30).json()["results"][0]


def _threshold_above_species(url: str, photo: Path) -> float:
    """A roll-up threshold between the best species' and the best kingdom's probability, so the roll-up
    answers above species rank and its path differs from the best species' lineage."""
    rows = _post(url, photo)["rows"]
    kingdom = max(row["score"] for row in rows if "phylum" not in row)
    species = max(row["score"] for row in rows if "species_epithet" in row)
    assert kingdom - species > 1e-4, "the tiny model is too sure of its species to test the roll-up"
    return (kingdom + species) / 2


def _api_answer(url: str, photo: Path, *, rollup: str) -> dict:
    """What the page should show, from the API itself: the roll-up name and its own path, the answers on that
    path, the genus and species names (italic) and the number of answers over all ranks."""
    result = _post(url, photo, rollup=rollup)
    rollup, best = result["rollup"], next(row for row in result["rows"] if "species_epithet" in row)
    name = "unknown" if rollup["rank"] == "unknown" else rollup["species"] if rollup["rank"] == "species" \
        else rollup[rollup["rank"]]
    anchor = best if rollup["rank"] == "unknown" else rollup
    path = [anchor.get(rank, "") for rank in RANK_NAMES[:6]] + [anchor.get("species_epithet", "")]
    on_path, italic = [], []
    for row in result["rows"]:
        rank = next(r for r in reversed(RANK_NAMES) if r in row or (r == "species" and "species_epithet" in row))
        depth = RANK_NAMES.index(rank)
        label = row["species"] if rank == "species" else row[rank]
        shown = f"{label} ({row['common_name']})" if rank == "species" and row.get("common_name") else label
        if all(row.get(r, "") == anchor.get(r, "") for r in RANK_NAMES[: min(depth + 1, 6)]) and \
                (rank != "species" or row["species_epithet"] == anchor.get("species_epithet")):
            on_path.append(shown)
        if rank in ("genus", "species"):
            italic.append(label)
    return {"rollup": name, "lineage": " › ".join(part for part in path if part), "bars": len(result["rows"]),
            "on_path": sorted(on_path), "italic": sorted(italic)}
