"""The FastAPI app: prediction and embedding over uploaded images, health, info and the web page.

Safety: images arrive only as uploads (no URL is ever fetched, no path parameter names a file); `Guard`
(`treeclip.serve.limits`) checks Host and Origin, takes a queue place and caps the body before anything
parses it; validation errors never echo the input; each image's pixel count and aspect ratio are checked
from its header before decoding; custom labels and checklists are prepared off the model thread;
like the CLI, an unusable file gets an ``error`` entry with the decoder's reason while every good file of the
request is answered (200), and only a request with no usable file is refused (400, naming each file and
why); requests are admitted to a bounded queue
(503 + ``Retry-After`` when full or when a request outlives the timeout). The page's files are read once
from the package's ``static/`` folder and served from memory by name. FastAPI's /docs and /redoc pages are
off (they load their scripts from a CDN); the schema is at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import logging
import platform
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from treeclip import __version__
from treeclip.data.images import ImageError, decode_image
from treeclip.errors import UsageError
from treeclip.predict.classifier import (
    FILE_NAME,
    PATH,
    CustomLabelsClassifier,
    ImageEmbedder,
    TreeOfLifeClassifier,
)
from treeclip.predict.location import Location, parse_location, read_exif_location
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon, parse_binomial

from .limits import Busy, DecodePool, Guard, InferenceQueue, Limits, Scorer, VariantCache
from .schemas import EmbedResponse, Health, Info, PredictResponse, Problem, tighten_openapi

log = logging.getLogger(__name__)

MAX_K = 100
MAX_SUBSET = 10_000
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "bad option, or no usable image in the request (each file's reason)"},
    413: {"model": Problem, "description": "request body over the upload limit"},
    503: {"model": Problem, "description": "busy (queue full) or timed out; retry after Retry-After seconds"},
}
_SEPARATORS = re.compile(r"[,\n\r]+")

Files = Annotated[list[UploadFile], File(description="one or more image files (multipart field `files`)")]


def create_app(*, classifier: TreeOfLifeClassifier, limits: Limits = Limits()) -> FastAPI:
    """The app serving `classifier` (its model also answers custom labels and embeddings) under `limits`."""
    engines, pipeline = _Engines(classifier, cache_size=limits.variant_cache), _Pipeline(classifier, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pipeline.close()
        engines.close()

    app = FastAPI(title="treeclip", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Identify organisms in photos with a BioCLIP-style model: the tree of life at any "
                              "rank, checklists, roll-up, custom labels and image embeddings.")
    app.state.queue, app.state.limits = pipeline.jobs, limits
    app.add_middleware(Guard, limits=limits, jobs=pipeline.jobs)
    _add_error_handlers(app, limits)

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(
        files: Files,
        rank: Annotated[str, Form(description="a rank (kingdom ... species), a comma-separated list, or 'all'")]
        = "species",
        k: Annotated[int, Form(ge=1, le=MAX_K, description="answers per rank")] = 5,
        rollup: Annotated[float | None, Form(gt=0, le=1, description="roll-up threshold P in (0, 1]")] = None,
        labels: Annotated[str, Form(description="custom labels, comma or newline separated")] = "",
        subset: Annotated[str, Form(description="checklist: taxon names (binomials or any-rank names), "
                                                "comma or newline separated")] = "",
        lat: Annotated[float | None, Form(description="latitude of the photos (with lon), for the location "
                                                      "prior")] = None,
        lon: Annotated[float | None, Form(description="longitude of the photos (with lat)")] = None,
        date: Annotated[str, Form(max_length=40, description="date of the photos (YYYY-MM-DD), for a seasonal "
                                                             "prior")] = "",
        use_photo_gps: Annotated[bool, Form(description="use each photo's EXIF GPS position and date")] = False,
        abstain: Annotated[bool, Form(description="with rollup: answer 'not-an-organism' or 'not-in-bank' for "
                                                  "images unlike the bank's organisms")] = False,
    ) -> PredictResponse:
        """Top-k answers per requested rank (or over custom labels) and the roll-up answer, per file. With a
        location (lat/lon, or the photos' GPS) and a server started with --prior, answers are reweighted by
        the location prior and each row's ``prior`` says which was applied."""
        where = await _locations(files, classifier, lat=lat, lon=lon, date=date, use_photo_gps=use_photo_gps)
        key, score = await engines.question(ranks=_parse_ranks(rank), k=k, rollup=rollup,
                                      labels=_labels(labels, limits), subset=_checklist(subset))
        if where is not None or abstain:
            if labels or (abstain and rollup is None):
                raise UsageError("a location and abstain apply to tree-of-life answers (abstain: with rollup)")
            key = (*key, "abstain", abstain, "at", id(where) if where else None)
            score = functools.partial(score, locate=where.get if where else None, abstain=abstain)
        results = await pipeline.answers(files, key, score)
        return PredictResponse(model=classifier.model_id, results=_named(results))

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS)
    async def embed(files: Files) -> EmbedResponse:
        """One L2-normalised image embedding per file (the rows of `treeclip embed`)."""
        results = await pipeline.answers(files, ("embed",), engines.embed)
        rows = [{**row, PATH: name, "index": index, "model": classifier.model_id}
                for index, (name, row) in enumerate(results)]
        return EmbedResponse(model=classifier.model_id, results=rows)

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", pending=pipeline.jobs.pending, queue_size=limits.queue_size)

    @app.get("/v1/info", response_model=Info)
    async def info() -> Info:
        bank = classifier.full_bank
        return Info(model=classifier.model_id, bank_size=len(bank), embedding_dim=bank.dim, ranks=list(RANK_NAMES),
                    versions=_versions(), limits=_public_limits(limits))

    _add_page(app)
    generate = app.openapi
    app.openapi = lambda: app.openapi_schema or tighten_openapi(generate())  # type: ignore[method-assign]
    return app


