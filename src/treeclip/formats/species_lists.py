"""Species lists: plain text (one name per line, ``#`` comments) and BioCLIP's ``seen_in_training.json`` /
``unseen_in_training.json`` (an object whose keys are ``"Genus species"`` or ``"Kingdom-Phylum-Class-Order-
Family-Genus-epithet"`` and whose values list image paths such as ``.../30106074_46572112_eol-full-size-copy.jpg``).
Tables of species are read with `treeclip.formats.tables`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from treeclip.taxonomy import Taxon, parse_binomial, parse_lineage_key

EOL_FILE = re.compile(r"^(\d+)_(\d+)_eol-full-size-copy\.\w+$")


def eol_content_id(path: str) -> str:
    """The EOL content id of an image named ``<content>_<page>_eol-full-size-copy.jpg`` ("" otherwise)."""
    match = EOL_FILE.match(path.replace("\\", "/").rsplit("/", 1)[-1])
    return match.group(1) if match else ""


def key_taxon(key: str) -> Taxon:
    """The taxon of a species-list key: ``Kingdom-...-epithet`` or a binomial; ValueError otherwise."""
    return parse_lineage_key(key) if key.count("-") == 6 and " " not in key.strip() else parse_binomial(key)


def read_name_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each name of a plain list, comments and blank lines skipped."""
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        name = text.split("#", 1)[0].strip()
        if name:
            yield line, name


def read_json_list(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(key, image paths) of a BioCLIP ``*_in_training.json`` (a list of names is accepted too);
    ValueError when it is neither."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        yield from ((item, []) for item in data)
        return
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{species: [image paths]}} or a list of names")
    for key, paths in data.items():
        yield key, [str(p) for p in paths] if isinstance(paths, list) else []
