"""The shard loader: splitting across ranks and workers, text-type choice, our and released-style shards."""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms as tv

from treeclip.data import loader
from treeclip.data.loader import ImageTransform, list_shards, make_loader, num_samples, split_shards
from treeclip.formats.shards import MANIFEST, TarReader, manifest_text, shard_entry
from treeclip.formats.shards import manifest as make_manifest
from treeclip.errors import UsageError
from treeclip.taxonomy import Taxon, shard_texts

SIZE = 8


def transform(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.resize((SIZE, SIZE)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


class RecordingTokenizer:
    """Codes of the first 12 characters; remembers every caption it was asked to tokenise."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.seen.extend(texts)
        out = torch.zeros(len(texts), 12, dtype=torch.long)
        for row, text in enumerate(texts):
            codes = [ord(c) for c in text[:12]]
            out[row, : len(codes)] = torch.tensor(codes)
        return out


def image_bytes(index: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (index * 7 % 256, 40, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def taxon(index: int) -> Taxon:
    return Taxon(("Animalia", "Chordata", "Aves", "Passeriformes", f"Fam{index % 3}idae", f"Genus{index % 5}",
                  f"epithet{index}"), common=f"Bird {index}")


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def our_members(index: int) -> dict[str, bytes]:
    t = taxon(index)
    members = {"jpg": image_bytes(index)}
    members.update({name: text.encode() for name, text in shard_texts(t).items()})
    members["taxon.json"] = json.dumps({**t.ranks(), "common": t.common}).encode()
    return members


def make_shards(root: Path, n_shards: int, per_shard: int) -> list[str]:
    """Our shard layout under root/train, plus root/manifest.json; returns all keys."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    keys, manifest = [], []
    for shard in range(n_shards):
        samples = []
        for i in range(per_shard):
            index = shard * per_shard + i
            samples.append((f"id{index:05d}", our_members(index)))
        write_tar(root / "train" / f"shard-{shard:06d}.tar", samples)
        manifest.append(shard_entry(f"train/shard-{shard:06d}.tar", "train", per_shard))
        keys += [key for key, _ in samples]
    (root / MANIFEST).write_text(manifest_text(make_manifest(manifest)))  # the build's own writer
    return keys


def batches(urls, **kwargs) -> list[dict]:
    options = {"transform": transform, "tokenizer": RecordingTokenizer(), "batch_size": 4, "shuffle_buffer": 8}
    options.update(kwargs)
    return list(make_loader(urls, **options))


def keys_of(result: list[dict]) -> list[str]:
    return [key for batch in result for key in batch["__key__"]]


@pytest.mark.parametrize("n_shards,per_shard", [(6, 5), (3, 7), (1, 13)])
def test_two_ranks_two_workers_see_every_key_once(tmp_path: Path, n_shards: int, per_shard: int) -> None:
    keys = make_shards(tmp_path, n_shards, per_shard)
    seen = []
    for rank in range(2):
        result = batches(tmp_path / "train", rank=rank, world_size=2, num_workers=2, seed=3)
        assert all(batch["image"].shape[1:] == (3, SIZE, SIZE) for batch in result)
        seen += keys_of(result)
    assert len(seen) == len(keys)
    assert sorted(seen) == sorted(keys)


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 2), (3, 4), (4, 3), (8, 1)])
@pytest.mark.parametrize("n_shards", [1, 2, 5, 12, 13])
def test_split_shards_partitions_samples(world_size: int, workers: int, n_shards: int) -> None:
    counts = [3 + (i * 5) % 7 for i in range(n_shards)]  # uneven shard sizes
    stream = [(shard, i) for shard in range(n_shards) for i in range(counts[shard])]
    seen = []
    for rank in range(world_size):
        for worker in range(workers):
            indices, stride, offset = split_shards(n_shards, rank=rank, world_size=world_size, worker=worker,
                                                   num_workers=workers)
            assert indices, "every consumer gets input"
            mine = [sample for sample in stream if sample[0] in indices]
            seen += mine[offset::stride]
    assert sorted(seen) == sorted(stream)


