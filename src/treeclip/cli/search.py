"""``treeclip search``: the images of an index nearest to a query image or a text."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from treeclip.cli._options import Requirement

REQUIRES = (Requirement("index", ("faiss",)),)
HELP = "find the nearest indexed images to a query image or --text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", metavar="INDEX", help="index folder written by `treeclip index`")
    parser.add_argument("query", nargs="?", metavar="QUERY_IMAGE", help="query image")
    parser.add_argument("--text", help="text query instead of an image (e.g. 'a photo of Danaus plexippus')")
    parser.add_argument("--k", type=int, default=10, help="results (default 10)")
    parser.add_argument("--model", help="model id (default: the one the index was built with)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.predict.classifier import ImageEmbedder  # noqa: PLC0415
    from treeclip.predict.index import VectorIndex  # noqa: PLC0415

    if (args.query is None) == (args.text is None):
        raise UsageError("give exactly one query: an image path or --text TEXT")
    index = VectorIndex.load(args.index)
    model_id = args.model or index.model_id
    if not model_id:
        raise UsageError(f"{args.index} does not record its model; pass --model")
    embedder = ImageEmbedder.from_pretrained(model_id, device=args.device)
    if args.text is not None:
        query = embedder.embed_texts([args.text])
    else:
        query = _image_query(embedder, args.query)
    for rank, (path, score) in enumerate(index.search(query, k=args.k)[0], 1):
        sys.stdout.write(f"{rank}\t{score:.4f}\t{path}\n")
    return 0


def _image_query(embedder: Any, path: str) -> Any:
    """The query image's embedding, decoded and preprocessed by the very path `treeclip embed` takes (same
    decoder, JPEG draft size and preprocessing), so an indexed photo finds itself at cosine 1.0."""
    import numpy as np  # noqa: PLC0415

    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.predict.classifier import EMBEDDING  # noqa: PLC0415

    (row,) = embedder.predict([path], workers=1)
    if "error" in row:
        raise UsageError(f"cannot read query image {path}: {row['error']}")
    return np.asarray([row[EMBEDDING]], dtype=np.float32)
