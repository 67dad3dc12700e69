"""``treeclip export``: a training run or checkpoint → open_clip's hub layout (loadable by plain open_clip), or
any model → an ONNX model folder for ONNX Runtime (``--format onnx``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from treeclip.cli._options import Requirement

HELP = "export a run or checkpoint as an open_clip model folder, or any model as ONNX (--format onnx)"
REQUIRES = (Requirement("onnx", ("onnx", "onnxruntime", "onnxscript"), when=lambda args: args.format == "onnx"),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="MODEL",
                        help="a run folder (its newest checkpoint is used) or a checkpoint file; with --format onnx "
                        "also a model folder or hf-hub:ORG/NAME")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--format", default="open_clip", choices=("open_clip", "onnx"),
                        help="open_clip (hub layout: config + safetensors; default) or onnx (image tower, its "
                        "int8 variant, text tower and the preprocessing, for `--runtime onnx` or `--runtime openvino`)")
    parser.add_argument("--no-int8", action="store_true",
                        help="with --format onnx: skip the int8 image tower (fp32, the recommended default, is "
                        "always written)")


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        return _export_onnx(args)
    from treeclip.train.export import export_checkpoint  # noqa: PLC0415 - keep --help free of torch

    checkpoint, out = export_checkpoint(args.source, out_dir=args.out)
    print(f"exported {checkpoint} to {out} (load with open_clip.create_model_from_pretrained('local-dir:{out}'))")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from treeclip.model import is_hub_dir, load_model  # noqa: PLC0415
    from treeclip.model.onnx import export_onnx  # noqa: PLC0415
    from treeclip.train.checkpoint import resolve_checkpoint  # noqa: PLC0415

    source = args.source
    if Path(source).is_dir() and not is_hub_dir(source):
        source = str(resolve_checkpoint(source))
    model, _, preprocess, tokenizer = load_model(source)
    out = export_onnx(model, model_id=source, out_dir=args.out, preprocess=preprocess, tokenizer=tokenizer,
                      int8=not args.no_int8)
    print(f"exported {source} as ONNX to {out}: run it with `treeclip predict --model {out}` (ONNX Runtime, fp32: "
          "torch's answers) or add `--runtime openvino` (the same answers; the faster fp32 runtime in our CPU "
          "measurements); `--precision int8` (ONNX Runtime) is the fast CPU path but changes some near-tie answers "
          "(see the README's runtime advice)")
    return 0
