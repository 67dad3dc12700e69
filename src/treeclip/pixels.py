"""The pixel steps of an image transform, one implementation for the training loader (`treeclip.data.loader`)
and predict's preprocessing (`treeclip.model.preprocess`).

A torchvision ``Compose`` of the shape [geometry..., ToTensor, float steps..., Normalize] (open_clip's
transforms and the BioCLIP family's reference squash) is split around its to-tensor step (`split_steps`):

- `PixelSteps.to_uint8`: the steps before ``ToTensor`` (resize, crop) on the PIL image, or as torchvision's
  kernels on the image as a uint8 tensor (`tensor_steps`), then the float steps on the 8-bit tensor: ``[3, H, W]``
  uint8 pixels, 4x fewer bytes than floats through worker pipes and pinned memory;
- `normalize_uint8`: ``ToTensor``'s ``/ 255`` and ``Normalize``'s ``(x - mean) / std``, the same float32
  operations in the same order as torchvision's, so a uint8 batch normalised where the model is equals the float
  transform's output bit for bit when no float step lies between the two (`PixelSteps.uint8_exact`);
- `PixelSteps.from_decoded`: the whole transform by torch on an already decoded uint8 tensor (a JPEG decoded on
  the GPU), geometry by the same kernels as `tensor_steps`.

Layer: below `data` and `model` (torch, torchvision and PIL only; it imports nothing from treeclip), so both may
use it (DESIGN.md: `data` never imports `model`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as tv
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as tensor_ops

ANTIALIASED = (tv.InterpolationMode.BILINEAR, tv.InterpolationMode.BICUBIC)  # PIL's filters torch matches
Kernel = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PixelSteps:
    """A transform split around its to-tensor step: `pil`, the steps before it (geometry: resize, crop; mode
    conversions included), `tensor`, the steps after it but before ``Normalize``, ``Normalize``'s `mean` and
    `std`, and `finish`, the given steps from ``ToTensor`` on (for an image the uint8 path cannot take)."""

    pil: tuple[Callable, ...]
    tensor: tuple[Callable, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    finish: Callable[[Any], torch.Tensor]

    @property
    def uint8_exact(self) -> bool:
        """Whether `to_uint8` + `normalize_uint8` equal the float transform bit for bit: no step between the
        to-tensor step and ``Normalize`` (the BioCLIP family resizes there, on floats)."""
        return not self.tensor

    @property
    def pil_only(self) -> list[str]:
        """The geometry steps without a tensor kernel (`tensor_steps`), e.g. open_clip's ``ResizeKeepRatio`` of
        ``resize_mode`` "longest": `from_decoded` cannot run them."""
        return [type(step).__name__ for step in self.pil if not _converts_mode(step) and _kernel(step) is None]

    def to_uint8(self, image: Any, kernels: Sequence[Kernel] | None = None) -> torch.Tensor:
        """``[3, H, W]`` uint8 pixels of an RGB image: all of the transform but ``ToTensor``'s float conversion
        and ``Normalize`` (`normalize_uint8` does those). With `kernels` (`tensor_steps` of `pil`) the geometry
        runs on the image as a uint8 tensor. An image that is not RGB after the geometry (a ``Grayscale`` step,
        a tensor) is finished by the given steps: float, normalised."""
        if kernels is not None and isinstance(image, Image.Image) and image.mode == "RGB":
            steps, pixels = (*kernels, *self.tensor), pil_to_tensor(image)
        else:
            for step in self.pil:
                image = step(image)
            if not isinstance(image, Image.Image) or image.mode != "RGB":
                return self.finish(image)
            steps, pixels = self.tensor, pil_to_tensor(image)
        for step in steps:
            pixels = step(pixels)
        return pixels

    def from_decoded(self, image: torch.Tensor) -> torch.Tensor:
        """The transform of decoded uint8 RGB ``[3, H, W]`` (or a ``[N, 3, H, W]`` stack of same-size images),
        run by torch where the tensor is: the geometry by `tensor_steps`' kernels on float values in 0..255,
        rounded to 8 bits as PIL's resize would (PIL's pixels within a level or two), then the float steps and
        the normalisation. Float, normalised."""
        kernels = tensor_steps(self.pil)
        if kernels is None:
            raise ValueError(f"{', '.join(self.pil_only)} runs on PIL images only, not on a decoded tensor")
        pixels = image.float()
        if kernels:
            for kernel in kernels:
                pixels = kernel(pixels)
            pixels = pixels.clamp_(0, 255).round_()
        pixels = pixels.div_(255)
        for step in self.tensor:
            pixels = step(pixels)
        return normalize_(pixels, self.mean, self.std)


def split_steps(transform: Callable) -> PixelSteps | None:
    """`PixelSteps` of a torchvision ``Compose`` [geometry..., ToTensor, float steps..., Normalize] with a
    non-zero std; None for any other transform (it then runs only as given)."""
    steps = list(getattr(transform, "transforms", ()))
    to_tensor = [i for i, step in enumerate(steps) if isinstance(step, tv.ToTensor)]
    if len(to_tensor) != 1 or not isinstance(steps[-1], tv.Normalize):
        return None
    cut, normalize = to_tensor[0], steps[-1]
    mean, std = _floats(normalize.mean), _floats(normalize.std)
    if any(value == 0 for value in std):  # torchvision's Normalize names this error; the float path raises it
        return None
    return PixelSteps(tuple(steps[:cut]), tuple(steps[cut + 1 : -1]), mean, std, tv.Compose(steps[cut:]))


def normalize_uint8(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float32 ``(pixels / 255 - mean) / std`` per channel of a uint8 ``[..., 3, H, W]`` batch, computed where
    the batch is (on the model's device): the same operations, in the same order and precision, as torchvision's
    ``ToTensor`` + ``Normalize``, so the result equals the float path's bit for bit."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalize_uint8 takes uint8 pixels, got {pixels.dtype}")
    return normalize_(pixels.float().div_(255), mean, std)


def normalize_(pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor,
               std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``Normalize``'s ``(pixels - mean) / std`` per channel, in place on float ``[..., C, H, W]`` in 0..1."""
    return pixels.sub_(per_channel(mean, pixels)).div_(per_channel(std, pixels))


