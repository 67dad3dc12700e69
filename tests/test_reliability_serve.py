"""Reliability of the HTTP server (issue 14): Host/Origin checks, admission before the body is read, body
caps and timeouts, validation errors that do not echo the input, nosniff, and text-side variants prepared
off the model thread with failures cached."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'treeclip[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from test_serve_api import build_world, png_bytes, uploads  # noqa: E402

from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.serve.app import create_app  # noqa: E402
from treeclip.serve.limits import Guard, InferenceQueue, Limits, VariantCache, host_allowed  # noqa: E402

LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    world = build_world(tmp_path_factory.mktemp("serve"), n_species=20)
    classifier = TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"]))
    with TestClient(create_app(classifier=classifier, limits=Limits(max_upload_bytes=2**20)),
                    base_url=LOCAL) as test_client:
        yield test_client


# ---------------------------------------------------------------- through the app


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:8000", "localhost.evil.example"])
def test_foreign_host_headers_are_refused(client: TestClient, host: str) -> None:
    response = client.get("/v1/health", headers={"Host": host})
    assert response.status_code == 400 and "Host header" in response.json()["detail"]


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "10.1.2.3:80", "app.localhost"])
def test_local_names_and_ip_literals_are_served(client: TestClient, host: str) -> None:
    assert client.get("/v1/health", headers={"Host": host}).status_code == 200
    assert host_allowed(host, ())


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}])
def test_cross_origin_posts_are_refused_before_anything_runs(client: TestClient, headers: dict) -> None:
    response = client.post("/v1/predict", files=uploads(png_bytes(1)), headers=headers)
    assert response.status_code == 403


def test_same_origin_posts_are_served(client: TestClient) -> None:
    headers = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/v1/predict", files=uploads(png_bytes(1)), headers=headers).status_code == 200


def test_json_and_errors_carry_nosniff(client: TestClient) -> None:
    for response in (client.get("/v1/health"), client.get("/v1/info"), client.get("/nothing"),
                     client.post("/v1/predict", data={"k": "x"})):
        assert response.headers["x-content-type-options"] == "nosniff"


def test_validation_errors_do_not_echo_the_input(client: TestClient) -> None:
    huge = "9" * 500_000
    response = client.post("/v1/predict", files=uploads(png_bytes(1)), data={"k": huge})
    assert response.status_code == 422
    assert len(response.content) < 2000 and "999999" not in response.text


def test_elongated_upload_is_an_error_entry_not_a_memory_spike(client: TestClient, tmp_path: Path) -> None:
    from PIL import Image  # noqa: PLC0415

    Image.new("RGB", (65000, 1)).save(tmp_path / "strip.png")
    files = uploads((tmp_path / "strip.png").read_bytes(), png_bytes(2), names=["strip.png", "ok.png"])
    results = client.post("/v1/predict", files=files).json()["results"]
    assert "too elongated" in results[0]["error"] and results[1]["rows"]


def test_a_subset_matching_nothing_is_computed_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from treeclip.predict import classifier as module  # noqa: PLC0415

    calls = []
    original = module.filter_columns
    monkeypatch.setattr(module, "filter_columns", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(3):
        response = client.post("/v1/predict", files=uploads(png_bytes(1)), data={"subset": "Nonexistus nullus"})
        assert response.status_code == 400 and "matches no taxon" in response.json()["detail"]
    assert len(calls) == 1


# ---------------------------------------------------------------- the guard, driven as ASGI


class _Recorder:
    """A downstream app that records whether it ran and the body it received."""

    def __init__(self) -> None:
        self.called, self.body = False, b""

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        self.called = True
        message = await receive()
        self.body = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _drive(guard: Guard, headers: dict[str, str], chunks: list[bytes], *, delay: float = 0.0) -> tuple[int, int]:
    """(status, chunks the guard read) for one POST whose body arrives in `chunks`."""
    read = 0

    async def receive() -> dict:
        nonlocal read
        await asyncio.sleep(delay)
        read += 1
        if read > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict",
             "headers": [(b"host", b"localhost"), *((k.encode(), v.encode()) for k, v in headers.items())]}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], read


def _guard(**limits: float) -> tuple[Guard, _Recorder, InferenceQueue]:
    app, jobs = _Recorder(), InferenceQueue(max_pending=1, max_batch=1)
    return Guard(app, limits=Limits(**{"max_upload_bytes": 1000, **limits}), jobs=jobs), app, jobs


def test_declared_oversize_body_is_refused_unread() -> None:
    guard, app, _ = _guard()
    assert _drive(guard, {"content-length": "5000"}, [b"x" * 5000]) == (413, 0) and not app.called


def test_undeclared_body_is_capped_while_streaming() -> None:
    guard, app, _ = _guard()
    status, read = _drive(guard, {}, [b"x" * 400] * 100)
    assert status == 413 and read == 3 and not app.called


def test_a_full_queue_refuses_before_buffering() -> None:
    guard, app, jobs = _guard()
    with jobs.admit():
        status, read = _drive(guard, {"content-length": "800"}, [b"x" * 400] * 2)
    assert status == 503 and read == 2 and not app.called  # drained (so the client reads the 503), not kept


def test_slow_bodies_time_out() -> None:
    guard, app, jobs = _guard(body_timeout_s=0.2)
    status, _ = _drive(guard, {}, [b"x"] * 50, delay=0.05)
    assert status == 408 and not app.called and jobs.pending == 0


def test_admitted_request_gets_its_whole_body() -> None:
    guard, app, jobs = _guard()
    assert _drive(guard, {}, [b"ab", b"cd"]) == (200, 2) and app.body == b"abcd" and jobs.pending == 0


# ---------------------------------------------------------------- variants off the model thread


def test_variants_are_built_off_the_model_thread_and_failures_are_cached() -> None:
    threads: list[str] = []

    def build(key: str) -> str:
        threads.append(threading.current_thread().name)
        if key == "nothing":
            raise ValueError("matches no taxon")
        return key.upper()

    cache = VariantCache(build, size=64)

    async def ask() -> None:
        for _ in range(3):
            assert await cache.get("oak") == "OAK"
            with pytest.raises(ValueError, match="matches no taxon"):
                await cache.get("nothing")

    asyncio.run(ask())
    assert cache.builds == 2 and all(name.startswith("treeclip-text") for name in threads)
    cache.close()


def test_event_loop_keeps_serving_while_a_variant_is_built() -> None:
    cache = VariantCache(lambda key: time.sleep(1.0) or key, size=2)

    async def race() -> float:
        slow = asyncio.ensure_future(cache.get("labels"))
        start = time.perf_counter()
        await asyncio.sleep(0.01)  # another request's work on the loop
        waited = time.perf_counter() - start
        await slow
        return waited

    assert asyncio.run(race()) < 0.5
    cache.close()


# ---------------------------------------------------------------- the schema and RFC 5987 names


def test_rfc5987_filename_is_an_upload_not_a_text_field(client: TestClient) -> None:
    boundary = "treeclipboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename*=UTF-8''na%C3%AFve%20fox.png"
            f"\r\nContent-Type: image/png\r\n\r\n").encode() + png_bytes(1) + f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/predict", content=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["file_name"] == "naïve fox.png"


def test_schema_refuses_what_the_server_refuses(client: TestClient) -> None:
    bodies = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("Body_predict_v1_predict_post", "Body_embed_v1_embed_post"):
        files = bodies[name]["properties"]["files"]
        assert files["minItems"] == 1 and files["items"]["minLength"] == 1
    rollup = bodies["Body_predict_v1_predict_post"]["properties"]["rollup"]
    assert rollup["type"] == "number" and "anyOf" not in rollup
    assert client.post("/v1/predict", files=[("files", ("e.png", b"", "image/png"))]).status_code == 400


def test_serve_options_reach_the_limits() -> None:
    from treeclip.cli import build_parser  # noqa: PLC0415
    from treeclip.cli.serve import _limits  # noqa: PLC0415

    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--allow-host", "lab.example.org",
                                      "--max-connections", "50"])
    limits = _limits(args)
    assert limits.max_connections == 50 and limits.allowed_hosts == ("0.0.0.0", "lab.example.org")
    assert host_allowed("lab.example.org:8000", limits.allowed_hosts) and not host_allowed("evil.test", ())