def test_per_sample_choice_follows_weights_and_tokenises_only_the_choice(tmp_path: Path) -> None:
    keys = make_shards(tmp_path, 2, 20)
    texts = {key: shard_texts(taxon(int(key[2:]))) for key in keys}
    counts: Counter[str] = Counter()
    mixed_batches = 0
    for epoch in range(10):
        tokenizer = RecordingTokenizer()
        result = batches(tmp_path / "train", tokenizer=tokenizer, text_weights={"sci": 3, "com": 1, "taxon": 0},
                         text_types=["sci", "com", "taxon"], epoch=epoch)
        chosen = [t for batch in result for t in batch["text_type"]]
        expected = [texts[k][f"{t}.txt"] for k, t in zip(keys_of(result), chosen)]
        assert tokenizer.seen == expected
        counts.update(chosen)
        mixed_batches += sum(len(set(batch["text_type"])) > 1 for batch in result)
    assert counts["taxon"] == 0
    assert abs(counts["sci"] / 400 - 0.75) < 0.08
    assert mixed_batches > 0


def test_per_batch_choice_is_one_type_per_batch_with_weights(tmp_path: Path) -> None:
    make_shards(tmp_path, 2, 20)
    per_batch: Counter[str] = Counter()
    for epoch in range(20):
        for batch in batches(tmp_path / "train", text_mix="batch", text_types=["sci_com", "taxon_com"],
                             text_weights=[0.2, 0.8], epoch=epoch):
            assert len(set(batch["text_type"])) == 1
            per_batch[batch["text_type"][0]] += 1
    assert sum(per_batch.values()) == 200
    assert abs(per_batch["taxon_com"] / 200 - 0.8) < 0.1


def test_same_seed_same_stream_other_seed_or_epoch_differs(tmp_path: Path) -> None:
    make_shards(tmp_path, 3, 6)

    def run(**kwargs) -> tuple[list[str], list[str]]:
        result = batches(tmp_path / "train", num_workers=2, **kwargs)
        return keys_of(result), [t for batch in result for t in batch["text_type"]]

    first = run(seed=1)
    assert run(seed=1) == first
    assert run(seed=2) != first
    assert run(seed=1, epoch=1) != first
    assert sorted(run(seed=2)[0]) == sorted(first[0])


def test_released_style_shards_load(tmp_path: Path) -> None:
    t = Taxon(("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata"),
              "White-plumed Honeyeater")
    texts = {name: text.encode() for name, text in shard_texts(t).items()}
    no_taxonomy = {k: v for k, v in texts.items() if k != "taxonomic_name.txt"}
    write_tar(tmp_path / "shard-000000.tar", [
        ("a1b2", {"jpg": image_bytes(1), **texts}),
        ("c3d4", {"png": image_bytes(2, "PNG"), **no_taxonomy}),
        ("e5f6", {"jpg": image_bytes(3), "taxonTag.txt": b"Tomato___Late_blight"}),
    ])
    result = batches(tmp_path / "shard-000000.tar", text_types=["taxonTag"], shuffle_buffer=0)
    lineage = dict(zip(keys_of(result), [x for batch in result for x in batch["lineage"]]))
    # without taxonomic_name.txt the lineage is read back from the unambiguous tagged caption
    assert lineage == {"a1b2": t.lineage, "c3d4": t.lineage, "e5f6": ("",) * 7}
    assert result[0]["text_type"] == ["taxonTag"] * 3


