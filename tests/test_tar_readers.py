"""The one tar reader (`formats.shards.TarReader`) against webdataset's own reading, and each of its callers
(wds: source, `treeclip check`, training's shard counting and taxa, the build's resume check) on the real-format
cases a second reader used to handle differently: pax / GNU / ustar-prefix names, gzip, subfolder keys, upper-case
suffixes, repeated members, truncated and bzip2 tars."""

from __future__ import annotations

import bz2
import gzip
import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from treeclip.data.check import check_shards
from treeclip.data.shards import list_samples, sample_members
from treeclip.data.sources import open_source
from treeclip.data.records import Problem, Record
from treeclip.errors import UsageError
from treeclip.formats.shards import TarReader, read_member
from treeclip.taxonomy import Taxon
from treeclip.train.shards import count_samples, shard_taxa

GANNET = Taxon(("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"), "Northern Gannet")
LONG_KEY = "deep/" * 25 + "longkey"  # 132 characters: pax 'path', GNU 'L', or ustar prefix + name


def jpeg(shade: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 90, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


def odd_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    """Members a second reader could group differently: the same basename in two folders, a long name, a
    non-ASCII key, upper-case and two-dot suffixes, webdataset metadata, a directory, a link, a name
    without a suffix."""
    return [
        regular("a/x.jpg", jpeg(1)), regular("a/x.taxon.json", b'{"genus": "Morus", "species": "bassanus"}'),
        regular("b/x.jpg", jpeg(2)), regular("b/x.sci.txt", b"a photo of Morus bassanus."),
        regular("b/x.taxonomic_name.txt", b"Animalia Chordata Aves Suliformes Sulidae Morus bassanus"),
        regular(f"{LONG_KEY}.jpg", jpeg(3)), regular(f"{LONG_KEY}.taxonomic_name.txt", b"Morus bassanus"),
        regular("épervier.jpg", jpeg(4)), regular("épervier.scientific_name.txt", b"Accipiter nisus"),
        regular("UP.JPG", jpeg(5)), regular("UP.TaxonTag.TXT", b"a photo of kingdom Animalia phylum Chordata class Aves "
                                             b"order Suliformes family Sulidae genus Morus species bassanus."),
        regular("k.thumb.jpg", jpeg(6)), regular("k.jpg", jpeg(7)), regular("k.common_name.txt", b"gannet"),
        regular("k.scientific_name.txt", b"Morus bassanus"),
        regular("__meta__", b"webdataset metadata"), special("adir", tarfile.DIRTYPE),
        special("k.link.txt", tarfile.SYMTYPE, "k.common_name.txt"), regular("README", b"no suffix"),
        regular("z.jpg", jpeg(8)), regular("z.scientific_name.txt", b"Sula sula"),
    ]


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def odd_tars(root: Path) -> list[Path]:
    """The odd members as pax, GNU and ustar tars, and the pax tar gzip-compressed."""
    tars = [write_tar(root / f"{name}.tar", odd_members(), fmt)
            for name, fmt in (("pax", tarfile.PAX_FORMAT), ("gnu", tarfile.GNU_FORMAT), ("ustar", tarfile.USTAR_FORMAT))]
    gz = root / "pax.tar.gz"
    gz.write_bytes(gzip.compress(tars[0].read_bytes()))
    return [*tars, gz]


def webdataset_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """The reference grouping: webdataset's own tar iterator and `group_by_keys` (keys up to the first dot of
    the basename, suffixes lower-cased, metadata skipped)."""
    with open(path, "rb") as stream:
        return [(sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")})
                for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}]))]


def our_samples(path: Path) -> tuple[list[tuple[str, dict[str, bytes | None]]], dict[str, int]]:
    with open(path, "rb") as stream:
        reader = TarReader(stream)
        samples = [(s.key, {suffix: entry.data for suffix, entry in s.members.items()}) for s in reader.samples()]
    return samples, reader.skipped


def test_samples_equal_webdataset_grouping_in_every_format(tmp_path: Path) -> None:
    for path in odd_tars(tmp_path):
        samples, skipped = our_samples(path)
        assert samples == webdataset_samples(path), path.name
        keys = [key for key, _ in samples]
        assert keys[:2] == ["a/x", "b/x"] and LONG_KEY in keys and "UP" in keys  # two folders, two samples
        assert set(dict(samples)["UP"]) == {"jpg", "taxontag.txt"} and "thumb.jpg" in dict(samples)["k"]
        assert skipped == {"5": 1, "2": 1, "metadata": 1, "no suffix": 1}, path.name


def test_entry_offsets_are_tarfiles_and_read_member_reads_them(tmp_path: Path) -> None:
    pax, _, _, gz = odd_tars(tmp_path)
    with tarfile.open(pax) as tar:
        expected = [(m.name, m.offset_data, m.size, tar.extractfile(m).read()) for m in tar if m.isreg()]
    for path in (pax, gz):
        with open(path, "rb") as stream:
            entries = list(TarReader(stream).entries(lambda name, size: name.endswith(".jpg")))
        assert [(e.name, e.offset, e.size) for e in entries] == [member[:3] for member in expected]
        assert [e.data for e in entries] == [data if name.endswith(".jpg") else None
                                             for name, _, _, data in expected]
        assert all(read_member((str(path), offset, size)) == data for _, offset, size, data in expected)


