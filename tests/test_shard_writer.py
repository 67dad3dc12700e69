"""The shard writer's per-image work: the direct tar writer and draft-mode decoding's effect on output pixels."""

from __future__ import annotations

import io
import pathlib
import tarfile

import numpy as np
import pytest
from PIL import Image

from treeclip.data.images import decode_image, resize
from treeclip.data.shards import ShardTarWriter, sample_members
from treeclip.taxonomy import Taxon

MEMBERS = [
    ("a.jpg", b"\xff\xd8" + bytes(range(256)) * 7),  # not a multiple of 512
    ("a.txt", b""),  # empty member: a header and no data block
    ("b.bin", b"x" * 1024),  # exact multiple of 512: no padding
    ("c" * 92 + ".json", b"{}"),  # 97 bytes: the name field nearly full
    ("Pinus_sylvestris_éà.txt", "Waldkiefer \u00e4".encode()),  # non-ASCII name
    ("big.bin", b"\x01" * 10_000),  # crosses tarfile's 10240-byte record
]


def tarfile_bytes(path: pathlib.Path, members: list[tuple[str, bytes]]) -> bytes:
    """The same members written by `tarfile` with the shard's fixed metadata (the reference bytes)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("count", [0, 1, 3, len(MEMBERS)])
def test_tar_writer_bytes_equal_tarfile(tmp_path: pathlib.Path, count: int) -> None:
    # catches: wrong data padding, missing end blocks, record padding off by a block, header fields that differ
    with ShardTarWriter(tmp_path / "ours.tar") as tar:
        for name, data in MEMBERS[:count]:
            tar.add(name, data)
    assert (tmp_path / "ours.tar").read_bytes() == tarfile_bytes(tmp_path / "ref.tar", MEMBERS[:count])


def test_tar_writer_output_read_by_tarfile_and_webdataset(tmp_path: pathlib.Path) -> None:
    wds = pytest.importorskip("webdataset")
    taxon = Taxon(("Plantae", "Tracheophyta", "Pinopsida", "Pinales", "Pinaceae", "Pinus", "sylvestris"), "Scots pine")
    samples = {f"k{i:03d}": bytes([i]) * (300 + 97 * i) for i in range(5)}
    with ShardTarWriter(tmp_path / "shard.tar") as tar:
        for key, jpeg in samples.items():
            for name, data in sample_members(key, taxon, jpeg):
                tar.add(name, data)
    with tarfile.open(tmp_path / "shard.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile("k004.jpg").read() == samples["k004"]
    assert len(names) == 5 * len(sample_members("k", taxon, b""))
    read = list(wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False))
    assert [sample["__key__"] for sample in read] == list(samples)
    assert [sample["jpg"] for sample in read] == list(samples.values())
    assert read[0]["taxon.json"] == sample_members("k000", taxon, b"")[-1][1]


def test_tar_writer_failure_leaves_no_end_blocks(tmp_path: pathlib.Path) -> None:
    # an error mid-shard must not produce a tar that looks complete (atomic_path then deletes it)
    with pytest.raises(RuntimeError), ShardTarWriter(tmp_path / "half.tar") as tar:
        tar.add("a.txt", b"abc")
        raise RuntimeError("worker died")
    assert len((tmp_path / "half.tar").read_bytes()) == 1024  # one header + one data block, no end-of-archive


def photo_jpeg(width: int, height: int, noise: int, seed: int = 1) -> bytes:
    """A JPEG with smooth colour regions plus per-pixel noise (noise 60: far more fine detail than photos)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.integers(-noise, noise + 1, (height, width, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


@pytest.mark.parametrize("size", [(1024, 768), (768, 1024), (2048, 1536)])
@pytest.mark.parametrize("mode", ["squash", "shorter"])
def test_draft_decode_output_close_to_full_decode(size: tuple[int, int], mode: str) -> None:
    # measured (docs/distributed.md, Throughput): >= 40 dB PSNR on this noisy content, >= 50 dB on smooth;
    # a draft one DCT step too small (decoding below the target, then upscaling) gives 35.7 dB here
    data = photo_jpeg(*size, noise=60)
    drafted = decode_image(data, draft_size=224)
    assert max(drafted.size) <= max(size) // 2  # the draft really decoded smaller
    ours = np.asarray(resize(drafted, 224, mode))
    full = np.asarray(resize(decode_image(data), 224, mode))
    assert ours.shape == full.shape  # same output geometry: the resize mode keeps its meaning
    assert psnr(ours, full) >= 38.0
    assert np.abs(ours.astype(int) - full.astype(int)).mean() <= 2.5


def test_tar_writer_refuses_a_name_it_cannot_store(tmp_path: pathlib.Path) -> None:
    # catches: a long name silently cut to 100 bytes, which would change the sample's key in the shard
    with ShardTarWriter(tmp_path / "x.tar") as tar, pytest.raises(ValueError, match="over 100 bytes"):
        tar.add("k" * 97 + ".json", b"{}")
