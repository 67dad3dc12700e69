"""ONNX export of a CLIP model for inference, and a model with open_clip's inference interface that runs the
exported files on ONNX Runtime or OpenVINO.

An ONNX model folder (``treeclip export MODEL --format onnx --out DIR``) holds

- ``image.onnx``: pixels ``[batch, 3, H, W]`` float32 → image features ``[batch, dim]`` (not normalised);
- ``image.int8.onnx``: the same tower with int8 weights (ONNX Runtime's dynamic quantisation of MatMul/Gemm;
  activations are quantised per batch on the fly);
- ``text.onnx``: tokens ``[batch, context]`` int64 → text features ``[batch, dim]``;
- ``onnx_config.json``: the source model id, ``logit_scale`` (already exponentiated), the open_clip
  ``model_cfg`` (its ``text_cfg`` names the tokenizer) and the preprocessing — ``preprocess_cfg`` plus the
  family, geometry and JPEG draft size of `treeclip.model.preprocess`, the one definition of each model's
  pixels, which `load_onnx` reuses so both runtimes see identical tensors.

The batch axis is dynamic, so no batch size is ever re-exported or recompiled. `OnnxClip` offers what
treeclip's classifiers call on a torch CLIP (``encode_image``, ``encode_text``, ``logit_scale``,
``visual.image_size``), so predict, embed, search and serve run on any runtime unchanged. Its towers run on ONNX
Runtime (``runtime="onnx"``) or OpenVINO (``runtime="openvino"``, CPU), both reading the same ``.onnx`` files.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treeclip.errors import UsageError

from .factory import model_config, unwrap_model
from .hub import replace_atomically
from .preprocess import Preprocess, inference_preprocess

log = logging.getLogger(__name__)

ONNX_CONFIG = "onnx_config.json"
IMAGE_ONNX, IMAGE_INT8_ONNX, TEXT_ONNX = "image.onnx", "image.int8.onnx", "text.onnx"
FORMAT, FORMAT_VERSION = "treeclip-onnx", 1
IMAGE_FILES = {"fp32": IMAGE_ONNX, "int8": IMAGE_INT8_ONNX}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The runtimes of an exported folder and their precisions. OpenVINO runs the int8 file (ONNX Runtime's dynamic
# quantisation operators) slower than its own fp32 (0.74x for ViT-B-16, 0.67x for treeclip-tiny end to end,
# benchmarks/RESULTS.md), so it is offered in fp32 only.
FOLDER_RUNTIMES = {"onnx": ("fp32", "int8"), "openvino": ("fp32",)}
WEIGHT_PRODUCTS = ("MatMul", "Gemm")


def is_onnx_dir(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by `export_onnx`."""
    return (Path(path) / ONNX_CONFIG).is_file()


class _ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def export_onnx(model: torch.nn.Module, *, model_id: str, out_dir: str | os.PathLike[str],
                preprocess: Preprocess, tokenizer: Any, int8: bool = True) -> Path:
    """Write the ONNX model folder of a torch CLIP (see the module docstring); the config is written last,
    so a folder with ``onnx_config.json`` is complete."""
    model = unwrap_model(model).eval().float().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = preprocess.size
    _export(_ImageTower(model), torch.zeros(2, 3, size[1], size[0]), out / IMAGE_ONNX, "pixels")
    _export(_TextTower(model), tokenizer(["a photo of a bird.", "a"]), out / TEXT_ONNX, "tokens")
    if int8:
        quantize_onnx(out / IMAGE_ONNX, out / IMAGE_INT8_ONNX)
    config = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": model_id,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "model_cfg": model_config(model_id),
        "preprocess": {"family": preprocess.family, "size": list(size), "resize_mode": preprocess.resize_mode,
                       "draft_size": preprocess.draft_size,
                       "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in model.visual.preprocess_cfg.items()}},
        "files": {"image": IMAGE_ONNX, "text": TEXT_ONNX, **({"image_int8": IMAGE_INT8_ONNX} if int8 else {})},
    }
    replace_atomically(out / ONNX_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n",
                                                                      encoding="utf-8"))
    return out


def _export(tower: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str) -> None:
    """One tower as ONNX through torch's exporter, with a dynamic batch axis, written atomically."""
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(tower.eval(), (example,), input_names=[input_name],
                                        output_names=["features"], dynamic_shapes=({0: batch},), dynamo=True,
                                        verbose=False)
            program.save(str(tmp))

    replace_atomically(path, write)


