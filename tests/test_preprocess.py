"""Each model family's preprocessing, and parity with the reference package (pybioclip) on non-square images.

The parity test puts a tiny random model and bank in a Hugging Face cache laid out exactly as a download of
``hf-hub:imageomics/bioclip-2`` and its TreeOfLife-200M bank would leave it, then runs, offline, pybioclip's
``TreeOfLifeClassifier`` and ``treeclip predict``/``treeclip embed`` on the same generated photos (wide, tall,
a large JPEG). pybioclip wraps its model in ``torch.compile``; the reference run replaces that by the plain
model (compiling a random tiny model on CPU would only add minutes of compiler time, not change the answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from treeclip.model import create_model, export_model
from treeclip.model.preprocess import BIOCLIP, OPEN_CLIP, family_of

REVISION = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TINY_224 = {  # pybioclip squashes to a fixed 224 px, so the tiny model takes 224 px input
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
GENERA, SPECIES_PER_GENUS = 6, 5


def _snapshot(cache: Path, kind: str, repo: str) -> Path:
    """A huggingface_hub cache snapshot folder for `repo` at REVISION, with refs/main pointing to it."""
    root = cache / f"{kind}--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _photos(folder: Path) -> list[Path]:
    """Non-square photos with coarse structure and fine texture: a large wide JPEG (big enough for DCT draft
    decoding, which would change its pixels), a tall PNG and a small wide JPEG."""
    rng = np.random.default_rng(3)
    specs = [("wide_large.jpg", (2000, 1000)), ("tall.png", (300, 520)), ("wide_small.jpg", (400, 160))]
    paths = []
    for name, size in specs:
        coarse = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        texture = rng.integers(-40, 41, smooth.shape, dtype=np.int16)  # fine detail, as in real photos
        image = Image.fromarray(np.clip(smooth + texture, 0, 255).astype(np.uint8))
        image.save(folder / name, quality=92) if name.endswith(".jpg") else image.save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def released_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A HF cache holding a tiny 'imageomics/bioclip-2' (released config layout: mean/std only) and bank."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    torch.manual_seed(0)
    model_dir = _snapshot(cache, "models", "imageomics/bioclip-2")
    net = open_clip.CLIP(**TINY_224)
    net.logit_scale.data.fill_(np.log(30.0))  # sharper than the initial 1/0.07 so ranks differ in score
    export_model(net, out_dir=model_dir, model_cfg=TINY_224, preprocess_cfg={"mean": MEAN, "std": STD})
    config = json.loads((model_dir / "open_clip_config.json").read_text())
    assert set(config["preprocess_cfg"]) == {"mean", "std"}, "must look like the released config"
    bank_dir = _snapshot(cache, "datasets", "imageomics/TreeOfLife-200M") / "embeddings"
    bank_dir.mkdir()
    rng = np.random.default_rng(1)
    n = GENERA * SPECIES_PER_GENUS
    matrix = rng.standard_normal((TINY_224["embed_dim"], n)).astype(np.float32)
    np.save(bank_dir / "txt_emb_species.npy", matrix / np.linalg.norm(matrix, axis=0, keepdims=True))
    names = [[["Animalia", "Chordata", "Aves", "Passeriformes", f"Family{g % 2}", f"Genus{g}", f"ep{s}"],
              f"bird {g}.{s}"] for g in range(GENERA) for s in range(SPECIES_PER_GENUS)]
    (bank_dir / "txt_emb_species.json").write_text(json.dumps(names))
    photos = root / "photos"
    photos.mkdir()
    _photos(photos)
    return {"cache": cache, "photos": photos, "root": root}


def _offline_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


REFERENCE = """
import json, sys, torch
torch.compile = lambda model, *a, **k: model   # see the test module docstring
from bioclip.predict import TreeOfLifeClassifier, Rank
paths = sys.argv[1:]
clf = TreeOfLifeClassifier(model_str="hf-hub:imageomics/bioclip-2")
out = {"features": {p: clf.create_image_features_for_image(p, normalize=True).tolist() for p in paths}}
for rank in ("SPECIES", "GENUS"):
    out[rank.lower()] = clf.predict(paths, Rank[rank], k=3)
