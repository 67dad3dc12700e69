"""uint8 batches normalised on the model's device, and JPEG decoding on the device (`--decode device`), against
the PIL float path: the one definition of each model's preprocessing used three ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from treeclip.model import create_model
from treeclip.model.preprocess import inference_preprocess, normalize_uint8

CLIP_NORM = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
LEVEL = 1 / 255 / min(CLIP_NORM["std"])  # one 8-bit level, after normalisation


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth structure plus grain (a resize of pure noise would hide geometry mistakes in averaging)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.integers(-20, 21, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def open_clip_preprocess():
    return create_model("treeclip-test")[2]


@pytest.fixture(scope="module")
def bioclip_preprocess():
    return inference_preprocess("hf-hub:imageomics/bioclip", {"size": 64, **CLIP_NORM}, open_clip_transform=None)


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("size", [(97, 61), (61, 97), (32, 32), (400, 300)])
def test_uint8_path_equals_float_path_for_open_clip_geometry(open_clip_preprocess, size) -> None:
    """Resize and crop run on the PIL image either way, so only where the float maths happens moves: a
    wrong mean/std order, a missing /255 or a channel-last batch would all differ here."""
    images = [_photo(seed, size) for seed in range(3)]
    pixels = torch.stack([open_clip_preprocess.to_uint8(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 32, 32)
    expected = torch.stack([open_clip_preprocess(image) for image in images])
    assert torch.equal(open_clip_preprocess.normalize(pixels), expected)


def test_uint8_path_of_the_bioclip_squash_rounds_at_most_half_a_level(bioclip_preprocess) -> None:
    """BioCLIP's reference resizes the float tensor; the uint8 path resizes 8-bit pixels and rounds."""
    image = _photo(4, (300, 170))
    uint8 = bioclip_preprocess.to_uint8(image)
    assert uint8.shape == (3, 64, 64)
    difference = (bioclip_preprocess.normalize(uint8[None])[0] - bioclip_preprocess(image)).abs().max()
    assert 0 < difference <= 0.5 * LEVEL + 1e-6


def test_normalize_uint8_is_per_channel_and_refuses_floats() -> None:
    pixels = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize_uint8(pixels, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, :, 0, 0], torch.tensor([[0.0, 1.0, 0.0]] * 2), atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(pixels.float(), mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("size", [(97, 61), (61, 97), (640, 480)])
def test_transform_of_a_decoded_tensor_matches_the_pil_path(open_clip_preprocess, bioclip_preprocess, size) -> None:
    """`from_decoded` runs the same steps with torch on a decoded uint8 tensor (as a GPU-decoded JPEG is):
    torch's antialiased resize follows PIL's within a level or two; the BioCLIP squash is float either way."""
    image = _photo(7, size)
    for preprocess, tolerance in ((open_clip_preprocess, 3 * LEVEL), (bioclip_preprocess, 1e-5)):
        on_tensor, reference = preprocess.from_decoded(_tensor(image)), preprocess(image)
        assert on_tensor.shape == reference.shape
        assert (on_tensor - reference).abs().max() <= tolerance
