"""``treeclip index``: build a nearest-neighbour index over `treeclip embed` output."""

from __future__ import annotations

import argparse
import sys

from treeclip.cli._options import Requirement

REQUIRES = (Requirement("index", ("faiss",)),)
HELP = "build a vector index (faiss) over a `treeclip embed` Parquet file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="Parquet file written by `treeclip embed`")
    parser.add_argument("--out", required=True, metavar="INDEX", help="output index folder")
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw"),
                        help="exact (flat) or approximate (hnsw) search; auto picks by size")


def run(args: argparse.Namespace) -> int:
    from treeclip.predict.index import VectorIndex, read_embeddings  # noqa: PLC0415

    vectors, paths, model_id = read_embeddings(args.embeddings)
    index = VectorIndex.build(vectors, paths, model_id=model_id, kind=args.kind)
    index.save(args.out)
    sys.stderr.write(f"treeclip index: {len(paths)} images, dim {vectors.shape[1]} → {args.out}\n")
    return 0
