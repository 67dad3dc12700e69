"""Which engine runs the model: torch (any model id), or ONNX Runtime or OpenVINO (a folder from `treeclip export
--format onnx`; OpenVINO reads the same files). Each gives an object with open_clip's inference interface
(``encode_image``, ``encode_text``, ``logit_scale``), the model's one inference preprocessing and its tokenizer,
so every classifier, the batch runner and the server work the same on any of them.

``benchmarks/predict.py`` measures the runtimes and precisions side by side (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from treeclip.errors import UsageError

from .quantize import with_precision

RUNTIMES = ("torch", "onnx", "openvino")
FOLDER_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}  # runtimes of an exported folder: their module
EXPORT_HINT = "write one with `treeclip export MODEL --format onnx --out DIR` and pass --model DIR"


def resolve_runtime(model_id: str, runtime: str | None) -> str:
    """The runtime for a model id: as asked, else onnx for an ONNX model folder and torch otherwise;
    UsageError when the model cannot run on the asked one (onnx and openvino need an exported folder)."""
    from treeclip.model.onnx import is_onnx_dir  # noqa: PLC0415 - needs no onnxruntime

    onnx_folder = os.path.isdir(model_id) and is_onnx_dir(model_id)
    chosen = runtime or ("onnx" if onnx_folder else "torch")
    if chosen not in RUNTIMES:
        raise UsageError(f"unknown runtime {chosen!r}; expected one of {', '.join(RUNTIMES)}")
    if chosen in FOLDER_PACKAGES and not onnx_folder:
        raise UsageError(f"--runtime {chosen} needs an ONNX model folder, and {model_id} is not one; {EXPORT_HINT}")
    if chosen == "torch" and onnx_folder:
        raise UsageError(f"{model_id} is an ONNX model folder: run it with --runtime onnx or --runtime openvino")
    return chosen


def load_for_inference(model_id: str, *, runtime: str | None = None, precision: str = "fp32",
                       device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(model, inference preprocessing, tokenizer) of a model id on a runtime (default: `resolve_runtime`'s) at a
    precision."""
    chosen = resolve_runtime(model_id, runtime)
    if chosen in FOLDER_PACKAGES:
        if importlib.util.find_spec(FOLDER_PACKAGES[chosen]) is None:
            raise UsageError(f"the {chosen} runtime needs {FOLDER_PACKAGES[chosen]}: pip install 'treeclip[{chosen}]'")
        from treeclip.model.onnx import load_onnx  # noqa: PLC0415

        return load_onnx(model_id, precision=precision, device=device, runtime=chosen)
    from treeclip.model import load_model  # noqa: PLC0415 - keeps `import treeclip.predict` light

    net, _, preprocess, tokenizer = load_model(model_id, device=device)
    return with_precision(net, precision), preprocess, tokenizer
