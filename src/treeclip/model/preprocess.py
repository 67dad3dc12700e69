"""One definition of how each model family expects its pixels: the inference transform of a model id.

- **BioCLIP family** (``hf-hub:imageomics/bioclip``, ``hf-hub:imageomics/bioclip-2``): BioCLIP was trained on
  images squashed to 224×224, and the reference package, pybioclip (``bioclip/predict.py``, ``preprocess_img``,
  used for exactly these two ids), squashes the whole photo: ``ToTensor`` → ``Resize((size, size))`` on the
  float tensor (bilinear, antialiased) → ``Normalize``. treeclip runs that same transform, with the size and
  normalisation of the model's own config (the values pybioclip hard-codes), and decodes JPEGs at full
  resolution for these models (no DCT draft scaling), so the pixels equal the reference's.
- **treeclip's models** (a training checkpoint or an exported folder): the ``preprocess_cfg`` recorded at
  training and export, run by open_clip; its ``resize_mode`` is the geometry the shards were built with
  (``squash`` for `treeclip build --resize squash`, ``shortest`` for ``shorter``).
- **every other open_clip model**: its own ``preprocess_cfg`` (open_clip's default is ``shortest``: the
  shorter side resized, then a centre crop).

Images reach the transform from `treeclip.data.images.decode_image`, which applies the EXIF orientation; the
reference package does not (``PIL.Image.open(...).convert("RGB")``), so a photo stored rotated with an EXIF
orientation tag is seen upright by treeclip and sideways by pybioclip. Transparent images are composited on
white by treeclip, while ``convert("RGB")`` drops the alpha channel.

Each transform is used in three ways, all from its one definition (the steps of the transform itself), split
by `treeclip.pixels` (the same code splits the training loader's transform):

- **float** (``preprocess(image)``): the transform as is, PIL image → normalised float tensor;
- **uint8** (`Preprocess.to_uint8`, then `treeclip.pixels.normalize_uint8` on the model's device): the steps before the
  to-tensor step (resize and crop, on the PIL image) and those between it and ``Normalize`` (the BioCLIP
  family's resize, run on the 8-bit tensor), giving ``[3, H, W]`` uint8 pixels: 4× fewer bytes through
  worker pipes and pinned memory, and no float work on the decoding CPUs. It equals the float path exactly
  for open_clip geometry (PIL resizes in 8 bits either way), which is when predict uses it
  (`treeclip.pixels.PixelSteps.uint8_exact`); for the BioCLIP family's float-tensor resize it would round the resized pixels
  to 8 bits (at most 0.5/255 per value, ~3e-3 relative in scores: too far from pybioclip's), so that family
  keeps float batches;
- **on the device** (`Preprocess.from_decoded`): the same steps run by torch on an already decoded
  ``[3, H, W]`` uint8 tensor (a GPU-decoded JPEG): torchvision's resize of a tensor (antialiased, as PIL's)
  and crop (`treeclip.pixels.tensor_steps`, the training loader's kernels), then normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from treeclip.pixels import PixelSteps, normalize_uint8, split_steps

HF_HUB_PREFIX = "hf-hub:"
BIOCLIP_FAMILY = frozenset({"imageomics/bioclip", "imageomics/bioclip-2"})
BIOCLIP, OPEN_CLIP = "bioclip", "open_clip"
BUILD_TO_OPEN_CLIP_RESIZE = {"squash": "squash", "shorter": "shortest"}
Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class Preprocess:
    """A model's inference transform (RGB PIL image → ``[3, H, W]`` float tensor) and what it does.

    `draft_size` is the smallest side a JPEG may be decoded at by DCT scaling before the transform (None:
    always decode at full resolution).
    """

    family: str
    size: tuple[int, int]
    resize_mode: str
    transform: Transform
    draft_size: int | None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @property
    def transforms(self) -> list[Callable]:
        """The steps of the transform (a torchvision ``Compose``), as open_clip's preprocess exposes them."""
        return list(self.transform.transforms)

    @cached_property
    def steps(self) -> PixelSteps | None:
        """The transform split around its to-tensor step (None when it is not a ``Compose`` of that shape, so
        only the float path applies)."""
        return split_steps(self.transform)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """``[3, H, W]`` uint8 pixels of an RGB image, all of the transform but the float conversion and
        ``Normalize`` (`normalize` does those, on the model's device): `treeclip.pixels.PixelSteps.to_uint8`."""
        return self._split().to_uint8(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float pixels of a uint8 batch from `to_uint8`, normalised where the batch is
        (`treeclip.pixels.normalize_uint8`)."""
        steps = self._split()
        return normalize_uint8(pixels, steps.mean, steps.std)

    def from_decoded(self, image: torch.Tensor) -> torch.Tensor:
        """The transform of decoded uint8 RGB ``[3, H, W]`` (or a ``[N, 3, H, W]`` stack of same-size images;
        e.g. JPEGs decoded on the GPU), run by torch where the tensor is (`treeclip.pixels.PixelSteps.from_decoded`:
        a PIL crop or resize of the decoded image gives the same numbers within a level or two). Float, normalised."""
        return self._split().from_decoded(image)

    def _split(self) -> PixelSteps:
        if self.steps is None:
            raise ValueError(f"the transform {self.transform!r} has no to-tensor and Normalize steps to split at")
        return self.steps

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``bioclip: squash to 224x224 (bilinear, antialiased)``."""
        how = "bilinear, antialiased, as pybioclip" if self.family == BIOCLIP else "open_clip"
        return f"{self.family}: {self.resize_mode} to {self.size[0]}x{self.size[1]} ({how})"


def family_of(model_id: str) -> str:
    """``bioclip`` for the released BioCLIP hub ids (any letter case), else ``open_clip``."""
    text = str(model_id)
    if text.startswith(HF_HUB_PREFIX) and text[len(HF_HUB_PREFIX):].strip("/").lower() in BIOCLIP_FAMILY:
        return BIOCLIP
    return OPEN_CLIP


def inference_preprocess(model_id: str, preprocess_cfg: Mapping[str, Any],
                         open_clip_transform: Transform) -> Preprocess:
    """The inference preprocessing of a model id whose final open_clip ``preprocess_cfg`` is given;
    `open_clip_transform` is open_clip's validation transform for that config (used by every family but
    BioCLIP's)."""
    size = _pair(preprocess_cfg.get("size", 224))
    if family_of(model_id) == BIOCLIP:
        return Preprocess(BIOCLIP, size, "squash", reference_squash(size, preprocess_cfg), draft_size=None)
    mode = str(preprocess_cfg.get("resize_mode") or "shortest")
    return Preprocess(OPEN_CLIP, size, mode, open_clip_transform, draft_size=2 * max(size))


def reference_squash(size: tuple[int, int], preprocess_cfg: Mapping[str, Any]) -> Transform:
    """pybioclip's transform for the BioCLIP models: the whole image squashed to `size` on the float tensor."""
    from torchvision import transforms  # noqa: PLC0415 - only this family needs it

    return transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.Normalize(mean=tuple(preprocess_cfg["mean"]), std=tuple(preprocess_cfg["std"])),
    ])


def open_clip_resize_mode(build_resize: str) -> str:
    """open_clip's ``resize_mode`` for the geometry of `treeclip build --resize` (squash, shorter)."""
    try:
        return BUILD_TO_OPEN_CLIP_RESIZE[build_resize]
    except KeyError:
        raise ValueError(f"unknown build resize mode {build_resize!r}; "
                         f"expected one of {', '.join(BUILD_TO_OPEN_CLIP_RESIZE)}") from None


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)
