"""A bounded load test on loopback: many concurrent clients, a small queue, answers checked image by image.

Each request uploads one or two of a few known images (predict or embed, at random) and every answer is
compared with a direct computation for its image, so a lost, swapped or mixed-up answer fails the test.
Under overload the only 5xx allowed is 503 (with Retry-After). `run_load` is also what
``benchmarks/serve_load.py`` runs, longer.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from test_serve_api import build_world, live_server, png_bytes

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'treeclip[serve]'")
httpx = pytest.importorskip("httpx", reason="needs httpx")

from treeclip.data.images import decode_image  # noqa: E402
from treeclip.predict.classifier import ImageEmbedder, TreeOfLifeClassifier  # noqa: E402
from treeclip.serve.app import create_app  # noqa: E402
from treeclip.serve.limits import Limits  # noqa: E402

K = 3


@dataclass
class Known:
    """Images with their directly computed answers: top-K species rows and embeddings."""

    blobs: list[bytes]
    rows: list[list[dict]]
    embeddings: np.ndarray  # [n, dim]

    @classmethod
    def compute(cls, classifier: TreeOfLifeClassifier, blobs: list[bytes]) -> Known:
        images = [decode_image(blob) for blob in blobs]
        rows = [classifier.predict([image], rank="species", k=K) for image in images]
        embedder = ImageEmbedder(model=classifier.model, preprocess=classifier.preprocess)
        vectors = np.array([row["embedding"] for row in embedder.predict(images)], dtype=np.float32)
        return cls(blobs, rows, vectors)

    def check_rows(self, image: int, rows: list[dict]) -> bool:
        want = self.rows[image]
        if len(rows) != len(want) or any(abs(a["score"] - b["score"]) > 1e-4 for a, b in zip(rows, want)):
            return False
        clear = len(want) < 2 or want[0]["score"] - want[1]["score"] > 1e-3
        return not clear or rows[0]["species"] == want[0]["species"]

    def check_embedding(self, image: int, vector: list[float]) -> bool:
        cosines = self.embeddings @ np.asarray(vector, dtype=np.float32)
        return int(cosines.argmax()) == image and cosines[image] > 0.9999


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 200 answers
    statuses: collections.Counter = field(default_factory=collections.Counter)
    wrong: list[str] = field(default_factory=list)  # mismatched or malformed answers
    failures: list[str] = field(default_factory=list)  # connection errors, timeouts
    images: int = 0  # images answered (200)

    def summary(self) -> dict[str, float]:
        ok = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"requests": sum(self.statuses.values()), "ok": self.statuses[200], "busy_503": self.statuses[503],
                "p50_ms": float(np.percentile(ok, 50)), "p95_ms": float(np.percentile(ok, 95)),
                "ok_per_s": self.statuses[200] / self.seconds, "images_per_s": self.images / self.seconds}


def run_load(url: str, known: Known, *, clients: int = 32, seconds: float = 10.0, seed: int = 0) -> LoadResult:
    """`clients` concurrent clients posting for `seconds`; every answer checked against `known`."""
    result = LoadResult(seconds)

    async def main() -> None:
        # idle connections are dropped before uvicorn's 5 s keep-alive timeout, so no request is ever sent on
        # a connection the server is closing at that moment (a client-side race, POST is not retried)
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(_client(client, known, result, deadline, np.random.default_rng([seed, i]))
                                   for i in range(clients)))

    asyncio.run(main())
    return result


async def _client(client: httpx.AsyncClient, known: Known, result: LoadResult, deadline: float,
                  rng: np.random.Generator) -> None:
    while time.monotonic() < deadline:
        picks = [int(i) for i in rng.integers(0, len(known.blobs), size=int(rng.integers(1, 3)))]
        embed = bool(rng.integers(0, 2))
        files = [("files", (f"img{i}-{n}.png", known.blobs[i], "image/png")) for n, i in enumerate(picks)]
        started = time.monotonic()
        try:
            response = await client.post("/v1/embed" if embed else "/v1/predict", files=files,
                                         data={} if embed else {"rank": "species", "k": str(K)})
        except httpx.HTTPError as exc:
            result.failures.append(f"{type(exc).__name__} after {time.monotonic() - started:.3f} s: {exc}")
            continue
        result.statuses[response.status_code] += 1
        if response.status_code == 503:
            if "retry-after" not in response.headers:
                result.wrong.append("503 without Retry-After")
            await asyncio.sleep(0.05)
        elif response.status_code == 200:
            result.latencies.append(time.monotonic() - started)
            result.images += len(picks)
            _check(known, picks, embed, response.json(), result)


def _check(known: Known, picks: list[int], embed: bool, body: dict, result: LoadResult) -> None:
    answers = body["results"]
    if len(answers) != len(picks):
        result.wrong.append(f"{len(answers)} answers for {len(picks)} files")
        return
    for n, (image, answer) in enumerate(zip(picks, answers, strict=True)):
        name = f"img{image}-{n}.png"
        if embed:
            good = answer["path"] == name and known.check_embedding(image, answer["embedding"])
        else:
            good = answer["file_name"] == name and all(row["file_name"] == name for row in answer["rows"]) \
                and known.check_rows(image, answer["rows"])
        if not good or answer["index"] != n:
            result.wrong.append(f"{'embed' if embed else 'predict'} answer {n} does not match {name}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[TreeOfLifeClassifier, Known]:
    world = build_world(tmp_path_factory.mktemp("load"))
    classifier = TreeOfLifeClassifier.from_pretrained(str(world["model"]), str(world["bank"]))
    return classifier, Known.compute(classifier, [png_bytes(seed, size=(64, 64)) for seed in range(8)])


def test_overload_gives_only_503_and_every_answer_matches_its_image(served: tuple, tmp_path: Path) -> None:
    classifier, known = served
    app = create_app(classifier=classifier, limits=Limits(queue_size=8, max_batch=16, timeout_s=60))
    with live_server(app) as url:
        result = run_load(url, known, clients=32, seconds=6.0)
        assert httpx.get(f"{url}/v1/health").json()["pending"] == 0
    summary = result.summary()
    print(f"\nserve load (32 clients, queue 8, 6 s): {summary}")
    assert not result.failures, result.failures[:3]
    assert not result.wrong, result.wrong[:3]
    assert set(result.statuses) <= {200, 503}, result.statuses
    assert result.statuses[200] >= 20 and result.statuses[503] > 0  # it served, and it was overloaded
    assert app.state.queue.batches < summary["ok"]  # concurrent requests shared model calls
