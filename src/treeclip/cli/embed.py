"""``treeclip embed``: L2-normalised image embeddings to Parquet (path, embedding, model), resumable."""

from __future__ import annotations

import argparse

from treeclip.cli._options import RAY_ENGINE, check_hub_model
from treeclip.cli.predict import (
    ONNX_RUNTIME,
    OPENVINO_RUNTIME,
    add_batch_arguments,
    check_runtime,
    output_metadata,
    progress_bar,
    report_errors,
)

REQUIRES = (RAY_ENGINE, ONNX_RUNTIME, OPENVINO_RUNTIME)
HELP = "write L2-normalised image embeddings to a Parquet file (path, embedding, model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS",
                        help="image files, folders (recursive), glob patterns or @LIST files")
    parser.add_argument("--model", required=True, help="model id: hf-hub:ORG/NAME, a model folder or a checkpoint")
    parser.add_argument("--output", "-o", required=True, metavar="FILE.parquet",
                        help="output Parquet file; re-running with it resumes")
    add_batch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from treeclip.data.engines import check_engine  # noqa: PLC0415
    from treeclip.predict.inputs import expand_inputs  # noqa: PLC0415

    items = expand_inputs(args.images)  # user mistakes end here, in one line, before torch loads
    check_hub_model(args.model)
    check_engine(args.engine, args.ray_address)
    from treeclip.predict.classifier import EMBED_COLUMNS, PATH, ImageEmbedder  # noqa: PLC0415
    from treeclip.predict.runner import run_to_writer  # noqa: PLC0415
    from treeclip.predict.writers import RowWriter  # noqa: PLC0415

    check_runtime(args.model, args.runtime)
    embedder = ImageEmbedder.from_pretrained(args.model, precision=args.precision, device=args.device,
                                             runtime=args.runtime)
    with RowWriter(args.output, fmt="parquet", columns=list(EMBED_COLUMNS), name_key=PATH,
                   model_id=embedder.model_id, metadata=output_metadata(embedder.model_id)) as writer:
        with progress_bar(len(items), sum(item in writer.done for item in items), command="embed") as bar:
            errors = run_to_writer(items, score=embedder.rows, preprocess=embedder.preprocess, writer=writer,
                                   batch_size=args.batch_size, workers=args.workers, name_key=PATH,
                                   draft_size=embedder.draft_size, progress=bar.update, engine=args.engine,
                                   ray_address=args.ray_address, **embedder.decoding(args.decode))
    report_errors("embed", errors, len(items), args.output)
    return 0
