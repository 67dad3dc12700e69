"""`treeclip.pixels`: the one split of a transform into uint8 steps and normalisation, used by the training loader
and by predict. Expected values are computed here independently (float64, by hand), not by the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image
from torchvision import transforms as tv

from treeclip.data.loader import ImageTransform
from treeclip.model.preprocess import reference_squash
from treeclip.pixels import normalize_uint8, split_steps, tensor_steps

MEAN, STD = (0.1, 0.4, 0.7), (0.5, 0.25, 0.125)
# One pixel whose channels differ: a swapped channel order, swapped mean/std, a missing / 255 or a second
# normalisation each give other numbers (none of these is a fixed point of the formula below).
PIXEL = (255, 51, 0)
EXPECTED = tuple((value / 255 - mean) / std for value, mean, std in zip(PIXEL, MEAN, STD))  # (1.8, -0.8, -5.6)


def solid(size: tuple[int, int], color=PIXEL, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def photo(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[: size[1] // 2, :, 0] //= 4  # a channel that differs from the others in one half
    return Image.fromarray(pixels[..., :len(mode)] if mode != "L" else pixels[..., 0], mode)


def test_normalize_uint8_is_torchvisions_arithmetic_per_channel() -> None:
    pixels = torch.tensor(PIXEL, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    out = normalize_uint8(pixels, MEAN, STD)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5)
    assert torch.allclose(out[:, :, 2, 3], torch.tensor([EXPECTED] * 2), atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(pixels.float(), MEAN, STD)  # already floats: normalising again would be wrong


def test_loader_batches_and_predict_pixels_normalise_alike_by_hand() -> None:
    """The loader's batch (normalised in its slots) and predict's uint8 pixels (normalised on the device) of a
    solid image: exactly the hand-computed values per channel, and the float transform's bits."""
    transform = image_transform(8, is_train=False, mean=MEAN, std=STD, resize_mode="squash")
    image = solid((13, 9))
    loader = ImageTransform(transform)
    batch = loader.stack([loader(image), loader(image)])
    steps = split_steps(transform)
    pixels = steps.to_uint8(image)
    assert pixels.dtype == torch.uint8 and pixels[:, 3, 4].tolist() == list(PIXEL)
    predicted = normalize_uint8(pixels[None], steps.mean, steps.std)
    for out in (batch[0], batch[1], predicted[0]):
        assert torch.allclose(out[:, 0, 0], torch.tensor(EXPECTED), atol=1e-5)
        assert torch.equal(out, transform(image))


@pytest.mark.parametrize("resize_mode", ["squash", "shortest"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_uint8_steps_then_normalize_equal_the_float_transform(resize_mode: str, mode: str) -> None:
    """open_clip's inference transforms, on images of several shapes and modes: the uint8 path (geometry on the
    PIL image, open_clip's mode conversion kept) normalised equals the transform's output bit for bit."""
    transform = image_transform(24, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode)
    steps = split_steps(transform)
    for index, size in enumerate([(37, 23), (17, 120), (300, 200)]):
        image = photo(size, index, mode)
        pixels = steps.to_uint8(image)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 24, 24)
        assert torch.equal(normalize_uint8(pixels, steps.mean, steps.std), transform(image))


def test_split_steps_cuts_at_to_tensor_and_reads_normalize() -> None:
    crop = image_transform(16, is_train=False, mean=MEAN, std=STD, resize_mode="shortest")
    steps = split_steps(crop)
    assert [type(step).__name__ for step in steps.pil] == ["Resize", "CenterCrop", "MaybeConvertMode"]
    assert steps.tensor == () and steps.uint8_exact
    assert (steps.mean, steps.std) == (MEAN, STD)
    squash = split_steps(reference_squash((16, 16), {"mean": MEAN, "std": STD}))
    assert squash.pil == () and [type(s).__name__ for s in squash.tensor] == ["Resize"] and not squash.uint8_exact
    assert split_steps(tv.Compose([tv.Resize(8), tv.ToTensor(), tv.Normalize(0.5, 0.25)])).mean == (0.5,) * 3
    not_splittable = [
        lambda image: image,  # not a Compose
        tv.Compose([tv.Resize(8), tv.ToTensor()]),  # no Normalize
        tv.Compose([tv.ToTensor(), tv.Normalize(MEAN, STD), tv.ToTensor()]),  # Normalize not last
        tv.Compose([tv.ToTensor(), tv.Normalize(MEAN, (0.5, 0.0, 0.5))]),  # zero std: torchvision's error
    ]
    assert [split_steps(transform) for transform in not_splittable] == [None] * 4


def test_a_step_that_leaves_rgb_finishes_as_the_given_steps() -> None:
    """A one-channel Grayscale step: to_uint8 returns the transform's own float output, not 8-bit pixels."""
    transform = tv.Compose([tv.Resize(10), tv.Grayscale(), tv.ToTensor(), tv.Normalize((0.5,), (0.25,))])
    image = photo((31, 20), 3)
    out = split_steps(transform).to_uint8(image)
    assert out.dtype == torch.float32 and torch.equal(out, transform(image))


def test_tensor_steps_cover_the_geometry_torch_matches() -> None:
    kernels = tensor_steps([tv.Resize(12, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(8)])
    pixels = torch.from_numpy(np.array(photo((40, 30), 5))).permute(2, 0, 1)
    for kernel in kernels:
        pixels = kernel(pixels)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 8, 8)
    open_clip_val = split_steps(image_transform(8, is_train=False))
    assert len(tensor_steps(open_clip_val.pil)) == 2  # the mode conversion is skipped: tensors are RGB
    nearest = [tv.Resize(8, interpolation=tv.InterpolationMode.NEAREST)]  # torch picks other pixels than PIL
    assert tensor_steps(nearest) is None and tensor_steps([tv.RandomHorizontalFlip()]) is None
    longest = split_steps(image_transform(8, is_train=False, resize_mode="longest"))
    assert longest.pil_only == ["ResizeKeepRatio", "CenterCropOrPad"]  # open_clip's "longest" geometry
    with pytest.raises(ValueError, match="PIL images only"):
        longest.from_decoded(torch.zeros(3, 16, 16, dtype=torch.uint8))