class _Engines:
    """The classifiers behind the questions, sharing one model; checklist and label variants are cached."""

    def __init__(self, classifier: TreeOfLifeClassifier, *, cache_size: int) -> None:
        self.base = classifier
        self.embedder = ImageEmbedder(model=classifier.model, preprocess=classifier.preprocess,
                                      tokenizer=classifier.tokenizer, model_id=classifier.model_id,
                                      device=classifier.device)
        self._tree = VariantCache(self._make_tree, size=cache_size)
        self._custom = VariantCache(self._make_custom, size=cache_size)

    async def question(self, *, ranks: tuple[Rank, ...], k: int, rollup: float | None, labels: tuple[str, ...],
                       subset: tuple[Taxon, ...]) -> tuple[tuple, Scorer]:
        """(group key, scorer) of a prediction request; `UsageError` for options that do not combine."""
        if labels:
            if subset or rollup is not None:
                raise UsageError("labels classify among your labels; they cannot be combined with subset or rollup")
            custom = await self._custom.get(labels)
            return ("labels", labels, k), functools.partial(_label_answers, custom, k=k)
        key = ("tree", subset, ranks, k, rollup)
        tree = await self._tree.get(subset) if subset else self.base
        return key, functools.partial(_tree_answers, tree, ranks=ranks, k=k, rollup=rollup)

    def close(self) -> None:
        self._tree.close()
        self._custom.close()

    def embed(self, pixels: torch.Tensor) -> list[dict[str, Any]]:
        names = [str(i) for i in range(len(pixels))]
        return _by_name(self.embedder.rows(pixels, names), PATH, len(names), single=True)

    def _make_tree(self, subset: tuple[Taxon, ...]) -> TreeOfLifeClassifier:
        """A checklist's classifier with its bank columns and rank index computed (on the cache's thread)."""
        base = self.base
        tree = TreeOfLifeClassifier(model=base.model, preprocess=base.preprocess, bank=base.full_bank,
                                    tokenizer=base.tokenizer, model_id=base.model_id, checklist=list(subset),
                                    prior=base.prior, prior_weight=base.prior_weight, calibration=base.calibration,
                                    device=base.device)
        _ = tree.text_features, tree.index
        return tree

    def _make_custom(self, labels: tuple[str, ...]) -> CustomLabelsClassifier:
        base = self.base
        if base.tokenizer is None:
            raise UsageError("this server's model has no tokenizer, so custom labels are unavailable")
        custom = CustomLabelsClassifier(model=base.model, preprocess=base.preprocess, tokenizer=base.tokenizer,
                                        labels=labels, model_id=base.model_id, device=base.device)
        _ = custom.text_features  # the label × template encodings, here rather than on the model thread
        return custom


