"""``treeclip bank prune`` and ``treeclip bank info``: smaller and compactly stored banks, and what they cost in
answers (the ``bank`` command's other subcommands; `treeclip.cli.bank` registers them)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DTYPE_CHOICES = ("fp32", "fp16", "int8")
MB = 2**20


def add_prune_arguments(commands: Any) -> None:
    prune = commands.add_parser("prune", help="write a smaller bank: to ranks, clades, a checklist or a prior, "
                                "optionally stored fp16/int8",
                                description="Keep the taxa every given rule allows and write them as a new bank "
                                "folder (same format; --dtype fp16 or int8 stores it compact, memory-mapped).")
    prune.add_argument("bank", metavar="BANK", help="the label bank folder to prune")
    prune.add_argument("--out", required=True, metavar="BANK", help="the bank folder to write")
    prune.add_argument("--min-rank", metavar="RANK",
                       help="keep taxa named down to at least this rank (e.g. species drops genus-only rows)")
    prune.add_argument("--within", nargs="+", metavar="CLADE", help="keep taxa inside these clades (names at any "
                       "rank, or 'Genus epithet'; a,b,c lists accepted)")
    prune.add_argument("--subset", metavar="FILE", help="checklist CSV with rank columns: keep only these taxa")
    prune.add_argument("--prior", metavar="FILE", help="a location prior (`treeclip prior build`): keep taxa with "
                       "at least one occurrence record in it")
    prune.add_argument("--dtype", choices=DTYPE_CHOICES,
                       help="storage of the written matrix (default: the input bank's)")


def add_info_arguments(commands: Any) -> None:
    info = commands.add_parser("info", help="a bank's size, storage and memory; with --reference, how often its "
                               "answers agree with the fp32 bank",
                               description="Print a bank's taxa, storage dtype and memory. With --reference (the "
                               "same taxa in float32) also the top-1 agreement at species and genus rank and the "
                               "mean cosine of the similarity vectors, for query features: the images given with "
                               "--images and --model, else synthetic ones near random taxa.")
    info.add_argument("bank", metavar="BANK", help="the label bank folder")
    info.add_argument("--reference", metavar="BANK", help="the float32 bank to compare answers with")
    info.add_argument("--images", nargs="+", metavar="IMAGES_OR_DIRS", help="query images (with --model)")
    info.add_argument("--model", help="the model that embeds --images")
    info.add_argument("--queries", type=int, default=2000, help="synthetic queries without --images (default 2000)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run_prune(args: argparse.Namespace) -> int:
    from treeclip.model.bank import load_bank, save_bank  # noqa: PLC0415
    from treeclip.predict.filters import read_checklist, split_clades  # noqa: PLC0415
    from treeclip.predict.quantize import prune_columns  # noqa: PLC0415

    bank = load_bank(args.bank)
    keep = prune_columns(bank, min_rank=_rank(args.min_rank), within=split_clades(args.within or []) or None,
                         checklist=read_checklist(args.subset) if args.subset else None,
                         recorded=_recorded(args.prior) if args.prior else None)
    pruned = bank.subset(keep)
    pruned.meta = {**bank.meta, "pruned_from": str(args.bank), "pruned_taxa": len(bank) - len(keep)}
    dtype = {"fp32": "float32", "fp16": "float16"}.get(args.dtype, args.dtype) or str(bank.embeddings.dtype)
    written = load_bank(save_bank(pruned, args.out, dtype=dtype))
    sys.stderr.write(f"treeclip bank prune: kept {len(keep)} of {len(bank)} taxa ({len(bank) - len(keep)} left "
                     f"out by the rules); {bank.nbytes / MB:.1f} MB {bank.embeddings.dtype} → "
                     f"{written.nbytes / MB:.1f} MB {written.embeddings.dtype} in {args.out}\n")
    return 0


def _rank(text: str | None) -> Any:
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.taxonomy import Rank  # noqa: PLC0415

    if text is None:
        return None
    try:
        return Rank.parse(text)
    except ValueError as exc:
        raise UsageError(f"--min-rank: {exc}") from exc


def _recorded(path: str) -> set[tuple[int, str]]:
    """The (rank, name) keys with at least one record in a location prior."""
    from treeclip.predict.prior import LocationPrior  # noqa: PLC0415

    prior = LocationPrior.load(path)
    return {key for counter in prior.counts.values() for key, count in counter.items() if count > 0}


def run_info(args: argparse.Namespace) -> int:
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.model.bank import load_bank  # noqa: PLC0415

    if bool(args.images) != bool(args.model):
        raise UsageError("--images and --model go together (the model embeds the query images)")
    bank = load_bank(args.bank)
    info: dict[str, Any] = {"bank": str(args.bank), "taxa": len(bank), "dim": bank.dim,
                            "dtype": str(bank.embeddings.dtype), "memory_bytes": bank.nbytes,
                            "memory_mb": round(bank.nbytes / MB, 2)}
    if args.reference:
        reference = load_bank(args.reference)
        info["reference_memory_bytes"] = reference.nbytes
        info.update(_agreement(reference, bank, args))
    if args.json:
        print(json.dumps(info))
    else:
        print("\n".join(f"{key}: {value}" for key, value in info.items()))
    return 0


def _agreement(reference: Any, bank: Any, args: argparse.Namespace) -> dict[str, Any]:
    from treeclip.predict.quantize import bank_agreement, synthetic_queries  # noqa: PLC0415

    if args.images:
        queries, logit_scale, source = _image_queries(args.images, args.model)
    else:
        queries, logit_scale, source = synthetic_queries(reference, args.queries), 100.0, "synthetic"
    result = bank_agreement(reference, bank, queries, logit_scale=logit_scale)
    return {"queries": f"{len(queries)} {source}", **{key: round(value, 5) for key, value in result.items()}}


def _image_queries(images: list[str], model: str) -> tuple[Any, float, str]:
    """The L2-normalised features of the readable images, the model's logit scale, and a description."""
    import torch  # noqa: PLC0415

    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.predict.classifier import ImageEmbedder  # noqa: PLC0415
    from treeclip.predict.inputs import expand_inputs  # noqa: PLC0415

    embedder = ImageEmbedder.from_pretrained(model)
    rows = embedder.predict(expand_inputs(images))
    vectors = [row["embedding"] for row in rows if "error" not in row]
    skipped = len(rows) - len(vectors)
    if not vectors:
        raise UsageError(f"--images: none of the {len(rows)} images could be read, so there is nothing to compare")
    for row in rows:
        if "error" in row:
            sys.stderr.write(f"treeclip bank info: {row['path']}: {row['error']} (not used as a query)\n")
    return torch.tensor(vectors), embedder.logit_scale, f"images{f' ({skipped} unreadable)' if skipped else ''}"
