"""``treeclip synth OUT``: generate the miniature tree of life (images, catalog.csv, taxonomy.csv, world.json)."""

from __future__ import annotations

import argparse

from treeclip.errors import UsageError

HELP = "Generate the miniature tree of life: a taxonomy with inherited looks, its images and a catalog."
RANKS = "kingdom,phylum,class,order,family,genus,species"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (must be empty or absent unless --overwrite)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--species", type=int, default=None, help="total number of species (default 300)")
    shape.add_argument("--branching", metavar="K,P,C,O,F,G,S", default=None,
                       help=f"children per rank ({RANKS}); species = their product")
    parser.add_argument("--images-per-species", type=int, default=20, metavar="N", help="default 20")
    parser.add_argument("--image-size", type=int, default=64, metavar="PX", help="square side in pixels (64)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives identical files")
    parser.add_argument("--holdout", type=float, default=0.1, metavar="F",
                        help="fraction of species held out as 'unseen' (no training images; default 0.1)")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="fraction of each seen species' images in 'val' (default 0.1)")
    parser.add_argument("--homonyms", type=float, default=0.0, metavar="F",
                        help="fraction of genera that reuse a genus name of another kingdom (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier world in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_branching(text: str) -> tuple[int, ...]:
    """``"3,2,2,2,2,3,4"`` → a tuple of seven positive ints; UsageError otherwise."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != len(RANKS.split(",")) or min(counts) < 1:
        raise UsageError(f"--branching {text!r}: give 7 positive integers for {RANKS}, e.g. 3,2,2,2,2,3,4")
    return counts


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from treeclip.data.synth import write_world

    branching = parse_branching(args.branching) if args.branching is not None else None
    bars: list[tqdm] = []  # opened on the first report, i.e. only once the arguments were accepted

    def report(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="species", disable=args.no_progress, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        summary = write_world(args.out, species=args.species, branching=branching,
                              images_per_species=args.images_per_species, image_size=args.image_size,
                              seed=args.seed, holdout=args.holdout, val_fraction=args.val_fraction,
                              homonyms=args.homonyms, overwrite=args.overwrite, progress=report)
    finally:
        for bar in bars:
            bar.close()
    images = ", ".join(f"{count} {split}" for split, count in summary.images.items())
    print(f"{summary.out_dir}: {summary.species} species ({summary.unseen} unseen), images: {images}")
    return 0