def test_missing_text_types_fall_back_and_bad_samples_are_skipped(tmp_path: Path, caplog) -> None:
    good = our_members(1)
    no_com = {k: v for k, v in our_members(2).items() if k != "com.txt"}
    no_text = {"jpg": image_bytes(3)}
    write_tar(tmp_path / "s.tar", [("good", good), ("nocom", no_com), ("notext", no_text),
                                   ("broken", {**our_members(4), "jpg": b"\xff\xd8 not really a jpeg"})])
    with caplog.at_level(logging.WARNING, logger="treeclip.data.loader"):
        result = batches(tmp_path / "s.tar", text_types=["com"], text_weights=[1.0], shuffle_buffer=0)
    assert keys_of(result) == ["good"]
    assert "broken" in caplog.text and "notext" in caplog.text
    result = batches(tmp_path / "s.tar", text_types=["com", "sci"], text_weights=[0.9, 0.1], shuffle_buffer=0)
    assert keys_of(result) == ["good", "nocom"] and result[0]["text_type"][1] == "sci"
    nocom_caption = RecordingTokenizer()
    batches(tmp_path / "s.tar", text_types=["com", "sci"], tokenizer=nocom_caption, shuffle_buffer=0)
    assert nocom_caption.seen[1] == shard_texts(taxon(2))["sci.txt"]


def test_url_forms_and_errors(tmp_path: Path) -> None:
    make_shards(tmp_path, 3, 2)
    train = tmp_path / "train"
    expected = [str(train / f"shard-{i:06d}.tar") for i in range(3)]
    assert list_shards(train) == expected
    assert list_shards(str(train / "*.tar")) == expected
    assert list_shards(str(train / "shard-{000000..000002}.tar")) == expected
    assert list_shards([expected[0], train / "shard-00000[12].tar"]) == expected
    with pytest.raises(UsageError, match="shard not found"):
        list_shards(str(train / "shard-{000000..000003}.tar"))
    with pytest.raises(UsageError, match="no .tar shards"):
        list_shards(tmp_path)
    with pytest.raises(UsageError, match="unknown text type"):
        make_loader(train, transform=transform, tokenizer=RecordingTokenizer(), batch_size=2, text_types=["latin"])
    with pytest.raises(UsageError, match="text_weights"):
        make_loader(train, transform=transform, tokenizer=RecordingTokenizer(), batch_size=2, text_weights=[1, 2])


def test_num_samples_from_manifest(tmp_path: Path) -> None:
    make_shards(tmp_path, 3, 4)
    assert num_samples(tmp_path / "train") == 12
    assert num_samples(str(tmp_path / "train" / "shard-00000[01].tar")) == 8
    (tmp_path / "manifest.json").unlink()
    assert num_samples(tmp_path / "train") is None


def test_resampled_is_endless_and_seeded(tmp_path: Path) -> None:
    keys = make_shards(tmp_path, 2, 3)

    def first_keys(seed: int) -> list[str]:
        loader = make_loader(tmp_path / "train", transform=transform, tokenizer=RecordingTokenizer(), batch_size=4,
                             resampled=True, seed=seed, shuffle_buffer=4)
        taken = []
        for batch in loader:
            taken += batch["__key__"]
            if len(taken) >= 5 * len(keys):
                return taken
        raise AssertionError("resampled loader ended")

    stream = first_keys(0)
    assert set(stream) <= set(keys) and len(stream) >= 30
    assert first_keys(0) == stream


# ---------------------------------------------------------------- the shard reader against webdataset's


def webdataset_reader(_suffixes) -> object:
    """The loader's shard reader before `TarReader`: every member through `tarfile`."""
    return wds.tarfile_to_samples(handler=loader._log_and_continue)


