"""``treeclip search``: the images of an index nearest to a query image or a text."""

from __future__ import annotations

import argparse
import sys

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
    from treeclip.data.images import ImageError, decode_image  # noqa: PLC0415
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
        try:
            image = decode_image(args.query)
        except ImageError as exc:
            raise UsageError(f"cannot read query image {args.query}: {exc}") from exc
        query = embedder.encode_images(embedder.preprocess(image).unsqueeze(0)).cpu().numpy()
    for rank, (path, score) in enumerate(index.search(query, k=args.k)[0], 1):
        sys.stdout.write(f"{rank}\t{score:.4f}\t{path}\n")
    return 0
