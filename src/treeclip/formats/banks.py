"""The label bank's files: ``txt_emb_species.json`` (names) and ``bank.json`` (metadata); the matrix
``txt_emb_species.npy`` is read by `treeclip.model.bank` with NumPy.

``txt_emb_species.json`` is a list with one ``[[kingdom, phylum, class, order, family, genus, epithet],
common_name]`` per matrix column, the format of the released TreeOfLife banks (null or missing ranks are "").
``bank.json`` is an object: ``{"model", "text_type", "templates", "dtype", "n_taxa", "dim", ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treeclip.taxonomy import RANK_NAMES

BANK_NPY = "txt_emb_species.npy"
BANK_JSON = "txt_emb_species.json"
BANK_META = "bank.json"
N_RANKS = len(RANK_NAMES)
SCHEMA = "a list of [[kingdom, phylum, class, order, family, genus, epithet], common name]"


def parse_names(names: Any) -> tuple[list[tuple[str, ...]], list[str]]:
    """Lineages and common names from the parsed ``txt_emb_species.json``; ValueError naming the bad entry."""
    if not isinstance(names, list):
        raise ValueError(f"{BANK_JSON} must hold {SCHEMA}")
    lineages, commons = [], []
    for index, entry in enumerate(names):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
                and len(entry[0]) <= N_RANKS):
            raise ValueError(f"{BANK_JSON} entry {index} is {str(entry)[:80]}; expected {SCHEMA}")
        ranks, common = entry
        lineages.append(tuple(str(name) if name else "" for name in ranks) + ("",) * (N_RANKS - len(ranks)))
        commons.append(str(common) if common else "")
    return lineages, commons


def read_names(path: str | Path) -> tuple[list[tuple[str, ...]], list[str]]:
    """Lineages and common names of a ``txt_emb_species.json`` file; OSError/ValueError when unusable."""
    return parse_names(json.loads(Path(path).read_text(encoding="utf-8")))


def names_json(lineages: Sequence[Sequence[str]], commons: Sequence[str]) -> str:
    """The ``txt_emb_species.json`` text for these taxa."""
    return json.dumps([[list(lineage), common] for lineage, common in zip(lineages, commons, strict=True)],
                      ensure_ascii=False)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``bank.json`` object of a bank folder ({} when absent); ValueError when it is not an object."""
    path = Path(folder) / BANK_META
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return meta