def odd_shards(root: Path) -> list[str]:
    """Our layout, a released-style shard, and the members a reader could trip over: pax and GNU long names,
    non-ASCII names, upper-case suffixes, webdataset metadata, directories, links, a duplicate, a gzip shard."""
    long_key = "deep/" * 25 + "longkey"  # 133 characters: pax 'path' or GNU 'L'
    plain = [(f"s{i}", our_members(i)) for i in range(5)]
    odd = [(long_key, our_members(5)), ("épervier", our_members(6)),
           ("UPPER", {"JPG": image_bytes(7), "SCI.TXT": b"Upper case", "taxon.json": our_members(7)["taxon.json"]}),
           ("dup", {**our_members(8)})]
    paths = []
    for index, fmt in enumerate((tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT)):
        path = root / f"shard-{index:06d}.tar"
        samples = plain + (odd if fmt != tarfile.USTAR_FORMAT else odd[1:])
        with tarfile.open(path, "w", format=fmt) as tar:
            for key, members in samples:
                for suffix, data in members.items():
                    _add(tar, f"{key}.{suffix}", data)
                if key == "dup":
                    _add(tar, "dup.com.txt", b"second com caption")
                    _add(tar, "__meta__", b"webdataset metadata")
                    _add(tar, "__meta__/about.txt", b"webdataset metadata folder")
                    tar.addfile(_info("adir", tarfile.DIRTYPE))
                    tar.addfile(_info("dup.link.txt", tarfile.SYMTYPE, linkname="s1.sci.txt"))
        paths.append(str(path))
    gz = root / "shard-000003.tar"
    gz.write_bytes(gzip.compress(Path(paths[0]).read_bytes()))
    return [*paths, str(gz)]


def _info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _info(name, tarfile.REGTYPE)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def assert_same_batches(new: list[dict], old: list[dict]) -> None:
    assert len(new) == len(old) > 0
    for a, b in zip(new, old):
        assert a["__key__"] == b["__key__"]
        assert a["text_type"] == b["text_type"] and a["lineage"] == b["lineage"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])


@pytest.mark.parametrize("options", [
    {"shuffle_buffer": 0},
    {"seed": 4, "text_mix": "batch", "text_types": ["sci", "com", "taxonTag"]},
    {"seed": 9, "num_workers": 2, "world_size": 2, "rank": 1},
])
def test_batches_equal_webdataset_readers(tmp_path: Path, monkeypatch, options: dict) -> None:
    from _shards import write_shards  # the build's own member layout, real JPEGs

    urls = odd_shards(tmp_path) + list_shards(write_shards(tmp_path / "ours", n_species=4) / "train")
    tokenizer = RecordingTokenizer()
    new = batches(urls, batch_size=5, tokenizer=tokenizer, **options)
    monkeypatch.setattr(loader, "_TarSamples", webdataset_reader)
    old = batches(urls, batch_size=5, **options)
    assert_same_batches(new, old)
    if options.get("shuffle_buffer") == 0:  # one consumer, every sample: upper-case and non-ASCII names read
        assert "Upper case" in tokenizer.seen and "épervier" in keys_of(new)
        assert len(keys_of(new)) == 3 * 9 + 8 + 4 * 16  # 4 odd shards (ustar: no long name), 64 of ours


def test_tar_reader_matches_tarfile(tmp_path: Path) -> None:
    for path in odd_shards(tmp_path):
        with tarfile.open(path) as tar:
            expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
        with open(path, "rb") as stream:
            reader = TarReader(stream)
            assert list(reader.members()) == expected
            assert reader.skipped == {"5": 1, "2": 1}  # the directory and the symlink, counted
        with open(path, "rb") as stream:
            only_json = list(TarReader(stream).members(lambda name: name.endswith(".json")))
        assert [name for name, _ in only_json] == [name for name, _ in expected]
        assert [data for name, data in only_json] == [data if name.endswith(".json") else None
                                                     for name, data in expected]


