"""uint8 batches normalised on the model's device, and JPEG decoding on the device (`--decode device`), against
the PIL float path: the one definition of each model's preprocessing used three ways."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from test_predict_fixtures import export_tiny_model, random_taxa, tiny_bank

from treeclip.errors import UsageError
from treeclip.model import create_model
from treeclip.model.preprocess import inference_preprocess
from treeclip.predict import decode_device
from treeclip.predict.classifier import ImageEmbedder
from treeclip.predict.decode_device import COLOUR, NOT_A_FILE, NOT_JPEG, ON_DEVICE, REFUSED, ROTATED
from treeclip.predict.runner import decoded_batches, run_to_writer

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


def test_classifiers_take_uint8_batches_only_where_they_are_exact(open_clip_preprocess, bioclip_preprocess) -> None:
    """The BioCLIP squash would round its float resize to 8 bits and move scores off pybioclip's, so its
    batches stay float; open_clip geometry gets uint8 batches."""
    model = create_model("treeclip-test")[0]
    assert ImageEmbedder(model=model, preprocess=open_clip_preprocess).decoding("threads")["uint8"]
    assert not ImageEmbedder(model=model, preprocess=bioclip_preprocess).decoding("threads")["uint8"]
    assert not ImageEmbedder(model=model, preprocess=lambda image: image).decoding("threads")["uint8"]


@pytest.mark.parametrize("size", [(97, 61), (61, 97), (640, 480)])
def test_transform_of_a_decoded_tensor_matches_the_pil_path(open_clip_preprocess, bioclip_preprocess, size) -> None:
    """`from_decoded` runs the same steps with torch on a decoded uint8 tensor (as a GPU-decoded JPEG is):
    torch's antialiased resize follows PIL's within a level or two; the BioCLIP squash is float either way."""
    image = _photo(7, size)
    for preprocess, tolerance in ((open_clip_preprocess, 3 * LEVEL), (bioclip_preprocess, 1e-5)):
        on_tensor, reference = preprocess.from_decoded(_tensor(image)), preprocess(image)
        assert on_tensor.shape == reference.shape
        assert (on_tensor - reference).abs().max() <= tolerance


def _mixed_items(folder: Path) -> tuple[list, Counter]:
    """Files of every kind the device path must route (and the count expected per route), with an in-memory
    image and broken files between plain JPEGs."""
    folder.mkdir()
    paths = {}
    for name, size in (("wide", (97, 61)), ("tall", (61, 97)), ("photo", (640, 480)), ("small", (40, 30))):
        paths[name] = folder / f"{name}.jpg"
        _photo(len(paths), size).save(paths[name], quality=92)
    _photo(8, (80, 60)).convert("L").save(paths.setdefault("gray", folder / "gray.jpg"), quality=92)
    _photo(9, (80, 60)).convert("CMYK").save(paths.setdefault("cmyk", folder / "cmyk.jpg"), quality=92)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    _photo(10, (90, 50)).save(paths.setdefault("rotated", folder / "rotated.jpg"), quality=92, exif=exif)
    _photo(11, (50, 40)).save(paths.setdefault("png", folder / "plain.png"))
    data = paths["photo"].read_bytes()
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(data[: len(data) // 3])  # a sound header: only decoding finds the damage
    paths["empty"] = folder / "empty.jpg"
    paths["empty"].write_bytes(b"")
    paths["text"] = folder / "text.jpg"
    paths["text"].write_text("not an image\n")
    order = ["wide", "cmyk", "truncated", "png", "tall", "empty", "rotated", "gray", "text", "photo", "small"]
    items: list = [str(paths[name]) for name in order]
    items.insert(5, _photo(12, (70, 40)))
    expected = Counter({ON_DEVICE: 5, NOT_JPEG: 3, COLOUR: 1, ROTATED: 1, REFUSED: 1, NOT_A_FILE: 1})
    return items, expected


def _batches(items: list, preprocess, decoder: str, batch_size: int = 4, **options) -> list:
    names = [f"n{index}" for index in range(len(items))]
    return list(decoded_batches(items, names, preprocess=preprocess, batch_size=batch_size, workers=2,
                                draft_size=None, decoder=decoder, **options))


@pytest.mark.parametrize("family", ["open_clip", "bioclip"])
def test_device_decoding_gives_the_cpu_batches_in_order_and_counts_fallbacks(
        family: str, open_clip_preprocess, bioclip_preprocess, tmp_path: Path) -> None:
    """JPEGs decoded by torchvision (libjpeg-turbo here, nvJPEG on CUDA) and transformed by torch equal the
    PIL path within a few 8-bit levels, batch by batch, names in input order; CMYK, rotated, non-JPEG,
    in-memory and undecodable images take the CPU path, each counted under its reason, and broken files give
    the CPU path's own error rows. Catches pixels paired with the wrong names, fallbacks dropped or silent,
    an unrotated EXIF photo, CMYK colours inverted, and a truncated JPEG accepted with garbage pixels."""
    preprocess = open_clip_preprocess if family == "open_clip" else bioclip_preprocess
    items, expected = _mixed_items(tmp_path / "images")
    report: Counter = Counter()
    device = _batches(items, preprocess, "device", device="cpu", report=report)
    reference = _batches(items, preprocess, "threads")
    assert report == expected
    assert len(device) == len(reference)
    for ours, theirs in zip(device, reference, strict=True):
        assert ours.names == theirs.names and ours.errors == theirs.errors
        assert ours.pixels.dtype == torch.float32 and ours.pixels.shape == theirs.pixels.shape
        assert (ours.pixels - theirs.pixels).abs().max() <= 3 * LEVEL
    errors = [name for batch in device for name, _ in batch.errors]
    assert errors == ["n2", "n6", "n9"]  # truncated, empty, text: in input order, with the CPU path's reasons


def _device_batches(items: list, preprocess, batch_size: int, **options) -> list:
    """The device path called directly, for its keywords the runner does not pass on."""
    names = [f"n{index}" for index in range(len(items))]
    return list(decode_device.device_batches(items, names, preprocess=preprocess, batch_size=batch_size, workers=2,
                                             device=torch.device("cpu"), draft_size=None, **options))


def test_same_size_photos_are_transformed_in_groups_and_stay_in_order(open_clip_preprocess, tmp_path: Path) -> None:
    """Same-size JPEGs are resized as one stack, in groups capped by size: interleaved sizes and a cap of two
    images per group (floats of a quarter of the decoding budget) must still give each image its own pixels in
    input order."""
    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for index in range(9):
        items.append(str(folder / f"{index}.jpg"))
        _photo(20 + index, (120, 90) if index % 3 else (90, 120)).save(items[-1], quality=92)
    report: Counter = Counter()
    (device,) = _device_batches(items, open_clip_preprocess, 9, report=report,
                                max_decoded_bytes=decode_device.FLOAT_BYTES * 2 * 3 * 120 * 90)
    (reference,) = _batches(items, open_clip_preprocess, "threads", batch_size=9)
    assert report == Counter({ON_DEVICE: 9}) and device.names == reference.names
    assert (device.pixels - reference.pixels).abs().max() <= 3 * LEVEL
    assert (device.pixels[1] - reference.pixels[2]).abs().max() > 10 * LEVEL  # different photos differ


class _DecodedBytes:
    """Wraps `decode_jpeg` to track the decoded pixels alive at once (released when their tensors are freed)
    and the peak of that as each call returns."""

    def __init__(self, decode) -> None:
        self.decode, self.alive, self.peak, self.calls = decode, 0, 0, 0

    def __call__(self, data, **options):
        decoded = self.decode(data, **options)
        self.calls += 1
        for image in decoded if isinstance(decoded, list) else [decoded]:
            self.alive += image.numel()
            weakref.finalize(image, self._release, image.numel())
        self.peak = max(self.peak, self.alive)
        return decoded

    def _release(self, size: int) -> None:
        self.alive -= size


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir()
    for index, size in enumerate(sizes):
        _photo(30 + index, size).save(folder / f"{index}.jpg", quality=92)
    return [str(folder / f"{index}.jpg") for index in range(len(sizes))]


def _equal(ours: list, theirs: list) -> bool:
    return len(ours) == len(theirs) and all(
        a.names == b.names and a.errors == b.errors and torch.equal(a.pixels, b.pixels)
        for a, b in zip(ours, theirs, strict=True))


def test_decoding_budget_caps_the_full_size_pixels_alive_and_keeps_the_batches(
        open_clip_preprocess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget of three small photos, a batch is decoded in sub-batches each transformed and released
    before the next: the decoded pixels alive at once never exceed the budget (the uncapped path's do, so the
    check can fail), a photo over the budget is decoded alone, and the batches equal the uncapped ones bit for
    bit, in order. Catches the cap ignored, sub-batches kept alive until the batch ends, an oversized photo
    dropped or looping, and outputs paired with the wrong names after the split."""
    sizes = [(120, 90), (90, 120), (160, 120), (120, 90), (400, 300), (120, 90), (90, 120), (100, 80), (120, 90)]
    items = _photos(tmp_path / "images", sizes)
    budget = 3 * 3 * 120 * 90
    counter = _DecodedBytes(decode_device.decode_jpeg)
    monkeypatch.setattr(decode_device, "decode_jpeg", counter)
    uncapped = _device_batches(items, open_clip_preprocess, 4)
    assert counter.peak == max(3 * sum(w * h for w, h in sizes[start : start + 4]) for start in (0, 4, 8))
    assert counter.peak > budget and counter.alive == 0
    counter.peak, counter.calls = 0, 0
    report: Counter = Counter()
    capped = _device_batches(items, open_clip_preprocess, 4, report=report, max_decoded_bytes=budget)
    assert counter.peak == 3 * 400 * 300  # the oversized photo, alone; every other sub-batch within the budget
    assert counter.calls == 5  # [0, 1] [2, 3] | [4] [5, 6, 7] | [8]: not one image per call either
    assert report == Counter({ON_DEVICE: len(sizes)}) and _equal(capped, uncapped)
    small = [index for index, size in enumerate(sizes) if size != (400, 300)]
    counter.peak = 0
    _device_batches([items[index] for index in small], open_clip_preprocess, 4, max_decoded_bytes=budget)
    assert 0 < counter.peak <= budget


