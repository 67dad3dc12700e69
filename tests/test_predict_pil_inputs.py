"""A PIL image given to predict or embed gives the same pixels, scores and embedding as the file it was
decoded from (transparency on white, 16-bit scaled, EXIF orientation applied), not ``convert("RGB")``'s."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_predict_fixtures import export_tiny_model, odd_photos, random_taxa, tiny_bank

from treeclip.model import load_model
from treeclip.predict.classifier import ImageEmbedder, TreeOfLifeClassifier
from treeclip.predict.runner import load_pixels

KINDS = ["rgba", "i16", "palette", "la", "rotated"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pil_inputs")
    model_dir = export_tiny_model(root / "model")
    model, _, preprocess, tokenizer = load_model(model_dir)
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer, "model_id": str(model_dir),
            "bank": tiny_bank(model_dir, random_taxa(60), root / "bank"), "photos": odd_photos(root / "photos")}


@pytest.mark.parametrize("kind", KINDS)
def test_runner_pixels_of_a_pil_image_equal_its_files(world: dict, kind: str) -> None:
    path, preprocess = world["photos"][kind], world["preprocess"]
    from_file = load_pixels(path, preprocess, preprocess.draft_size)
    from_pil = load_pixels(Image.open(path), preprocess, preprocess.draft_size)
    assert isinstance(from_file, torch.Tensor) and isinstance(from_pil, torch.Tensor)
    assert torch.equal(from_pil, from_file)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_of_a_pil_image_equals_its_files(world: dict, kind: str) -> None:
    path = world["photos"][kind]
    classifier = TreeOfLifeClassifier(model=world["model"], preprocess=world["preprocess"], bank=world["bank"])
    rows = classifier.predict([path, Image.open(path)], k=3, workers=1)
    from_file, from_pil = rows[:3], rows[3:]
    assert [row["file_name"] for row in rows] == [str(path)] * 3 + ["1"] * 3
    assert [row["species"] for row in from_pil] == [row["species"] for row in from_file]
    assert [row["score"] for row in from_pil] == pytest.approx([row["score"] for row in from_file], abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_of_a_pil_image_equals_its_files(world: dict, kind: str) -> None:
    path = world["photos"][kind]
    embedder = ImageEmbedder(model=world["model"], preprocess=world["preprocess"], tokenizer=world["tokenizer"],
                             model_id=world["model_id"])
    from_file, from_pil = embedder.predict([path, Image.open(path)], workers=1)
    assert from_pil["embedding"] == pytest.approx(from_file["embedding"], abs=1e-5)
    vectors, names, errors = embedder.features([Image.open(path)], raw=True)
    assert names == ["0"] and not errors
    raw_from_file = embedder.features([path], raw=True)[0]
    assert torch.allclose(vectors, raw_from_file, atol=1e-5)