def quantize_onnx(source: Path, out: Path) -> Path:
    """An int8 copy of an ONNX tower: ONNX Runtime's dynamic quantisation (int8 weights per output channel,
    activations quantised per batch) of its weight products, except the first and the last (`float_ends`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 - optional extra

    def write(tmp: Path) -> None:
        quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(WEIGHT_PRODUCTS), nodes_to_exclude=float_ends(source))

    notice = _PreprocessNotice()
    logging.getLogger().addFilter(notice)
    try:
        replace_atomically(out, write)
    finally:
        logging.getLogger().removeFilter(notice)
    return out


def float_ends(model_path: Path) -> list[str]:
    """The first and the last MatMul/Gemm with a constant weight of an ONNX graph (nodes are in topological
    order): the first block's input projection, which sees the patch embeddings, and the final projection
    to the embedding, whose error reaches the features undamped. Kept in float32 they cost ~2% of a
    ViT-B-16's products; on the trained demo model (200 taxa, 3,600 images) int8 answers then agree with
    fp32 on 98.7% instead of 98.1% of images (benchmarks/RESULTS.md)."""
    import onnx  # noqa: PLC0415 - optional extra

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    products = [node.name for node in graph.node
                if node.op_type in WEIGHT_PRODUCTS and len(node.input) > 1 and node.input[1] in weights]
    return [products[0], products[-1]] if len(products) > 2 else []


class _PreprocessNotice(logging.Filter):
    """Drops ONNX Runtime's root-logger advice to run its shape-inference pre-processing first: on a trained
    treeclip tower it left the int8 answers' agreement with fp32 unchanged (96.5% on 200 images either way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in str(record.msg)


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class OnnxVisual:
    """What callers read from a torch CLIP's ``visual`` module: the input size and preprocessing config."""

    image_size: tuple[int, int]
    preprocess_cfg: dict[str, Any]


Tower = Callable[[np.ndarray], np.ndarray]  # one exported tower: its input array -> its features


class OnnxClip:
    """A CLIP model run from an exported folder by ONNX Runtime or OpenVINO, with open_clip's inference interface
    (torch tensors in and out).

    The text tower is opened on first use (only custom labels and text search need it).
    """

    def __init__(self, folder: str | os.PathLike[str], *, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, runtime: str = "onnx") -> None:
        self.folder, self.config = Path(folder), read_onnx_config(folder)
        if runtime not in FOLDER_RUNTIMES:
            raise UsageError(f"an ONNX model folder runs on {' or '.join(FOLDER_RUNTIMES)}, not {runtime!r}")
        if precision not in FOLDER_RUNTIMES[runtime]:
            others = [name for name, precisions in FOLDER_RUNTIMES.items() if precision in precisions]
            raise UsageError(f"--precision {precision} is not available with the {runtime} runtime (choose "
                             f"{' or '.join(FOLDER_RUNTIMES[runtime])}" +
                             (f"; {precision} runs with --runtime {others[0]})" if others else ")"))
        if precision not in _image_precisions(self.config):
            raise UsageError(f"{folder} has no {precision} image tower; re-export it with `treeclip export "
                             "--format onnx`")
        self.precision, self.device, self.threads, self.runtime = precision, torch.device(device), threads, runtime
        self._open = _ort_opener(self.device, threads) if runtime == "onnx" else _openvino_opener(self.device, threads)
        self.logit_scale = torch.tensor(math.log(self.config["logit_scale"]))
        pre = self.config["preprocess"]
        self.visual = OnnxVisual(tuple(pre["size"]), dict(pre["preprocess_cfg"]))
        self._image = self._open(self.folder / IMAGE_FILES[precision])
        self._text: Tower | None = None

    def eval(self) -> OnnxClip:
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its sessions (Ray workers reopen them from the folder)."""
        return {"folder": self.folder, "precision": self.precision, "device": str(self.device),
                "threads": self.threads, "runtime": self.runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], precision=state["precision"], device=state["device"],
                      threads=state["threads"], runtime=state["runtime"])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features ``[batch, dim]`` (not normalised) of preprocessed pixels."""
        return self._run(self._image, pixels.detach().to("cpu", torch.float32))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[batch, dim]`` (not normalised) of token ids."""
        if self._text is None:
            self._text = self._open(self.folder / self.config["files"]["text"])
        return self._run(self._text, tokens.detach().to("cpu", torch.int64))

    def _run(self, tower: Tower, values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(tower(np.ascontiguousarray(values.numpy()))).to(self.device)


def _ort_opener(device: torch.device, threads: int | None) -> Callable[[Path], Tower]:
    """Opens an exported tower as an ONNX Runtime session on the device's execution provider."""
    import onnxruntime as ort  # noqa: PLC0415 - optional extra

    providers = _providers(device)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads

    def open_tower(path: Path) -> Tower:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        name = session.get_inputs()[0].name
        return lambda values: session.run(None, {name: values})[0]

    return open_tower


