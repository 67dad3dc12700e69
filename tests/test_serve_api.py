"""The HTTP API: every endpoint against the classifiers it wraps, and every refusal (400, 413, 422, 503).

Also holds the builders the other serve tests import (a tiny model + bank world, PNG bytes, a live server).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'treeclip[serve]'")
pytest.importorskip("multipart", reason="needs the serve extra: pip install 'treeclip[serve]'")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from treeclip.cli import main  # noqa: E402
from treeclip.predict.classifier import CustomLabelsClassifier, ImageEmbedder, TreeOfLifeClassifier  # noqa: E402
from treeclip.serve.app import create_app  # noqa: E402
from treeclip.serve.limits import Busy, InferenceQueue, Limits  # noqa: E402
from treeclip.taxonomy import RANK_NAMES  # noqa: E402

LOCAL = "http://localhost"  # the server accepts localhost names and IP literals as Host


# ---- builders shared with the other serve tests -------------------------------------------------------------

def build_world(root: Path, n_species: int = 40) -> dict[str, Path]:
    """A tiny model and a bank over a random taxonomy, in the layout `treeclip demo` writes."""
    model_dir = export_tiny_model(root / "model")
    tiny_bank(model_dir, random_taxa(n_species), root / "bank")
    return {"model": model_dir, "bank": root / "bank"}


def image_array(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """Seeded random RGB pixels (height, width, 3)."""
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_array(seed, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def uploads(*blobs: bytes, names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [f"img{i}.png" for i in range(len(blobs))]
    return [("files", (name, blob, "image/png")) for name, blob in zip(names, blobs, strict=True)]


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn  # noqa: PLC0415

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", backlog=256))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


# ---- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def classifier(world: dict[str, Path]) -> TreeOfLifeClassifier:
    return TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"]))


@pytest.fixture(scope="module")
def client(classifier: TreeOfLifeClassifier) -> Iterator[TestClient]:
    with TestClient(create_app(classifier=classifier), base_url=LOCAL) as test_client:
        yield test_client


def _app_client(classifier: TreeOfLifeClassifier, **limits: float) -> TestClient:
    return TestClient(create_app(classifier=classifier, limits=Limits(**limits)), base_url=LOCAL)


def _same_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert {key: value for key, value in row.items() if key != "score"} == \
               {key: value for key, value in want.items() if key != "score"}
        assert row["score"] == pytest.approx(want["score"], abs=1e-5)


# ---- endpoints -------------------------------------------------------------------------------------------------

def test_predict_gives_the_classifier_rows_per_file(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    names = ["fox.png", "wolf.png", "fox.png"]
    response = client.post("/v1/predict", files=uploads(png_bytes(1), png_bytes(2), png_bytes(1), names=names),
                           data={"rank": "genus", "k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == classifier.model_id
    assert [(r["index"], r["file_name"]) for r in body["results"]] == list(enumerate(names))
    for index, seed in enumerate((1, 2, 1)):
        expected = classifier.predict([Image.fromarray(image_array(seed))], rank="genus", k=3)
        for row in expected:
            row["file_name"] = names[index]
        _same_rows(body["results"][index]["rows"], expected)
        assert body["results"][index]["rollup"] is None
    assert body["results"][0]["rows"] != body["results"][1]["rows"]


def test_predict_every_rank_with_rollup(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    response = client.post("/v1/predict", files=uploads(png_bytes(3)), data={"rank": "all", "k": "2", "rollup": "0.5"})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    image = Image.fromarray(image_array(3))
    expected = [row for rank in RANK_NAMES for row in classifier.predict([image], rank=rank, k=2)]
    for row in expected:
        row["file_name"] = "img0.png"
    _same_rows(result["rows"], expected)
    [rollup] = classifier.predict([image], rollup=0.5)
    rollup["file_name"] = "img0.png"
    _same_rows([result["rollup"]], [rollup])
    assert result["rollup"]["rank"] in (*RANK_NAMES, "unknown")


def test_predict_custom_labels(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    labels = ["a red fox", "a grey wolf", "@/etc/passwd"]  # a label is text, never a file to read
    response = client.post("/v1/predict", files=uploads(png_bytes(4)),
                           data={"labels": "a red fox,a grey wolf\n@/etc/passwd"})
    assert response.status_code == 200, response.text
    custom = CustomLabelsClassifier(model=classifier.model, preprocess=classifier.preprocess,
                                    tokenizer=classifier.tokenizer, labels=labels, model_id=classifier.model_id)
    expected = custom.predict([Image.fromarray(image_array(4))], k=5)
    for row in expected:
        row["file_name"] = "img0.png"
    _same_rows(response.json()["results"][0]["rows"], expected)
    assert {row["classification"] for row in expected} == set(labels)


def test_predict_subset_restricts_to_the_checklist(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    lineages = classifier.full_bank.lineages
    species = [lineage for lineage in lineages if lineage[6]][:2]
    genus = lineages[-1][5]
    subset = "\n".join([f"{lineage[5]} {lineage[6]}" for lineage in species] + [genus])
    response = client.post("/v1/predict", files=uploads(png_bytes(5)), data={"subset": subset, "k": "50"})
    assert response.status_code == 200, response.text
    rows = response.json()["results"][0]["rows"]
    allowed = {(lineage[5], lineage[6]) for lineage in species}
    assert rows and all((row["genus"], row["species_epithet"]) in allowed or row["genus"] == genus for row in rows)
    assert sum(row["score"] for row in rows) == pytest.approx(1.0, abs=1e-4)  # renormalised over the checklist
    nothing = client.post("/v1/predict", files=uploads(png_bytes(5)), data={"subset": "Nonexistentia"})
    assert nothing.status_code == 400 and "checklist matches no taxon" in nothing.json()["detail"]


def test_embed_gives_the_embedder_vectors(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    response = client.post("/v1/embed", files=uploads(png_bytes(6), png_bytes(7), names=["x.png", "y.png"]))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    embedder = ImageEmbedder(model=classifier.model, preprocess=classifier.preprocess, model_id=classifier.model_id)
    expected = embedder.predict([Image.fromarray(image_array(6)), Image.fromarray(image_array(7))])
    assert [(r["index"], r["path"], r["model"]) for r in results] == [(0, "x.png", classifier.model_id),
                                                                      (1, "y.png", classifier.model_id)]
    for result, row in zip(results, expected, strict=True):
        assert np.allclose(result["embedding"], row["embedding"], atol=1e-5)


def test_health_info_and_openapi(client: TestClient, classifier: TreeOfLifeClassifier) -> None:
    assert client.get("/v1/health").json() == {"status": "ok", "pending": 0, "queue_size": Limits().queue_size}
    info = client.get("/v1/info").json()
    assert info["model"] == classifier.model_id and info["bank_size"] == len(classifier.full_bank)
    assert info["embedding_dim"] == classifier.full_bank.dim and info["ranks"] == list(RANK_NAMES)
    assert {"treeclip", "torch", "open_clip", "fastapi"} <= set(info["versions"])
    assert info["limits"]["max_upload_mb"] == 20 and info["limits"]["max_pixels"] == 50e6
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/predict", "/v1/embed", "/v1/health", "/v1/info"}
    assert {"400", "413", "503"} <= set(paths["/v1/predict"]["post"]["responses"])


def test_page_and_its_files_are_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert f"/static/{name}" in page.text
        for text in (page.text, asset.text):
            assert "http://" not in text and "https://" not in text and "//cdn" not in text


# ---- refusals --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("blob", "reason"), [
    (b"this is not an image", "not an image"),
    (b"", "empty"),
    (png_bytes(8)[:120], "truncated"),
])
def test_unusable_file_gets_an_error_entry_and_the_others_are_answered(client: TestClient, blob: bytes,
                                                                         reason: str) -> None:
    files = uploads(png_bytes(9), blob, png_bytes(10), names=["ok.png", "bad.bin", "ok2.png"])
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file_name"] for r in results] == ["ok.png", "bad.bin", "ok2.png"]
    assert results[0]["rows"] and results[2]["rows"] and not results[1]["rows"]
    assert results[0]["error"] is None and reason in results[1]["error"]
    alone = client.post("/v1/predict", files=uploads(png_bytes(9), names=["ok.png"])).json()["results"][0]
    assert alone["rows"] == results[0]["rows"]  # the bad file does not shift the good ones' answers
    embedded = client.post("/v1/embed", files=files).json()["results"]
    assert embedded[1]["embedding"] is None and reason in embedded[1]["error"]
    assert len(embedded[2]["embedding"]) > 0 and embedded[2]["path"] == "ok2.png"


def test_request_without_a_usable_file_is_400_naming_each(client: TestClient) -> None:
    response = client.post("/v1/predict", files=uploads(b"", b"nope", names=["a.png", "b.png"]))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "a.png: empty" in detail and "b.png: not an image" in detail


def test_pixel_limit_is_400(classifier: TreeOfLifeClassifier) -> None:
    with _app_client(classifier, max_pixels=48 * 40) as small:
        assert small.post("/v1/embed", files=uploads(png_bytes(1))).status_code == 200
        response = small.post("/v1/embed", files=uploads(png_bytes(1, size=(49, 40))))
    assert response.status_code == 400 and "pixels > limit 1920" in response.json()["detail"]


def test_upload_limit_is_413_declared_or_streamed(classifier: TreeOfLifeClassifier) -> None:
    with _app_client(classifier, max_upload_bytes=50_000) as small:
        assert small.post("/v1/embed", files=uploads(png_bytes(1))).status_code == 200
        big = small.post("/v1/embed", files=uploads(png_bytes(1, size=(200, 200))))
        assert big.status_code == 413 and "upload limit" in big.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
            for _ in range(20):
                yield b"x" * 5000

        streamed = small.post("/v1/embed", content=chunks(),
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413


@pytest.mark.parametrize(("data", "status", "words"), [
    ({"rank": "subspecies"}, 400, "rank"),
    ({"rank": ","}, 400, "rank"),
    ({"labels": "fox, wolf", "rollup": "0.5"}, 400, "cannot be combined"),
    ({"labels": "just one"}, 400, "at least two"),
    ({"labels": ",".join(f"label {i}" for i in range(101))}, 400, "101 labels > limit 100"),
    ({"k": "0"}, 422, ""),
    ({"k": "many"}, 422, ""),
    ({"rollup": "1.5"}, 422, ""),
    ({"rollup": "nan"}, 422, ""),
])
def test_bad_options(client: TestClient, data: dict[str, str], status: int, words: str) -> None:
    response = client.post("/v1/predict", files=uploads(png_bytes(1)), data=data)
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])


def test_files_must_be_uploads_and_no_server_file_is_reachable(client: TestClient) -> None:
    assert client.post("/v1/predict", data={"files": "/etc/passwd"}).status_code == 422
    assert client.post("/v1/predict").status_code == 422
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/index.html",
                 "/static/", "/app.py", "/etc/passwd", "/docs", "/redoc"):  # (/docs would load a CDN script)
        response = client.get(path)
        assert response.status_code == 404, path
        assert "import" not in response.text


def test_too_many_files_is_400(classifier: TreeOfLifeClassifier) -> None:
    with _app_client(classifier, max_files=2) as small:
        response = small.post("/v1/embed", files=uploads(png_bytes(1), png_bytes(2), png_bytes(3)))
    assert response.status_code == 400 and "too many files" in response.json()["detail"]


def test_full_queue_is_503_with_retry_after(classifier: TreeOfLifeClassifier) -> None:
    with _app_client(classifier, queue_size=1, retry_after_s=3) as small:
        with small.app.state.queue.admit():  # one request in progress fills the queue
            response = small.post("/v1/embed", files=uploads(png_bytes(1)))
            assert small.get("/v1/health").json()["pending"] == 1
        assert response.status_code == 503 and response.headers["retry-after"] == "3"
        assert "busy" in response.json()["detail"]
        assert small.post("/v1/embed", files=uploads(png_bytes(1))).status_code == 200


def test_timeout_is_503_and_the_event_loop_stays_free(classifier: TreeOfLifeClassifier) -> None:
    release = threading.Event()
    with _app_client(classifier, timeout_s=0.5) as small:
        queue: InferenceQueue = small.app.state.queue
        blocker = queue.submit("block", lambda pixels: [release.wait(30)] * len(pixels), torch.zeros(1, 3, 2, 2))
        try:
            started = time.monotonic()
            response = small.post("/v1/embed", files=uploads(png_bytes(1)))
            assert 0.4 < time.monotonic() - started < 10
            assert response.status_code == 503 and "timed out" in response.json()["detail"]
            assert response.headers["retry-after"] == "1"
            assert small.get("/v1/health").status_code == 200  # answered while the model is busy
        finally:
            release.set()
        assert blocker.result(timeout=30) == [True]
        assert small.post("/v1/embed", files=uploads(png_bytes(1))).status_code == 200
        assert queue.pending == 0


def test_queue_batches_waiting_jobs_by_question() -> None:
    running, release, calls = threading.Event(), threading.Event(), []

    def block(pixels: torch.Tensor) -> list[int]:
        running.set()
        release.wait(30)
        return [0] * len(pixels)

    def score(pixels: torch.Tensor) -> list[float]:
        calls.append(len(pixels))
        return pixels.flatten(1).sum(1).tolist()

    queue = InferenceQueue(max_pending=10, max_batch=5)
    queue.submit("block", block, torch.zeros(1, 1))
    assert running.wait(30)
    futures = [queue.submit("ab"[i % 2], score, torch.full((1, 1), float(i))) for i in range(6)]
    release.set()
    assert [future.result(timeout=30) for future in futures] == [[float(i)] for i in range(6)]
    assert calls == [3, 2, 1] and queue.batches == 4  # 5 waiting images per round, one call per question
    queue.close()


def test_admission_is_bounded_and_released() -> None:
    queue = InferenceQueue(max_pending=2, max_batch=1)
    with queue.admit(), queue.admit():
        with pytest.raises(Busy):
            with queue.admit():
                pass
        assert queue.pending == 2
    assert queue.pending == 0
    with queue.admit():
        assert queue.pending == 1


# ---- the command -----------------------------------------------------------------------------------------------

def test_serve_without_a_model_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "treeclip demo" in err and len(err.strip().splitlines()) == 1


def test_serve_explains_a_missing_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util  # noqa: PLC0415

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'treeclip[serve]'" in err and len(err.strip().splitlines()) == 1


def test_serve_defaults_to_the_demo_model(tmp_path: Path, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn  # noqa: PLC0415

    demo = tmp_path / "treeclip-demo"
    demo.mkdir()
    (demo / "model").symlink_to(world["model"])
    (demo / "bank").symlink_to(world["bank"])
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--port", "8123", "--max-upload-mb", "1", "--queue-size", "4"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert served["app"].state.limits == Limits(max_upload_bytes=2**20, queue_size=4, allowed_hosts=("127.0.0.1",))
    with TestClient(served["app"], base_url=LOCAL) as test_client:
        assert test_client.get("/v1/info").json()["model"] == str(tmp_path / "treeclip-demo" / "model")  # resolvable
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
