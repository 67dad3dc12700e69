"""``treeclip bank build``: encode every taxon of a taxonomy into a label bank (released TreeOfLife format)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from treeclip.cli._bank_compact import add_info_arguments, add_prune_arguments, run_info, run_prune

if TYPE_CHECKING:
    from treeclip.formats import Problem

NAME = "bank"
HELP = ("label banks: `treeclip bank build` encodes a taxonomy's names with a model; `prune` writes a smaller "
        "or compact (fp16/int8) bank; `info` reports its memory and agreement with the fp32 bank")
TEXT_TYPES = ("sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")
AUTO_BATCH_SIZES = (64, 128, 256, 512)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bank_command", metavar="SUBCOMMAND", required=True)
    build = commands.add_parser("build", help="encode a taxonomy file into a label bank folder",
                                description="Encode every taxon of a taxonomy file into a label bank folder "
                                "(txt_emb_species.npy/.json + bank.json).")
    build.add_argument("--taxonomy", required=True, metavar="FILE",
                       help="7-rank CSV/TSV, a treeclip catalog (.csv/.parquet) or a bank's txt_emb_species.json")
    build.add_argument("--model", required=True, help="model id: hf-hub:ORG/NAME, a model folder or a checkpoint, "
                       "or an ONNX folder from `treeclip export --format onnx` (its text tower runs on ONNX Runtime)")
    build.add_argument("--out", required=True, metavar="BANK", help="output bank folder")
    build.add_argument("--text-type", default="taxon_com", choices=TEXT_TYPES,
                       help="how each taxon is named in the prompts (default taxon_com, BioCLIP's best)")
    build.add_argument("--templates", default="openai", choices=("openai", "photo"),
                       help="prompt templates averaged per taxon: 'openai' (default), the 80 OpenAI ImageNet "
                            "templates, as BioCLIP's make_txt_embedding.py used for the released TreeOfLife-10M "
                            "and -200M banks; or 'photo', 'a photo of {}.' alone (80x fewer texts). The cost "
                            "(texts, measured rate, estimated time) is printed before encoding starts")
    build.add_argument("--batch-size", type=_batch_size, default="auto",
                       help="texts per model batch; 'auto' (default) times the text tower at 64-512 first and "
                            "uses the fastest")
    build.add_argument("--fp16", action="store_true", help="store the matrix as float16 (half the size)")
    build.add_argument("--resume", action="store_true", help="continue an interrupted build of the same bank")
    build.add_argument("--species-only", action="store_true", help="keep only taxa known to the species")
    build.add_argument("--columns", metavar="ROLE=COLUMN[,...]",
                       help="taxonomy column names no rule recognises, e.g. class=cls,species=epithet")
    build.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_prune_arguments(commands)
    add_info_arguments(commands)


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive number of texts, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    if args.bank_command != "build":
        return run_prune(args) if args.bank_command == "prune" else run_info(args)
    import dataclasses  # noqa: PLC0415

    from treeclip.cli._options import check_hub_model  # noqa: PLC0415
    from treeclip.cli._progress import progress  # noqa: PLC0415
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.formats import parse_column_map  # noqa: PLC0415
    from treeclip.predict.taxa import read_taxa  # noqa: PLC0415
    from treeclip.taxonomy import get_templates  # noqa: PLC0415

    problems: list[Problem] = []
    taxa = read_taxa(args.taxonomy, keep_partial=not args.species_only, columns=parse_column_map(args.columns),
                     problems=problems)
    if not taxa:
        raise UsageError(f"--taxonomy {args.taxonomy}: no usable taxa to encode")
    check_hub_model(args.model)  # all of the above before torch loads
    from treeclip.model.bank import build_bank, measure_build_cost, taxon_texts  # noqa: PLC0415
    from treeclip.predict.runtime import load_for_inference  # noqa: PLC0415

    model, _, tokenizer = load_for_inference(args.model, device=args.device)  # torch, or ONNX Runtime for a folder
    cost = measure_build_cost(model=model, tokenizer=tokenizer, texts=taxon_texts(taxa[:512], args.text_type),
                              templates=get_templates(args.templates), device=args.device,
                              batch_sizes=AUTO_BATCH_SIZES if args.batch_size == "auto" else (args.batch_size,))
    cost = dataclasses.replace(cost, n_taxa=len(taxa))
    sys.stderr.write(f"treeclip bank build: {cost.describe()}\n")
    with progress(total=len(taxa), unit="taxa", label="treeclip bank build") as bar:
        bank = build_bank(model=model, tokenizer=tokenizer, taxa=taxa, out=args.out, model_id=args.model,
                          text_type=args.text_type, templates=args.templates, batch_size=cost.batch_size,
                          fp16=args.fp16, resume=args.resume, device=args.device, progress=bar.update)
    sys.stderr.write(f"treeclip bank build: {len(bank)} taxa, dim {bank.dim} → {args.out}\n")
    return _report_problems(problems, Path(args.out), args.taxonomy)


def _report_problems(problems: list[Problem], out: Path, taxonomy: str) -> int:
    """Count the taxonomy's unusable rows by reason, list them all in OUT/problems.csv; 1 when there are any."""
    from treeclip.atomic import atomic_write  # noqa: PLC0415
    from treeclip.errors import InputError  # noqa: PLC0415
    from treeclip.formats.problems import problems_csv, summary_lines  # noqa: PLC0415

    atomic_write(out / "problems.csv", problems_csv(problems))
    if not problems:
        return 0
    for line in summary_lines(problems):
        sys.stderr.write(line + "\n")
    raise InputError(f"--taxonomy {taxonomy}: {len(problems)} rows without a usable taxon were left out (all in "
                     f"{out / 'problems.csv'}); the bank holds the others")