async def _locations(files: list[UploadFile], classifier: TreeOfLifeClassifier, *, lat: float | None,
                     lon: float | None, date: str, use_photo_gps: bool) -> dict[str, Location | None] | None:
    """Upload index ("0", "1", ...) → location for a request that gives one; None when it gives none."""
    if lat is None and lon is None and not date and not use_photo_gps:
        return None
    if classifier.prior is None:
        raise UsageError("this server has no location prior (start it with --prior PRIOR)")
    if (lat is None) != (lon is None):
        raise UsageError("lat and lon go together")
    fixed = parse_location(lat, lon, date or None, source="lat/lon") if lat is not None else None
    where: dict[str, Location | None] = {}
    for index, upload in enumerate(files):
        photo = None
        if use_photo_gps:
            photo = read_exif_location(await upload.read())
            await upload.seek(0)
        where[str(index)] = photo or fixed
    return where


def _tree_answers(classifier: TreeOfLifeClassifier, pixels: torch.Tensor, *, ranks: Sequence[Rank], k: int,
                  rollup: float | None, locate: Callable[[str], Location | None] | None = None,
                  abstain: bool = False) -> list[dict[str, Any]]:
    """Per image: top-k rows at each rank and the roll-up row, from one image encoding."""
    raw = classifier.embed(pixels)
    features = torch.nn.functional.normalize(raw, dim=-1)
    names = [str(i) for i in range(len(pixels))]
    rows = [row for rank in ranks
            for row in classifier.rows_from_features(features, names, rank=rank, k=k, locate=locate)]
    answers = [{"rows": found, "rollup": None} for found in _by_name(rows, FILE_NAME, len(names))]
    if rollup is not None:
        for row in classifier.rows_from_features(features, names, rollup=rollup, locate=locate, raw=raw,
                                                 abstain=abstain):
            answers[int(row[FILE_NAME])]["rollup"] = row
    return answers


def _label_answers(classifier: CustomLabelsClassifier, pixels: torch.Tensor, *, k: int) -> list[dict[str, Any]]:
    names = [str(i) for i in range(len(pixels))]
    return [{"rows": found, "rollup": None} for found in _by_name(classifier.rows(pixels, names, k=k), FILE_NAME,
                                                                  len(names))]


def _by_name(rows: list[dict[str, Any]], key: str, n: int, *, single: bool = False) -> list[Any]:
    """Rows named "0" .. "n-1" grouped by image (each image's only row when `single`)."""
    grouped: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for row in rows:
        grouped[int(row[key])].append(row)
    return [found[0] for found in grouped] if single else grouped


class _Pipeline:
    """Admission, decoding in threads and the model's queue: uploads in, one answer per file out."""

    def __init__(self, classifier: TreeOfLifeClassifier, limits: Limits) -> None:
        self.limits = limits
        self.jobs = InferenceQueue(max_pending=limits.queue_size, max_batch=limits.max_batch)
        self.decoders = DecodePool(workers=limits.decode_workers)
        self.load = functools.partial(_pixels, preprocess=classifier.preprocess, max_pixels=limits.max_pixels,
                                      draft_size=classifier.draft_size)

    async def answers(self, files: list[UploadFile], key: tuple, score: Scorer) -> list[tuple[str, Any]]:
        """(file name, answer) per uploaded file, in order, the answer of an unusable file being
        ``{"error": reason}``; 400 when no file is usable; `Busy` when full or out of time."""
        if len(files) > self.limits.max_files:
            raise HTTPException(400, f"too many files: {len(files)} > limit {self.limits.max_files} per request")
        names = [upload.filename or f"file-{index}" for index, upload in enumerate(files)]
        try:  # the request holds a queue place already (`Guard`)
            answers = await asyncio.wait_for(self._score(files, names, key, score), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise Busy(f"timed out after {self.limits.timeout_s:g} s; the server is busy, retry later") from None
        return list(zip(names, answers, strict=True))

    async def _score(self, files: list[UploadFile], names: list[str], key: tuple, score: Scorer) -> list[Any]:
        decoded = await self._decode(files)
        failed = {index: str(result) for index, result in enumerate(decoded) if isinstance(result, ImageError)}
        if len(failed) == len(files):
            raise HTTPException(400, "no usable image: " + "; ".join(f"{names[i]}: {why}" for i, why in failed.items()))
        good = torch.stack([result for result in decoded if not isinstance(result, ImageError)])
        answers = iter(await asyncio.wrap_future(self.jobs.submit(key, score, good)))
        return [{"error": failed[index]} if index in failed else next(answers) for index in range(len(files))]

    async def _decode(self, files: list[UploadFile]) -> list[torch.Tensor | ImageError]:
        """Preprocessed pixels, or the `ImageError` saying why it cannot be used, per file."""
        loop = asyncio.get_running_loop()
        tasks = [loop.run_in_executor(self.decoders.executor, self.load, await upload.read()) for upload in files]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ImageError):
                raise result
        return results

    def close(self) -> None:
        self.jobs.close()
        self.decoders.close()


