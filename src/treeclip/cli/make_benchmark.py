"""``treeclip make-benchmark``: a held-out evaluation set in the Rare Species layout, plus its exclusion file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "make-benchmark"
HELP = "Make a held-out benchmark (Rare Species layout) from a catalog and a species list, with an exclusion file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", required=True, type=Path,
                        help="catalog (.csv or .parquet) with path, source, kingdom ... species[, common, sha256]")
    parser.add_argument("--species", required=True, type=Path,
                        help="species list: one binomial per line, or a CSV with a species/scientific_name column")
    parser.add_argument("--images", required=True, type=int, help="images per species (species with fewer are skipped)")
    parser.add_argument("--out", required=True, type=Path, help="benchmark folder (metadata.csv, images/, exclude.csv)")
    parser.add_argument("--exclude-sources", default="", metavar="SOURCE[,SOURCE]",
                        help="training sources (catalog 'source' values, e.g. inat21,bioscan): species present in "
                             "any of them are skipped")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--columns", metavar="ROLE=COLUMN[,...]",
                        help="catalog column names no rule recognises, e.g. class=cls,species=epithet")
    parser.add_argument("--link", choices=("copy", "symlink", "hardlink"), default="copy",
                        help="how images are placed in the benchmark (default copy)")


def run(args: argparse.Namespace) -> int:
    from treeclip.eval.heldout import make_benchmark  # noqa: PLC0415
    from treeclip.formats import parse_column_map  # noqa: PLC0415

    result = make_benchmark(catalog=args.catalog, species_file=args.species, out_dir=args.out,
                            images_per_species=args.images, seed=args.seed, link=args.link,
                            columns=parse_column_map(args.columns),
                            exclude_sources=[s.strip() for s in args.exclude_sources.split(",") if s.strip()])
    for binomial, reason in result.skipped.items():
        sys.stderr.write(f"skipped {binomial}: {reason}\n")
    print(f"{len(result.kept)} species, {sum(result.kept.values())} images -> {result.out_dir / 'metadata.csv'}; "
          f"exclusion file for `treeclip build --exclude`: {result.out_dir / 'exclude.csv'}")
    return 0
