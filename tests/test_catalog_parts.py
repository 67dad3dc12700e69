"""``catalog.parquet`` from the shards' Arrow catalog parts: the same bytes as from the rows themselves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from treeclip.data.catalog import catalog_table, read_catalog_part, write_catalog, write_catalog_part

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def shard(first: int, count: int) -> list[dict[str, object]]:
    """`count` catalog rows as a shard job makes them; every 7th lacks its licence columns, one has a null."""
    rows = []
    for i in range(first, first + count):
        row = {"id": f"{i:024x}", "split": "train", "source": "csv", "source_id": f"img/{i}.jpg",
               "path": f"/data/img/{i}.jpg", **{rank: f"{rank.title()}{i % (3 + len(rank))}" for rank in RANKS},
               "common": f"common {i % 11}" if i % 13 else None, "width": 640 + i % 5, "height": 480,
               "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "license": "cc-by", "owner": f"owner {i % 4}"}
        if i % 7 == 0:
            del row["license"], row["owner"]
        rows.append(row)
    return rows


def test_catalog_from_parts_equals_catalog_from_rows_byte_for_byte(tmp_path: Path) -> None:
    """Shards of 41,000 (many 4,096-row IPC batches' worth), 0, 1, 30 and 1,000 rows, in row groups of 41,500
    that cross the shards' edges: the catalog concatenated from the parts written and read back equals, byte
    for byte, the one written from the rows (what the build wrote before the parts). Catches a part written
    in several record batches (at this size the Parquet pages then differ), a schema or metadata change in
    the round trip, and parts read in the wrong order."""
    sizes = [41_000, 0, 1, 30, 1000]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    shards = [shard(start, size) for start, size in zip(starts, sizes)]
    written = write_catalog((catalog_table(rows) for rows in shards), tmp_path / "from_rows.parquet",
                            row_group_rows=41_500)
    digests = []
    for index, rows in enumerate(shards):
        digests.append(write_catalog_part(catalog_table(rows), tmp_path / f"part-{index}.arrow"))
        assert digests[-1] == hashlib.sha256((tmp_path / f"part-{index}.arrow").read_bytes()).hexdigest()
    parts = (read_catalog_part(tmp_path / f"part-{index}.arrow") for index in range(len(shards)))
    assert write_catalog(parts, tmp_path / "from_parts.parquet", row_group_rows=41_500) == written == sum(sizes)
    assert (tmp_path / "from_parts.parquet").read_bytes() == (tmp_path / "from_rows.parquet").read_bytes()
    catalog = pq.ParquetFile(tmp_path / "from_parts.parquet")
    assert catalog.metadata.num_row_groups == 2
    rows = catalog.read().to_pylist()
    assert [r["id"] for r in rows] == [f"{i:024x}" for i in range(sum(sizes))]
    assert rows[7]["license"] == "" and rows[13]["common"] is None and rows[8]["owner"] == "owner 0"