print(json.dumps(out))
"""


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bioclip_hub_ids_are_the_bioclip_family() -> None:
    assert family_of("hf-hub:imageomics/bioclip") == BIOCLIP
    assert family_of("hf-hub:Imageomics/BioCLIP-2") == BIOCLIP
    assert family_of("hf-hub:imageomics/bioclip-vit-b-16-inat-only") == OPEN_CLIP
    assert family_of("ViT-B-16") == OPEN_CLIP


def test_treeclip_matches_pybioclip_on_non_square_photos(released_layout: dict[str, Path], tmp_path: Path) -> None:
    """Same features and same species/genus answers and scores (relative difference < 1e-3) as the
    reference package, through the hf-hub: id a user types."""
    pytest.importorskip("bioclip", reason="the reference package (pybioclip) is not installed")
    env = _offline_env(released_layout["cache"])
    paths = sorted(str(p) for p in released_layout["photos"].iterdir())
    reference = json.loads(_run([sys.executable, "-c", REFERENCE, *paths], env))
    model = "hf-hub:imageomics/bioclip-2"
    ours: dict[str, list[dict]] = {}
    for rank in ("species", "genus"):
        out = tmp_path / f"{rank}.jsonl"
        _run([sys.executable, "-m", "treeclip", "predict", *paths, "--model", model, "--rank", rank, "--k", "3",
              "--format", "jsonl", "--output", str(out)], env)
        ours[rank] = [json.loads(line) for line in out.read_text().splitlines()]
    embedded = tmp_path / "emb.parquet"
    _run([sys.executable, "-m", "treeclip", "embed", *paths, "--model", model, "--output", str(embedded)], env)
    features = {row["path"]: np.asarray(row["embedding"]) for row in pq.read_table(embedded).to_pylist()}
    cosines = {path: float(features[path] @ np.asarray(reference["features"][path])) for path in paths}
    worst: dict[str, float] = {}
    for rank in ("species", "genus"):
        for path in paths:
            theirs = [row for row in reference[rank] if row["file_name"] == path]
            mine = [row for row in ours[rank] if row["file_name"] == path]
            assert [row[rank] for row in mine] == [row[rank] for row in theirs], f"{rank} answers differ for {path}"
            for a, b in zip(mine, theirs, strict=True):
                worst[rank] = max(worst.get(rank, 0.0), abs(a["score"] - b["score"]) / b["score"])
    print(f"parity with pybioclip: min feature cosine {min(cosines.values()):.8f}, max relative score "
          f"difference species {worst['species']:.2e}, genus {worst['genus']:.2e}")
    assert min(cosines.values()) > 1 - 1e-6, f"image features differ from pybioclip's: {cosines}"
    assert max(worst.values()) < 1e-3, worst


def test_reference_family_is_not_open_clips_crop(released_layout: dict[str, Path]) -> None:
    """The BioCLIP family squashes the whole photo: the left and right thirds of a wide photo change the
    pixels it feeds the model (open_clip's default crop would cut them off)."""
    from treeclip.model.preprocess import inference_preprocess

    cfg = {"size": 224, "mean": MEAN, "std": STD, "resize_mode": "shortest"}
    crop = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    bioclip = inference_preprocess("hf-hub:imageomics/bioclip", cfg, crop)
    other = inference_preprocess("local-dir:/somewhere", cfg, crop)
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, :100] = 255  # a white left third
    image = Image.fromarray(wide)
    assert bioclip.draft_size is None and other.draft_size == 448
    assert float(bioclip(image)[:, :, :50].mean()) > 1.0  # the white third is in the squashed image
    assert float(other(image)[:, :, :50].mean()) < 0.0  # and cropped away by open_clip's default


def test_exported_treeclip_model_keeps_the_shard_geometry(tmp_path: Path) -> None:
    """A model trained on squashed shards is exported with resize_mode squash and run squashed."""
    from treeclip.train.export import record_shard_geometry

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"parameters": {"resize": "squash", "image_size": 64}}))
    model, _, _, _ = create_model("treeclip-test")
    assert record_shard_geometry(model, shards) == "squash"
    export_model(model, out_dir=tmp_path / "model", model_name="treeclip-test")
    config = json.loads((tmp_path / "model" / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["resize_mode"] == "squash"
    _, _, preprocess, _ = create_model(str(tmp_path / "model"))
    assert preprocess.resize_mode == "squash"
    wide = Image.fromarray(np.full((10, 40, 3), 200, dtype=np.uint8))
    assert tuple(preprocess(wide).shape) == (3, 32, 32)
    (shards / "manifest.json").write_text(json.dumps({"parameters": {"resize": "shorter"}}))
    assert record_shard_geometry(model, shards) == "shortest"
    assert record_shard_geometry(model, tmp_path / "no-manifest") is None
