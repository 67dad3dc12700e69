"""Response bodies of the HTTP API (they make the OpenAPI schema at ``/openapi.json``).

Prediction rows are exactly the rows `treeclip predict --format jsonl` writes (``file_name``, the rank
columns, ``score``; ``classification`` for custom labels; ``rank`` for roll-up rows), with ``file_name``
set to the uploaded file's name. Results come in upload order and echo each file's index and name; a file
that cannot be used has no rows and an ``error`` (the decoder's reason), while the other files are answered.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Row = dict[str, str | float]


class PredictResult(BaseModel):
    index: int = Field(description="position of the file in the upload (0-based)")
    file_name: str = Field(description="the uploaded file's name")
    rows: list[Row] = Field([], description="top-k rows at each requested rank (kingdom first), or over the custom "
                                            "labels; the fields of `treeclip predict --format jsonl`")
    rollup: Row | None = Field(None, description="the roll-up row (deepest rank whose probability reaches the "
                                                 "threshold, rank 'unknown' if none) when `rollup` was given")
    error: str | None = Field(None, description="why this file could not be used (then it has no rows)")


class PredictResponse(BaseModel):
    model: str
    results: list[PredictResult]


class EmbedResult(BaseModel):
    index: int = Field(description="position of the file in the upload (0-based)")
    path: str = Field(description="the uploaded file's name (the `path` column of `treeclip embed`)")
    embedding: list[float] | None = Field(None, description="L2-normalised image embedding (absent on error)")
    model: str
    error: str | None = Field(None, description="why this file could not be used")


class EmbedResponse(BaseModel):
    model: str
    results: list[EmbedResult]


class Health(BaseModel):
    status: str
    pending: int = Field(description="requests in progress")
    queue_size: int = Field(description="requests admitted at once; more are answered 503")


class Info(BaseModel):
    model: str
    bank_size: int
    embedding_dim: int
    ranks: list[str]
    versions: dict[str, str]
    limits: dict[str, float]


class Problem(BaseModel):
    detail: str


def tighten_openapi(schema: dict) -> dict:
    """Make the generated schema refuse what the server refuses: every ``files`` field needs at least one
    non-empty file, and ``rollup`` is a number or absent (a form field cannot carry a JSON null)."""
    for name, body in schema.get("components", {}).get("schemas", {}).items():
        if not name.startswith("Body_"):  # request bodies only
            continue
        properties = body.get("properties", {})
        files = properties.get("files")
        if files is not None and files.get("type") == "array":
            files["minItems"] = 1
            files["items"]["minLength"] = 1
        rollup = properties.get("rollup")
        if rollup is not None and "anyOf" in rollup:
            number = next(option for option in rollup.pop("anyOf") if option.get("type") == "number")
            rollup.update(number)
    return schema