def _named(results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Prediction answers with each row's ``file_name`` set to its upload's name, plus index and name."""
    for index, (name, result) in enumerate(results):
        for row in [*result.get("rows", []), *([result["rollup"]] if result.get("rollup") else [])]:
            row[FILE_NAME] = name
        result.update(index=index, file_name=name)
    return [result for _, result in results]


def _public_limits(limits: Limits) -> dict[str, float]:
    return {"max_upload_mb": limits.max_upload_bytes / 2**20, "max_pixels": limits.max_pixels,
            "max_files": limits.max_files, "max_labels": limits.max_labels, "max_k": MAX_K,
            "queue_size": limits.queue_size, "timeout_s": limits.timeout_s}


def _pixels(data: bytes, *, preprocess: Callable[..., torch.Tensor], max_pixels: int,
            draft_size: int) -> torch.Tensor:
    image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size)
    try:
        return preprocess(image)
    except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image is that image's problem
        raise ImageError(f"cannot preprocess: {exc}") from None


def _split(text: str) -> list[str]:
    """Comma/newline separated values, stripped, without empties and duplicates, in order."""
    return list(dict.fromkeys(part.strip() for part in _SEPARATORS.split(text) if part.strip()))


def _parse_ranks(text: str) -> tuple[Rank, ...]:
    values = _split(text)
    if [value.lower() for value in values] == ["all"]:
        return tuple(Rank)
    try:
        ranks = sorted({Rank.parse(value) for value in values})
    except ValueError as exc:
        raise UsageError(f"rank: {exc}") from None
    if not ranks:
        raise UsageError(f"rank: give one of {', '.join(RANK_NAMES)}, a comma-separated list, or 'all'")
    return tuple(ranks)


def _labels(text: str, limits: Limits) -> tuple[str, ...]:
    labels = _split(text)
    if len(labels) > limits.max_labels:
        raise UsageError(f"labels: {len(labels)} labels > limit {limits.max_labels}")
    if len(labels) == 1:
        raise UsageError("labels: give at least two labels to choose between")
    return tuple(labels)


def _checklist(text: str) -> tuple[Taxon, ...]:
    """Checklist entries: a binomial names genus + epithet; a single name matches a taxon of any rank."""
    values = _split(text)
    if len(values) > MAX_SUBSET:
        raise UsageError(f"subset: {len(values)} names > limit {MAX_SUBSET}")
    entries: list[Taxon] = []
    for value in values:
        try:
            taxon = parse_binomial(value)
        except ValueError as exc:
            raise UsageError(f"subset: {exc}") from None
        if taxon.species:
            entries.append(taxon)
        else:
            entries.extend(Taxon(("",) * rank + (taxon.genus,)) for rank in range(Rank.SPECIES))
    return tuple(dict.fromkeys(entries))


def _versions() -> dict[str, str]:
    import fastapi  # noqa: PLC0415
    import open_clip  # noqa: PLC0415

    return {"treeclip": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "fastapi": fastapi.__version__, "python": platform.python_version()}


def _add_error_handlers(app: FastAPI, limits: Limits) -> None:
    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(limits.retry_after_s)})

    @app.exception_handler(UsageError)
    async def usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 body without the ``input`` and ``ctx`` it would echo (an upload can be megabytes)."""
        detail = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))[:200],
                   "type": error.get("type", "")} for error in exc.errors()[:20]]
        return JSONResponse({"detail": detail}, status_code=422)


def _add_page(app: FastAPI) -> None:
    """``/`` (the page) and ``/static/{name}`` for its few files, held in memory."""
    folder = importlib.resources.files("treeclip.serve") / "static"
    page = (folder / "index.html").read_bytes()
    assets = {name: (folder / name).read_bytes() for name in STATIC_TYPES}

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "not found")
        return Response(assets[name], media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)
