"""``treeclip prior build OCCURRENCES --out PRIOR``: a location prior from occurrence records."""

from __future__ import annotations

import argparse
import sys

HELP = "build a location prior (per-cell occurrence counts) from GBIF/Darwin Core or lat,lon,taxon tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="count occurrence records per H3 cell (and season)",
                               description="Count occurrence records per H3 cell, per species, genus and family.")
    build.add_argument("occurrences", nargs="+", metavar="OCCURRENCES",
                       help="occurrence tables: a GBIF download (occurrence.txt / simple CSV), Darwin Core "
                       "(decimalLatitude, decimalLongitude, eventDate, kingdom ... species or scientificName), "
                       "or a CSV with lat, lon, taxon; CSV, TSV or Parquet")
    build.add_argument("--out", required=True, metavar="PRIOR", help="output file (Parquet), e.g. prior.parquet")
    build.add_argument("--resolution", type=int, default=3,
                       help="H3 grid resolution 0-15 (default 3: cells of ~12,400 km²)")
    build.add_argument("--by-season", action="store_true",
                       help="also count per season (from eventDate/month), used when a photo's date is known")


def run(args: argparse.Namespace) -> int:
    from itertools import chain  # noqa: PLC0415

    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.predict.prior import LocationPrior, OccurrenceReader  # noqa: PLC0415

    readers = [OccurrenceReader(path) for path in args.occurrences]
    prior = LocationPrior.build(chain.from_iterable(readers), resolution=args.resolution,
                                by_season=args.by_season, sources=[str(r.table.path) for r in readers])
    for reader in readers:
        for reason, count in sorted(reader.skipped.items()):
            sys.stderr.write(f"treeclip prior: {reader.table.path}: skipped {count} records: {reason}\n")
            prior.info.skipped[reason] = prior.info.skipped.get(reason, 0) + count
    if prior.info.records == 0:
        raise UsageError(f"no usable occurrence records in {', '.join(args.occurrences)}; nothing written")
    prior.save(args.out)
    taxa = ", ".join(f"{count} {rank}" for rank, count in prior.info.taxa.items())
    sys.stderr.write(f"treeclip prior: {prior.info.records} records in {prior.info.cells} cells ({taxa}) "
                     f"-> {args.out}\n")
    return 0