def cut(path: Path, member: str, into: int = 10) -> Path:
    """`path` cut `into` bytes into the data of `member`."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data
    path.write_bytes(path.read_bytes()[:offset + into])
    return path


def test_a_break_keeps_finished_samples_and_names_where(tmp_path: Path) -> None:
    members = odd_members()
    for want in (None, lambda name, size: False):  # read, or passed over by seeking
        path = cut(write_tar(tmp_path / "t.tar", members), "b/x.sci.txt")
        reader, seen = keys_until_error(path, want)
        assert seen == ["a/x"] and reader.current == "b/x.sci.txt"  # b/x was being read: dropped
        path = cut(write_tar(tmp_path / "t.tar", members), f"{LONG_KEY}.jpg")
        assert keys_until_error(path, want)[1] == ["a/x", "b/x"]  # b/x's run had ended: complete, kept


def keys_until_error(path: Path, want) -> tuple[TarReader, list[str]]:
    """The sample keys read before the ValueError the broken tar at `path` must raise."""
    seen = []
    with open(path, "rb") as stream, pytest.raises(ValueError, match="truncated"):
        reader = TarReader(stream)
        for sample in reader.samples(want):
            seen.append(sample.key)
    return reader, seen


def test_damaged_gzip_and_bzip2_tars_are_value_errors(tmp_path: Path) -> None:
    data = write_tar(tmp_path / "t.tar", odd_members()).read_bytes()
    for broken, message in ((gzip.compress(data)[:-200], "damaged gzip stream"),
                            (bz2.compress(data), "bzip2-compressed tar")):
        with pytest.raises(ValueError, match=message):
            list(TarReader(io.BytesIO(broken)).samples())


# ---------------------------------------------------------------- the callers


def records(spec: str) -> tuple[dict[str, Record], list[Problem]]:
    items = list(open_source(spec).records())
    return ({item.source_id: item for item in items if isinstance(item, Record)},
            [item for item in items if isinstance(item, Problem)])


def test_wds_source_reads_upper_case_and_folder_keys_and_reports_repeats(tmp_path: Path) -> None:
    members = [*odd_members(), regular("z.Scientific_Name.txt", b"Sula leucogaster")]
    found, problems = records(f"wds:{write_tar(tmp_path / 'shards/s.tar', members)}")
    assert set(found) == {"a/x", "b/x", LONG_KEY, "épervier", "UP", "k", "z"}
    assert found["UP"].taxon.lineage[5] == "Morus"  # UP.JPG is its image (it used to be "no image")
    assert found["k"].member[2] == len(jpeg(7))  # k.jpg, not k.thumb.jpg
    assert read_member(found["UP"].member) == jpeg(5) and read_member(found["b/x"].member) == jpeg(2)
    assert found["z"].taxon.scientific == "Sula sula"  # the first of the repeated suffix is kept ...
    assert [p.reason for p in problems] == ["member z.Scientific_Name.txt repeats a suffix of its sample; "
                                            "the first kept"]  # ... and the repeat reported


def test_wds_source_bad_shards_are_one_line_each_and_the_batch_runs(tmp_path: Path) -> None:
    good = write_tar(tmp_path / "shards/0.tar", odd_members())
    data = good.read_bytes()
    (tmp_path / "shards/1.tar.gz").write_bytes(gzip.compress(data)[:-300])
    (tmp_path / "shards/2.tar").write_bytes(bz2.compress(data))
    cut(write_tar(tmp_path / "shards/3.tar", odd_members()), "z.jpg", into=50)
    found, problems = records(f"wds:{tmp_path / 'shards'}")
    assert len(found) == 7
    assert [Path(p.origin).name for p in problems] == ["1.tar.gz", "2.tar", "3.tar"]
    assert all(p.reason.startswith("unreadable shard: ") and "\n" not in p.reason for p in problems)
    assert "damaged gzip" in problems[0].reason and "bzip2" in problems[1].reason
    assert "truncated" in problems[2].reason


def built_sample(key: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [regular(name, data) for name, data in sample_members(key, GANNET, jpeg())]


def test_check_keeps_folder_keys_apart_and_flags_repeated_members(tmp_path: Path) -> None:
    members = [*built_sample("a/x"), *built_sample("b/x"), *built_sample("y"), regular("y.jpg", jpeg(9))]
    write_tar(tmp_path / "train/shard-000000.tar", members, tarfile.USTAR_FORMAT)
    report = check_shards(tmp_path)
    assert report.shards == {"train/shard-000000.tar": 3} and set(report.keys) == {"a/x", "b/x", "y"}
    sample_problems = [p for p in report.problems if "manifest" not in p]
    assert sample_problems == ["train/shard-000000.tar: y: member y.jpg repeated"]


def test_training_counts_and_taxa_read_no_images_and_name_a_broken_shard(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "train/shard-000000.tar", [*built_sample("a/x"), *built_sample("b/x"),
                                                            *built_sample("c")])
    assert count_samples([str(shard)]) == 3
    assert list(shard_taxa([str(shard)]).values()) == [GANNET]
    cut(shard, "c.jpg", into=100)  # an image the counting passes over by seeking
    for read in (count_samples, shard_taxa):
        with pytest.raises(UsageError, match=f"cannot read shard {shard} .*truncated"):
            read([str(shard)])


def test_resume_listing_reads_headers_only_and_rejects_a_cut_image(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "s.tar", [*built_sample("k1"), *built_sample("k2")], tarfile.USTAR_FORMAT)
    listed = list_samples(shard)
    assert list(listed) == ["k1", "k2"] and listed["k1"][0] == "jpg" and "taxon.json" in listed["k1"]
    cut(shard, "k2.jpg", into=100)
    with pytest.raises(ValueError, match="truncated"):
        list_samples(shard)