def per_channel(values: Sequence[float] | torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """`values` as a ``[C, 1, 1]`` tensor of `pixels`' dtype and device (returned as is when it is one already:
    a caller normalising image by image makes it once)."""
    if isinstance(values, torch.Tensor) and values.dim() == 3 and values.dtype == pixels.dtype \
            and values.device == pixels.device:
        return values
    return torch.as_tensor(values, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)


def tensor_steps(steps: Sequence[Callable]) -> list[Kernel] | None:
    """The geometry `steps` as functions of an RGB ``[..., 3, H, W]`` tensor (uint8, or float in 0..255):
    torchvision's tensor kernels, antialiased as PIL always is, with the step's own parameters and random draws;
    mode conversions are skipped (the tensor is RGB). None when a step has no such equivalent (any other step,
    or a filter other than bilinear or bicubic: torch's nearest picks other pixels than PIL's)."""
    kernels = []
    for step in steps:
        if _converts_mode(step):
            continue
        kernel = _kernel(step)
        if kernel is None:
            return None
        kernels.append(kernel)
    return kernels


def _kernel(step: Callable) -> Kernel | None:
    if isinstance(step, (tv.RandomResizedCrop, tv.Resize)) and step.interpolation not in ANTIALIASED:
        return None
    if isinstance(step, tv.RandomResizedCrop):
        return functools.partial(_random_resized_crop, step)
    if isinstance(step, tv.Resize):
        return functools.partial(tensor_ops.resize, size=step.size, interpolation=step.interpolation,
                                 max_size=step.max_size, antialias=True)
    if isinstance(step, tv.CenterCrop):
        return functools.partial(tensor_ops.center_crop, output_size=list(step.size))
    return None


def _random_resized_crop(step: tv.RandomResizedCrop, pixels: torch.Tensor) -> torch.Tensor:
    top, left, height, width = step.get_params(pixels, step.scale, step.ratio)
    return tensor_ops.resized_crop(pixels, top, left, height, width, list(step.size),
                                   interpolation=step.interpolation, antialias=True)


def _converts_mode(step: Callable) -> bool:
    """A PIL mode conversion: open_clip's ``MaybeConvertMode`` (``_convert_to_rgb`` in older open_clip)."""
    return type(step).__name__ == "MaybeConvertMode" or getattr(step, "__name__", "") == "_convert_to_rgb"


def _floats(values: Any) -> tuple[float, ...]:
    """Normalize's mean or std as floats (a single number: one per RGB channel)."""
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    return tuple(float(value) for value in values)
