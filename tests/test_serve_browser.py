"""The web page in a real browser: Debian's Chromium, driven by Playwright (never `playwright install`).

The test serves a tiny model with uvicorn on a loopback port, opens the page, uploads a generated photo
through the file picker and waits for the rendered answers (roll-up, lineage, a probability bar per rank),
then checks they are the API's answers for that photo; then it classifies the photo among custom labels.
"""

from __future__ import annotations

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
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(url + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("taxa in the label bank")
            page.set_input_files("#file-input", str(photo))
            card = page.locator("article.card").first
            sync_api.expect(card.locator(".rollup")).to_be_visible(timeout=30_000)
            if os.environ.get("TREECLIP_SCREENSHOT"):
                page.screenshot(path=os.environ["TREECLIP_SCREENSHOT"], full_page=True)
            shown = _rendered(card)
            page.fill("#labels", "a red fox\na grey wolf")
            page.set_input_files("#file-input", str(photo))
            labels = page.locator("article.card").first.locator("ol.labels .name")
            sync_api.expect(labels).to_have_count(2, timeout=30_000)
            shown["labels"] = sorted(labels.all_inner_texts())
        finally:
            browser.close()
        expected = _api_answer(url, photo)
    assert not failed
    assert shown["name"] == "beetle.png"
    assert shown["ranks"] == list(RANK_NAMES)
    assert shown["bars"] == expected["bars"]  # the page's k=3 answers at each rank
    assert shown["rollup"].startswith(expected["rollup"])
    assert shown["lineage"] == expected["lineage"]
    assert shown["labels"] == ["a grey wolf", "a red fox"]  # the custom labels field replaced the bank


def _rendered(card: object) -> dict:
    return {"name": card.locator("h2").inner_text(), "rollup": card.locator(".rollup strong").inner_text(),
            "lineage": card.locator(".lineage").inner_text(),
            "ranks": [text.lower() for text in card.locator(".rank h3").all_inner_texts()],
            "bars": card.locator(".rank .fill").count()}


def _api_answer(url: str, photo: Path) -> dict:
    """What the page should show, from the API itself: the roll-up name, the best species' lineage and the
    number of answers over all ranks."""
    import httpx  # noqa: PLC0415

    body = httpx.post(f"{url}/v1/predict", files=[("files", (photo.name, photo.read_bytes(), "image/png"))],
                      data={"rank": "all", "k": "3", "rollup": "0.5"}, timeout=30).json()
    result = body["results"][0]
    rollup, best = result["rollup"], next(row for row in result["rows"] if "species_epithet" in row)
    name = "unknown" if rollup["rank"] == "unknown" else rollup["species"] if rollup["rank"] == "species" \
        else rollup[rollup["rank"]]
    lineage = [best[rank] for rank in RANK_NAMES[:6]] + [best["species_epithet"]]
    return {"rollup": name, "lineage": " › ".join(part for part in lineage if part), "bars": len(result["rows"])}
