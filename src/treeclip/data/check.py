"""`check_shards`: verify a shard folder written by `treeclip build`.

Checks that every shard opens and reads to the end (`treeclip.formats.shards.TarReader`, samples grouped as
webdataset groups them); that every sample has a decodable ``.jpg``, a ``taxon.json`` and every text file
`treeclip.taxonomy.shard_texts` gives for that taxon, with exactly that text, and no repeated member; that no
key appears twice; that no temporary file is left; and that the shards, their sample counts and the catalog's
ids agree with ``manifest.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeclip.atomic import is_temp_file
from treeclip.data.images import ImageError, decode_image
from treeclip.errors import UsageError
from treeclip.formats import open_table
from treeclip.formats.shards import (CATALOG, MANIFEST, TAXON_JSON, TarReader, TarSample, read_manifest,
                                     read_taxon_json, shard_counts)
from treeclip.taxonomy import shard_texts



@dataclass
class CheckReport:
    """Shard and sample counts found, and one line per problem."""

    shards: dict[str, int] = field(default_factory=dict)  # shard name → samples
    keys: dict[str, str] = field(default_factory=dict)  # sample key → shard name
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, samples in self.shards.items():
            split = name.split("/", 1)[0] if "/" in name else ""
            counts[split] = counts.get(split, 0) + samples
        return counts


def check_shards(root: str | Path) -> CheckReport:
    """Verify the shard folder `root`; `UsageError` if it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; give the --out folder of a treeclip build")
    report = CheckReport()
    report.problems += [f"{path}: leftover temporary file (incomplete build?)" for path in _files(root)
                        if is_temp_file(path)]
    for path in sorted(p for p in _files(root) if p.suffix == ".tar"):
        _check_tar(path, path.relative_to(root).as_posix(), report)
    manifest = _load_manifest(root, report)
    if manifest is not None:
        _compare_manifest(manifest, report)
    if (root / CATALOG).is_file():
        _compare_catalog(root / CATALOG, report)
    return report


def _files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file() and ".build" not in p.relative_to(root).parts)


def _check_tar(path: Path, name: str, report: CheckReport) -> None:
    count = 0
    try:
        with open(path, "rb") as stream:
            for sample in TarReader(stream).samples():
                count += 1
                key = sample.key
                if key in report.keys:
                    report.problems.append(f"{name}: key {key} repeated (also in {report.keys[key]})")
                report.keys.setdefault(key, name)
                report.problems += [f"{name}: {key}: {issue}" for issue in _sample_issues(sample)]
    except (ValueError, OSError) as exc:
        report.problems.append(f"{name}: unreadable tar ({exc})")
    report.shards[name] = count


def _sample_issues(sample: TarSample) -> list[str]:
    members = {suffix: entry.data or b"" for suffix, entry in sample.members.items()}
    issues = [f"member {member} repeated" for member in sample.duplicates]
    if "jpg" not in members:
        issues.append("no .jpg image")
    else:
        try:
            decode_image(members["jpg"])
        except ImageError as exc:
            issues.append(f"image does not decode: {exc}")
    try:
        taxon = read_taxon_json(members[TAXON_JSON])
    except KeyError:
        return issues + [f"no {TAXON_JSON}"]
    except (ValueError, TypeError) as exc:
        return issues + [f"bad {TAXON_JSON}: {exc}"]
    for filename, text in shard_texts(taxon).items():
        if filename.lower() not in members:  # suffixes are compared lower-cased, as webdataset reads them
            issues.append(f"no {filename}")
        elif members[filename.lower()].decode("utf-8", errors="replace") != text:
            issues.append(f"{filename} does not match {TAXON_JSON}")
    return issues


def _load_manifest(root: Path, report: CheckReport) -> dict[str, Any] | None:
    try:
        return read_manifest(root)
    except FileNotFoundError:
        report.problems.append(f"{root / MANIFEST}: missing (the build did not finish; rerun it with --resume)")
    except (OSError, ValueError) as exc:
        report.problems.append(f"{root / MANIFEST}: unreadable ({exc})")
    return None


def _compare_manifest(manifest: dict[str, Any], report: CheckReport) -> None:
    listed = shard_counts(manifest)
    for name, expected in listed.items():
        found = report.shards.get(name)
        if found is None:
            report.problems.append(f"{name}: listed in {MANIFEST} but missing")
        elif found != expected:
            report.problems.append(f"{name}: {found} samples, {MANIFEST} says {expected}")
    report.problems += [f"{name}: not listed in {MANIFEST}" for name in report.shards if name not in listed]
    expected_total = manifest.get("counts", {}).get("samples")
    if expected_total is not None and expected_total != len(report.keys):
        report.problems.append(f"{MANIFEST}: counts.samples is {expected_total}, shards hold {len(report.keys)}")


def _compare_catalog(path: Path, report: CheckReport) -> None:
    try:
        table = open_table(path, what="catalog")
        columns = [data for _, data in table.columns(["id", "split"])]
    except (UsageError, OSError, ValueError, KeyError) as exc:
        report.problems.append(f"{path.name}: unreadable ({exc})")
        return
    ids = [key for data in columns for key in data["id"]]
    splits = [split for data in columns for split in data["split"]]
    if len(set(ids)) != len(ids):
        report.problems.append(f"{path.name}: repeated ids")
    missing = [key for key in ids if key not in report.keys]
    extra = set(report.keys) - set(ids)
    if missing or extra:
        report.problems.append(f"{path.name}: {len(missing)} ids not in the shards, {len(extra)} samples not in it")
    wrong = sum(1 for key, split in zip(ids, splits) if key in report.keys and
                not report.keys[key].startswith(f"{split}/"))
    if wrong:
        report.problems.append(f"{path.name}: {wrong} rows name a split other than their shard's folder")
