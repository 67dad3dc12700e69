"""`treeclip bank build` cost and throughput: tokenising once per name and template, the cost shown before
encoding starts, and a model id in bank.json that resolves from any directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import pytest
import torch
from test_predict_fixtures import export_tiny_model, random_taxa, write_taxonomy_csv

from treeclip.cli import main
from treeclip.model import load_model
from treeclip.model.bank import TemplateTokens, encode_class_texts, measure_build_cost
from treeclip.taxonomy import get_templates

TRICKY = ["Animalia Chordata Aves Passeriformes Corvidae Corvus corax", "Corvus sp.", "Rattus 2",
          "Bombus × fernaldae", "Quercus robur (L.)", "  spaced   out ", "d'Orbigny's gull", "x " * 60, "",
          "Ça va", "Danaus plexippus with common name Monarch", "a-b", "Genus epithet."]


@pytest.mark.parametrize("templates", ["openai", "photo"])
@pytest.mark.parametrize("context", [77, 16])
def test_spliced_tokens_equal_the_tokenizers(templates: str, context: int) -> None:
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
    chosen = [*get_templates(templates), "{}s of the world", "the {}", "{}"]
    spliced = TemplateTokens(tokenizer, chosen)(TRICKY)
    whole = tokenizer([template.format(name) for name in TRICKY for template in chosen])
    assert torch.equal(spliced, whole)


class CountingTokenizer(open_clip.tokenizer.SimpleTokenizer):
    """Counts the characters it tokenises (through `encode`, which `__call__` also uses)."""

    characters = 0

    def encode(self, text: str) -> list[int]:
        CountingTokenizer.characters += len(text)
        return super().encode(text)


def test_each_name_and_template_is_tokenised_once(tmp_path: Path) -> None:
    model_dir = export_tiny_model(tmp_path / "model")
    model, _, _, _ = load_model(model_dir)
    tokenizer = CountingTokenizer(context_length=16)
    names = [f"Genus{i} species{i}" for i in range(20)]
    templates = get_templates("openai")
    CountingTokenizer.characters = 0
    spliced = encode_class_texts(model, tokenizer, names, templates, batch_size=160)
    once = sum(map(len, names)) + sum(len(t) - 2 for t in templates)
    assert CountingTokenizer.characters <= once  # whole texts would be ~80x the names' characters
    plain = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    whole = encode_class_texts(model, lambda texts: plain(texts), names, templates, batch_size=160)
    assert torch.allclose(torch.from_numpy(spliced), torch.from_numpy(whole), atol=1e-6)


def test_build_cost_picks_the_fastest_batch(tmp_path: Path) -> None:
    model, _, _, tokenizer = load_model(export_tiny_model(tmp_path / "model"))
    cost = measure_build_cost(model=model, tokenizer=tokenizer, texts=[f"name {i}" for i in range(10)],
                              templates=get_templates("openai"), batch_sizes=(8, 32))
    assert cost.batch_size in (8, 32) and cost.texts_per_second > 0 and cost.n_texts == 800
    assert "10 taxa × 80 templates = 800 texts" in cost.describe() and "about" in cost.describe()


def test_bank_build_shows_the_cost_first_and_records_a_resolvable_model(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    export_tiny_model(tmp_path / "model")
    taxa = random_taxa(12)
    write_taxonomy_csv(taxa, tmp_path / "taxa.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["bank", "build", "--taxonomy", "taxa.csv", "--model", "model", "--out", "bank",
                 "--text-type", "sci"]) == 0
    err = capsys.readouterr().err
    assert f"{len(taxa)} taxa × 80 templates = {len(taxa) * 80:,} texts" in err and "texts/s at batch" in err
    assert err.index("templates =") < err.index(f"{len(taxa)} taxa, dim")  # before the work, not after
    assert "\r" not in err  # stderr is not a terminal here: plain lines, no redrawn bar
    assert f"treeclip bank build: {len(taxa)}/{len(taxa)} taxa (100%)\n" in err
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["model"] == str(tmp_path / "model") and os.path.isabs(meta["model"])
    with pytest.raises(SystemExit):
        main(["bank", "build", "--help"])
    assert "released TreeOfLife-10M" in " ".join(capsys.readouterr().out.split())