def test_tar_reader_reads_pipes_and_rejects_damage(tmp_path: Path) -> None:
    data = Path(odd_shards(tmp_path)[2]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = [m.name for m in tar if m.isreg()]

    class Pipe(io.RawIOBase):  # not seekable, no peek: members passed over are read and dropped
        def __init__(self, raw: bytes) -> None:
            self.inner = io.BytesIO(raw)

        def readinto(self, buffer) -> int:
            return self.inner.readinto(buffer)

        def readable(self) -> bool:
            return True

    assert [name for name, _ in TarReader(Pipe(data)).members(lambda name: False)] == names
    assert [name for name, _ in TarReader(Pipe(gzip.compress(data))).members()] == names
    with pytest.raises(ValueError, match="truncated"):
        list(TarReader(io.BytesIO(data[:3000])).members())
    corrupt = bytearray(data)
    corrupt[512 * 3 + 5] ^= 0xFF  # a byte of the second member's header (the first holds 2 blocks of JPEG)
    with pytest.raises(ValueError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(corrupt))).members())


def test_pipe_urls_read_like_files(tmp_path: Path) -> None:
    shards = odd_shards(tmp_path)
    plain, gz = shards[0], shards[3]  # pax, and the same gzip-compressed
    from_files = batches([plain, gz], shuffle_buffer=0)
    assert_same_batches(batches([f"pipe:cat {plain}", f"pipe:cat {gz}"], shuffle_buffer=0), from_files)