def _openvino_opener(device: torch.device, threads: int | None) -> Callable[[Path], Tower]:
    """Opens an exported tower compiled by OpenVINO for the CPU, computing in float32: OpenVINO's default on CPUs
    with bf16 instructions is bf16, which changed 1.1% of a trained model's top-1 answers (benchmarks/RESULTS.md)."""
    if device.type != "cpu":
        raise UsageError(f"--device {device} is not available with the openvino runtime (CPU only); use --device cpu")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = openvino_core()
    return lambda path: _OpenVinoTower(core.compile_model(str(path), "CPU", config))


@functools.cache
def openvino_core() -> Any:
    """The process's one OpenVINO Core, never freed: a Core garbage-collected before the models it compiled
    crashed the process later (a segfault in unrelated torch work, reproducible in the test suite)."""
    import openvino as ov  # noqa: PLC0415 - optional extra

    return ov.Core()


class _OpenVinoTower:
    """A compiled OpenVINO tower with one infer request per calling thread (a request is not thread-safe, and the
    server calls the model from several threads)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled, self.requests = compiled, threading.local()

    def __call__(self, values: np.ndarray) -> np.ndarray:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        return request.infer({0: values})[0].copy()  # the request reuses its output buffer on the next call


def read_onnx_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``onnx_config.json`` of an ONNX model folder; UsageError when it is not one."""
    path = Path(folder) / ONNX_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{folder} is not a treeclip ONNX model ({ONNX_CONFIG}: {exc}); write one with "
                         "`treeclip export MODEL --format onnx --out DIR`") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise UsageError(f"{path} is not a version-{FORMAT_VERSION} {FORMAT} config")
    return config


def _image_precisions(config: Mapping[str, Any]) -> set[str]:
    files = config.get("files", {})
    return {"fp32"} | ({"int8"} if "image_int8" in files else set())


def _providers(device: torch.device) -> list[str]:
    """ONNX Runtime execution providers for a torch device; UsageError when this install lacks it."""
    import onnxruntime as ort  # noqa: PLC0415 - optional extra

    wanted = PROVIDERS.get(device.type)
    if wanted is None or wanted not in ort.get_available_providers():
        raise UsageError(f"--device {device} is not available in this onnxruntime (providers: "
                         f"{', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu")
    return [wanted] if wanted == PROVIDERS["cpu"] else [wanted, PROVIDERS["cpu"]]


def load_onnx(folder: str | os.PathLike[str], *, precision: str = "fp32", device: str | torch.device = "cpu",
              threads: int | None = None, runtime: str = "onnx") -> tuple[OnnxClip, Preprocess, Any]:
    """(model, inference preprocessing, tokenizer) of an ONNX model folder on ONNX Runtime or OpenVINO; the
    preprocessing is rebuilt from the recorded parameters by `treeclip.model.preprocess`, exactly as the torch
    model's."""
    model = OnnxClip(folder, precision=precision, device=str(device), threads=threads, runtime=runtime)
    return model, onnx_preprocess(model.config), onnx_tokenizer(model.config)


def onnx_preprocess(config: Mapping[str, Any]) -> Preprocess:
    """The inference preprocessing recorded in an ONNX config."""
    from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: PLC0415

    cfg = config["preprocess"]["preprocess_cfg"]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
              if k in PreprocessCfg.__dataclass_fields__}
    transform = image_transform_v2(PreprocessCfg(**fields), is_train=False)
    return inference_preprocess(config["source"], cfg, transform)


def onnx_tokenizer(config: Mapping[str, Any]) -> Any:
    """The tokenizer named by the recorded ``text_cfg`` (open_clip's SimpleTokenizer unless an HF one)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer  # noqa: PLC0415

    text_cfg = config["model_cfg"].get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context, **kwargs)
    return SimpleTokenizer(context_length=context, **kwargs)
