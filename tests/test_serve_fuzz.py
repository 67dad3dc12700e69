"""Fuzzing the API: schemathesis generates requests from ``/openapi.json`` (in-process ASGI), and Hypothesis
sends real images with arbitrary option strings; no request may end in a server error, and every answer
must follow the documented schema and status codes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_serve_api import build_world, png_bytes

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'treeclip[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install schemathesis)")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.serve.app import create_app  # noqa: E402
from treeclip.serve.limits import Limits  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="session")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    world = build_world(tmp_path_factory.mktemp("fuzz"), n_species=20)
    classifier = TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"]))
    app = create_app(classifier=classifier, limits=Limits(max_upload_bytes=2**20, timeout_s=30,
                                                     allowed_hosts=("testserver",)))  # schemathesis' Host
    with TestClient(app):  # runs the lifespan, so the app is torn down after the session
        yield app


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schema_fuzzing_finds_no_server_error(fuzz_app: FastAPI, mode: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} == {"/v1/predict", "/v1/embed", "/v1/health", "/v1/info"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # no parameters to break

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        call()


OPTION = st.one_of(st.text(max_size=40), st.sampled_from(["species", "all", "genus,family", "0", "-1", "1e9",
                                                          "nan", "0.5", "Regnuma", "a,b\nc", ",", ""]))


def test_options_fuzzing_with_real_images(fuzz_app: FastAPI) -> None:
    client, statuses = TestClient(fuzz_app), set()

    @FUZZ
    @given(rank=OPTION, k=OPTION, rollup=OPTION, labels=OPTION, subset=OPTION, name=st.text(max_size=30))
    def call(rank: str, k: str, rollup: str, labels: str, subset: str, name: str) -> None:
        data = {key: value for key, value in (("rank", rank), ("k", k), ("rollup", rollup), ("labels", labels),
                                              ("subset", subset)) if value}
        files = [("files", (name or "x.png", png_bytes(1), "image/png"))]
        response = client.post("/v1/predict", data=data, files=files)
        assert response.status_code in (200, 400, 422), (data, response.text)
        statuses.add(response.status_code)
        if response.status_code == 200:
            result = response.json()["results"][0]
            assert result["rows"] and all(row["file_name"] == result["file_name"] for row in result["rows"])
        else:
            assert response.json()["detail"]

    call()
    assert statuses == {200, 400, 422}  # the fuzzing reached answers and both kinds of refusal