def test_broken_shard_keeps_its_samples_so_far_and_the_next_shard(tmp_path: Path, caplog) -> None:
    write_tar(tmp_path / "a.tar", [(f"a{i}", our_members(i)) for i in range(3)])
    write_tar(tmp_path / "b.tar", [(f"b{i}", our_members(i)) for i in range(2)])
    whole = (tmp_path / "a.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        third = next(m for m in tar if m.name == "a2.jpg").offset_data
    (tmp_path / "a.tar").write_bytes(whole[:third + 10])  # cut inside a2.jpg
    with caplog.at_level(logging.WARNING, logger="treeclip.data.loader"):
        result = batches([tmp_path / "a.tar", tmp_path / "b.tar"], shuffle_buffer=0)
    assert keys_of(result) == ["a0", "a1", "b0", "b1"]
    assert "skipping the rest of" in caplog.text and "a.tar" in caplog.text


def augment(*extra) -> tv.Compose:
    """open_clip's training transform in small: random crop, ToTensor, Normalize."""
    return tv.Compose([tv.RandomResizedCrop(16, scale=(0.5, 1.0)), *extra, tv.ToTensor(),
                       tv.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])


def test_fused_to_tensor_normalize_gives_the_same_bits(tmp_path: Path) -> None:
    from _shards import write_shards

    urls = list_shards(write_shards(tmp_path, n_species=3) / "train")
    compose = augment(tv.RandomHorizontalFlip())  # a step without a tensor kernel here: geometry by PIL
    assert ImageTransform(compose).kernels is None
    torch.manual_seed(0)
    fused = batches(urls, transform=compose, shuffle_buffer=0)
    torch.manual_seed(0)
    plain = batches(urls, transform=lambda image: compose(image), shuffle_buffer=0)  # not a Compose: as given
    assert_same_batches(fused, plain)
    assert ImageTransform(compose).steps is not None and ImageTransform(transform).steps is None
    gray = tv.Compose([tv.Grayscale(), tv.ToTensor(), tv.Normalize((0.5,), (0.25,))])
    image = Image.open(io.BytesIO(image_bytes(3)))
    assert torch.equal(ImageTransform(gray)(image), gray(image))  # not RGB before ToTensor: the given steps
    photos = [Image.open(io.BytesIO(image_bytes(i))) for i in range(3)]
    torch.manual_seed(2)
    expected = torch.stack([compose(photo) for photo in photos])
    torch.manual_seed(2)
    fused_images = ImageTransform(compose)
    items = [fused_images(photo) for photo in photos]
    items[1] = expected[1].clone()  # a batch may mix finished images (the given steps) and pixels
    assert torch.equal(fused_images.stack(items), expected)
    with pytest.raises(RuntimeError, match="differ in shape"):
        fused_images.stack([items[0], torch.zeros(1, 16, 16)])


MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def pil_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader as it was before tensor geometry: every step of the transform on the PIL image."""
    monkeypatch.setattr(loader, "tensor_steps", lambda steps: None)


@pytest.mark.filterwarnings("ignore:Anti-alias option is always applied")  # the PIL reference's antialias=False
@pytest.mark.parametrize("geometry", [
    [tv.RandomResizedCrop(16, scale=(0.5, 1.0))],  # open_clip's training geometry (downscaling here)
    [tv.RandomResizedCrop(48, scale=(0.9, 1.0), interpolation=tv.InterpolationMode.BICUBIC)],  # upscaling
    [tv.Resize(20, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(16)],  # open_clip's inference
    [tv.Resize(12, antialias=False)],  # PIL antialiases whatever the flag says; so must the tensor kernel
])
def test_tensor_geometry_and_uint8_batches_match_the_pil_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              geometry: list) -> None:
    """Geometry on uint8 tensors (torchvision's kernels) against PIL's: the same crops and pixels within two
    levels, almost all equal; the uint8 batch normalised by `normalize_uint8` equals the float batch bit for
    bit. A different crop draw, a channel swap, a wrong mean or std would be far outside these bounds."""
    from _shards import write_shards
    from treeclip.pixels import normalize_uint8

    urls = list_shards(write_shards(tmp_path, n_species=6) / "train")
    compose = tv.Compose([*geometry, tv.ToTensor(), tv.Normalize(MEAN, STD)])
    assert ImageTransform(compose).kernels is not None

    def run(**options) -> list[dict]:
        torch.manual_seed(3)
        return batches(urls, transform=compose, shuffle_buffer=0, **options)

    pixels, floats = run(normalize=False), run()
    pil_geometry(monkeypatch)
    reference = run()
    for uint8, normalised, pil in zip(pixels, floats, reference, strict=True):
        assert uint8["image"].dtype == torch.uint8 and normalised["image"].dtype == torch.float32
        assert uint8["__key__"] == pil["__key__"] and torch.equal(uint8["text"], pil["text"])
        assert torch.equal(normalize_uint8(uint8["image"], MEAN, STD), normalised["image"])
        levels = (normalised["image"] - pil["image"]).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
        assert levels.max() <= 2.01 and levels.mean() < 0.25  # rounding: 0.3 % of values off by one at 224 px


def test_uint8_batches_only_where_the_transform_allows(tmp_path: Path) -> None:
    urls = make_shards(tmp_path, 1, 6) and list_shards(tmp_path / "train")
    plain = batches(urls, normalize=False, shuffle_buffer=0)  # a function, not a Compose: its floats as given
    assert plain[0]["image"].dtype == torch.float32
    gray = tv.Compose([tv.Resize(8), tv.Grayscale(num_output_channels=3), tv.ToTensor(), tv.Normalize(MEAN, STD)])
    assert ImageTransform(gray).kernels is None  # Grayscale: PIL steps, still uint8 pixels at the end
    nearest = tv.Compose([tv.RandomResizedCrop(8, interpolation=tv.InterpolationMode.NEAREST), tv.ToTensor(),
                          tv.Normalize(MEAN, STD)])
    assert ImageTransform(nearest).kernels is None  # torch's nearest picks other pixels than PIL's
    torch.manual_seed(0)
    got = batches(urls, transform=gray, normalize=False, shuffle_buffer=0)
    torch.manual_seed(0)
    assert torch.equal(normalize_uint8_of(got[0]["image"]), batches(urls, transform=gray, shuffle_buffer=0)[0]["image"])


def normalize_uint8_of(pixels: torch.Tensor) -> torch.Tensor:
    from treeclip.pixels import normalize_uint8

    assert pixels.dtype == torch.uint8
    return normalize_uint8(pixels, MEAN, STD)