def test_a_tiny_budget_keeps_fallbacks_and_errors_in_order(open_clip_preprocess, tmp_path: Path) -> None:
    """A budget below every photo decodes each JPEG alone; refused, CPU-path and error rows keep their places."""
    items, expected = _mixed_items(tmp_path / "images")
    uncapped = _device_batches(items, open_clip_preprocess, 4)
    report: Counter = Counter()
    capped = _device_batches(items, open_clip_preprocess, 4, report=report, max_decoded_bytes=1)
    assert report == expected and _equal(capped, uncapped)
    with pytest.raises(ValueError, match="max_decoded_bytes"):
        _device_batches(items, open_clip_preprocess, 4, max_decoded_bytes=0)


def test_device_decoding_logs_one_line_of_fallbacks(open_clip_preprocess, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    items, _ = _mixed_items(tmp_path / "images")
    with caplog.at_level("WARNING", logger="treeclip.predict.decode_device"):
        _batches(items, open_clip_preprocess, "device", device="cpu")
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("decoded 5 JPEGs on cpu; 7 images on the CPU (")
    assert "1 in-memory image, 3 not a JPEG, 1 CMYK/YCCK JPEG, 1 EXIF-rotated JPEG" in line


def test_uint8_batches_from_worker_processes_equal_the_float_batches(open_clip_preprocess, tmp_path: Path) -> None:
    """The uint8 batches that cross from worker processes, normalised afterwards, equal the float path's, and
    carry a quarter of the bytes."""
    items, _ = _mixed_items(tmp_path / "images")
    uint8 = _batches(items, open_clip_preprocess, "processes", uint8=True)
    floats = _batches(items, open_clip_preprocess, "threads")
    for ours, theirs in zip(uint8, floats, strict=True):
        assert ours.names == theirs.names and ours.errors == theirs.errors
        assert ours.pixels.dtype == torch.uint8
        assert torch.equal(open_clip_preprocess.normalize(ours.pixels), theirs.pixels)


def test_a_transform_that_cannot_split_is_refused_for_device_decoding(tmp_path: Path) -> None:
    items, _ = _mixed_items(tmp_path / "images")
    with pytest.raises(UsageError, match="--decode device"):
        _batches(items, lambda image: torch.zeros(3, 4, 4), "device")


def test_longest_side_geometry_takes_the_uint8_path_but_not_the_device(tmp_path: Path) -> None:
    """open_clip's "longest" resize (ResizeKeepRatio) reads PIL sizes: uint8 batches still equal the float
    path, and the device decoder refuses the model in one line instead of failing mid-run."""
    from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: PLC0415

    transform = image_transform_v2(PreprocessCfg(size=(32, 32), resize_mode="longest"), is_train=False)
    preprocess = inference_preprocess("longest", {"size": 32, "resize_mode": "longest", **CLIP_NORM}, transform)
    image = _photo(3, (90, 50))
    assert torch.equal(preprocess.normalize(preprocess.to_uint8(image)[None])[0], preprocess(image))
    items, _ = _mixed_items(tmp_path / "images")
    with pytest.raises(UsageError, match=r"--decode device: .*\(ResizeKeepRatio.*\) runs on PIL images only"):
        _batches(items, preprocess, "device")


def _predict(setup: dict, out: Path, decode: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "treeclip", "predict", str(setup["images"]), "--model", str(setup["model"]),
               "--bank", str(setup["bank"]), "--k", "1", "--batch-size", "4", "--decode", decode, "--output",
               str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


def test_cli_device_decoding_answers_as_the_cpu_path(tmp_path: Path) -> None:
    """`treeclip predict --decode device` end to end: every file gets its row (broken ones their error row,
    exit 1), the top-1 answers equal the CPU path's, and the fallbacks are reported on stderr in one line."""
    model = export_tiny_model(tmp_path / "model")
    tiny_bank(model, random_taxa(20), tmp_path / "bank")
    items, _ = _mixed_items(tmp_path / "images")
    setup = {"model": model, "bank": tmp_path / "bank", "images": tmp_path / "images"}
    rows = {}
    for decode in ("threads", "device"):
        done = _predict(setup, tmp_path / f"{decode}.csv", decode)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "3 of 11 images could not be read" in done.stderr and "Traceback" not in done.stderr
        rows[decode] = {row["file_name"]: row for row in csv.DictReader((tmp_path / f"{decode}.csv").open())}
    assert "decoded 5 JPEGs on cpu; 6 images on the CPU" in done.stderr
    assert rows["device"].keys() == rows["threads"].keys() and len(rows["device"]) == 11
    for name, row in rows["device"].items():
        assert row.get("error", "") == rows["threads"][name].get("error", "")
        assert row["species"] == rows["threads"][name]["species"]
    for fallback in ("cmyk.jpg", "rotated.jpg", "plain.png"):  # decoded by the CPU path: the very same scores
        name = str(setup["images"] / fallback)
        assert rows["device"][name]["score"] == rows["threads"][name]["score"]


def test_cli_refuses_an_unknown_decoder_in_one_line(tmp_path: Path) -> None:
    done = _predict({"model": tmp_path, "bank": tmp_path, "images": tmp_path}, tmp_path / "out.csv", "gpu")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "--decode" in lines[-1] and "'gpu'" in lines[-1] and "Traceback" not in done.stderr


@pytest.mark.parametrize("decoder", ["device", "processes"])
def test_ray_engine_refuses_a_decoder_it_would_ignore(decoder: str) -> None:
    """Ray tasks decode with threads: asking for another decoder there is a usage error, not silently dropped."""
    with pytest.raises(UsageError, match=f"--decode {decoder} applies to the local engine"):
        run_to_writer(["a.jpg"], score=lambda pixels, names: [], preprocess=lambda image: image, writer=None,
                      engine="ray", decoder=decoder)


def test_predict_paths_benchmark_runs_against_the_runner(tmp_path: Path) -> None:
    """benchmarks/predict_paths.py still runs against the runner's API; its uint8 rows agree with the float
    reference exactly (features at cosine 1), and the device row reports where it decoded."""
    model = export_tiny_model(tmp_path / "model")
    tiny_bank(model, random_taxa(20), tmp_path / "bank")
    (tmp_path / "sources").mkdir()
    for index in range(4):
        _photo(index, (40, 30)).save(tmp_path / "sources" / f"{index}.png")
    script = Path(__file__).parents[1] / "benchmarks" / "predict_paths.py"
    done = subprocess.run([sys.executable, str(script), "--trained", str(model), "--bank", str(tmp_path / "bank"),
                           "--images", str(tmp_path / "sources"), "--per-size", "4", "--sizes", "120x90",
                           "--batch", "2", "--no-write"], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[1]: line for line in done.stdout.splitlines() if line.startswith("| 120x90 |")}
    assert len(rows) == 5
    for path in ("uint8, threads", "uint8, processes"):
        assert "| 4 | 4 | 100.00%" in rows[path] and "| 1.000000 | 1.000000 |" in rows[path]
    assert rows["device (cpu)"].endswith("| 0 |")  # every JPEG decoded on the device path, none fell back
