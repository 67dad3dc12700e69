"""The exported runtimes: `treeclip export --format onnx`, then predict / embed / serve with `--runtime onnx`
(ONNX Runtime) or `--runtime openvino` (OpenVINO, reading the same folder; skipped when it is not installed) give
the torch runtime's answers on a model trained (here, in seconds) to tell its species apart.

Tolerances: fp32 features of either runtime equal torch's within 1e-4 (max abs), so every top-1 answer is
identical and scores agree within 1e-4; the int8 tower keeps mean feature cosine >= 0.98 and top-1 agreement
>= 90%.
"""

from __future__ import annotations

import csv
import gc
import importlib.util
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'treeclip[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install 'treeclip[onnx]'")

import treeclip.model.onnx as onnx_module  # noqa: E402
from treeclip.cli import main  # noqa: E402
from treeclip.model import create_model, export_model, load_model  # noqa: E402
from treeclip.model.bank import build_bank, load_bank  # noqa: E402
from treeclip.model.onnx import IMAGE_INT8_ONNX, IMAGE_ONNX, ONNX_CONFIG, TEXT_ONNX, float_ends, load_onnx  # noqa: E402
from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: E402
from treeclip.taxonomy import Taxon  # noqa: E402

ARCH = "treeclip-test"
COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (210, 190, 40), (160, 40, 160), (40, 170, 170)]
FORMATS = ("csv", "jsonl", "parquet", "dwc")
NO_OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                 reason="needs the openvino extra: pip install 'treeclip[openvino]'")
RUNTIMES = ("onnx", pytest.param("openvino", marks=NO_OPENVINO))  # the runtimes of an exported folder


def _taxa() -> list[Taxon]:
    """Six species in three genera of two families."""
    genera = [("Familiaa", "Genusaa"), ("Familiaa", "Genusab"), ("Familiab", "Genusba")]
    return [Taxon(("Regnuma", "Phyluma", "Classisa", "Ordoa", *genera[i // 2], f"sp{'ab'[i % 2]}"), f"common {i}")
            for i in range(len(COLOURS))]


def _photo(species: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """The species' colour with its stripe (horizontal for even, vertical for odd species), plus noise."""
    pixels = np.full((size, size, 3), COLOURS[species], dtype=np.float32)
    band = slice(size // 3, 2 * size // 3)
    if species % 2:
        pixels[:, band] = 255 - pixels[:, band]
    else:
        pixels[band] = 255 - pixels[band]
    pixels += rng.normal(0, 25, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _train(steps: int = 120, seed: int = 0) -> torch.nn.Module:
    """A tiny CLIP trained to match each species' photos with 'a photo of Genus epithet.'."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, _, preprocess, tokenizer = create_model(ARCH)
    pool = [[preprocess(_photo(s, rng)) for _ in range(10)] for s in range(len(COLOURS))]
    tokens = tokenizer([f"a photo of {taxon.lineage[5]} {taxon.lineage[6]}." for taxon in _taxa()])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs on a busy machine
    try:
        _steps(model, optimizer, pool, tokens, rng, steps)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, pool: list[list[torch.Tensor]],
           tokens: torch.Tensor, rng: np.random.Generator, steps: int) -> None:
    for _ in range(steps):
        labels = rng.integers(0, len(COLOURS), 24)
        pixels = torch.stack([pool[s][rng.integers(0, 10)] for s in labels])
        images = F.normalize(model.encode_image(pixels), dim=-1)
        texts = F.normalize(model.encode_text(tokens), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * images @ texts.T, torch.as_tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    model_dir = export_model(_train(), out_dir=root / "model", model_name=ARCH)
    model, _, _, tokenizer = load_model(model_dir)
    build_bank(model=model, tokenizer=tokenizer, taxa=_taxa(), out=root / "bank", model_id=str(model_dir),
               text_type="sci", templates="photo")
    assert main(["export", str(model_dir), "--format", "onnx", "--out", str(root / "onnx")]) == 0
    rng = np.random.default_rng(1)
    images = root / "images"
    images.mkdir()
    for i in range(24):
        _photo(i % len(COLOURS), rng, size=48 + i).save(images / f"s{i % len(COLOURS)}_{i:02d}.jpg", quality=92)
    return {"root": root, "model": model_dir, "bank": root / "bank", "onnx": root / "onnx", "images": images}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runtimes whose towers were opened (a --runtime the commands ignored would still give right answers)."""
    runtimes: list[str] = []
    for runtime, name in (("onnx", "_ort_opener"), ("openvino", "_openvino_opener")):
        real = getattr(onnx_module, name)
        monkeypatch.setattr(onnx_module, name, lambda *args, real=real, runtime=runtime: (runtimes.append(runtime),
                                                                                           real(*args))[1])
    return runtimes


def _predict(world: dict[str, Path], out: Path, *options: str) -> int:
    return main(["predict", str(world["images"]), "--bank", str(world["bank"]), "--output", str(out), *options])


def _rows(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _score(row: dict, fmt: str) -> float:
    """The score of a row (Darwin Core holds it in the remarks: "...; model M; score S")."""
    return float(row["identificationRemarks"].rsplit("score ", 1)[1] if fmt == "dwc" else row["score"])


def test_export_writes_both_towers_int8_and_the_preprocessing(world: dict[str, Path]) -> None:
    config = json.loads((world["onnx"] / ONNX_CONFIG).read_text())
    assert {IMAGE_ONNX, IMAGE_INT8_ONNX, TEXT_ONNX} <= {p.name for p in world["onnx"].iterdir()}
    torch_model, _, torch_pre, torch_tok = load_model(world["model"])
    onnx_model, onnx_pre, onnx_tok = load_onnx(world["onnx"])
    assert config["preprocess"]["preprocess_cfg"]["mean"] == list(torch_model.visual.preprocess_cfg["mean"])
    assert config["logit_scale"] == pytest.approx(float(torch_model.logit_scale.detach().exp()), rel=1e-6)
    photo = _photo(3, np.random.default_rng(5), size=57)
    assert torch.equal(onnx_pre(photo), torch_pre(photo)) and onnx_pre.draft_size == torch_pre.draft_size
    pixels = torch.stack([torch_pre(_photo(s, np.random.default_rng(s), size=45)) for s in range(5)])  # batch 5: dynamic
    with torch.no_grad():
        assert (onnx_model.encode_image(pixels) - torch_model.encode_image(pixels)).abs().max() < 1e-4
        tokens = torch_tok(["a photo of Genusaa spa.", "x", "a longer caption of a bird in a tree"])
        assert torch.equal(onnx_tok(["x"]), torch_tok(["x"]))
        assert (onnx_model.encode_text(tokens) - torch_model.encode_text(tokens)).abs().max() < 1e-4


@NO_OPENVINO
def test_openvino_features_equal_torch_in_float32(world: dict[str, Path]) -> None:
    """OpenVINO's default on CPUs with bf16 instructions is bf16 (errors ~1e-2): the runtime must ask for f32."""
    torch_model, _, torch_pre, torch_tok = load_model(world["model"])
    model, preprocess, _ = load_onnx(world["onnx"], runtime="openvino")
    pixels = torch.stack([torch_pre(_photo(s, np.random.default_rng(s), size=45)) for s in range(5)])
    tokens = torch_tok(["a photo of Genusaa spa.", "x", "a longer caption of a bird in a tree"])
    with torch.no_grad():
        assert (model.encode_image(pixels) - torch_model.encode_image(pixels)).abs().max() < 1e-4
        assert (model.encode_image(pixels[:2]) - torch_model.encode_image(pixels[:2])).abs().max() < 1e-4
        assert (model.encode_text(tokens) - torch_model.encode_text(tokens)).abs().max() < 1e-4


@NO_OPENVINO
def test_openvino_tower_serves_concurrent_threads(world: dict[str, Path]) -> None:
    """The server calls the model from several threads; a shared infer request would mix or refuse batches."""
    model, preprocess, _ = load_onnx(world["onnx"], runtime="openvino")
    photos = [preprocess(_photo(s % 6, np.random.default_rng(s))) for s in range(8)]
    batches = [torch.stack(photos[:n]) for n in range(1, 9)]
    alone = [model.encode_image(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(model.encode_image, batches * 4))
    assert all(torch.equal(got, alone[i % len(batches)]) for i, got in enumerate(together))


@NO_OPENVINO
def test_openvino_models_share_the_process_core(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OpenVINO model compiles on the process's one Core, which outlives them: a Core per model, freed by
    the garbage collector before its compiled model, crashed the test process later in unrelated torch work."""
    import openvino

    from treeclip.model.onnx import openvino_core

    openvino_core()
    made: list[object] = []
    real = openvino.Core
    monkeypatch.setattr(openvino, "Core", lambda *args: made.append(1) or real(*args))
    for _ in range(2):
        model, _, _ = load_onnx(world["onnx"], runtime="openvino")
        del model
        gc.collect()
    assert made == [], "a Core was made per model"


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_exported_gives_torch_answers_in_every_format(world: dict[str, Path], tmp_path: Path, fmt: str,
                                                              runtime: str, opened: list[str]) -> None:
    torch_out, onnx_out = tmp_path / f"torch.{fmt}", tmp_path / f"{runtime}.{fmt}"
    k = ["--k", "2", "--format", fmt]
    assert _predict(world, torch_out, "--model", str(world["model"]), *k) == 0
    assert _predict(world, onnx_out, "--model", str(world["onnx"]), "--runtime", runtime, *k) == 0
    assert opened == [runtime]
    expected, got = _rows(torch_out, fmt), _rows(onnx_out, fmt)
    assert len(got) == len(expected) == 2 * 24
    varying = {"score", "identificationRemarks"}  # the score, and Darwin Core's remarks naming model and score
    for row, want in zip(got, expected, strict=True):
        assert {key: v for key, v in row.items() if key not in varying} == \
               {key: v for key, v in want.items() if key not in varying}
        assert _score(row, fmt) == pytest.approx(_score(want, fmt), abs=1e-4)


def test_the_trained_model_tells_species_apart_on_both_runtimes(world: dict[str, Path]) -> None:
    """A model that cannot tell its species apart would make top-1 agreement meaningless."""
    for model in (world["model"], world["onnx"]):
        classifier = TreeOfLifeClassifier.from_pretrained(str(model), str(world["bank"]))
        rows = classifier.predict(sorted(str(p) for p in world["images"].iterdir()), k=1)
        truth = [_taxa()[int(Path(row["file_name"]).name[1])].lineage for row in rows]
        right = [(row["genus"], row["species_epithet"]) == lineage[5:] for row, lineage in zip(rows, truth, strict=True)]
        assert sum(right) / len(right) >= 0.8


def test_int8_onnx_agrees_with_fp32(world: dict[str, Path]) -> None:
    fp32, preprocess, _ = load_onnx(world["onnx"])
    int8, _, _ = load_onnx(world["onnx"], precision="int8")
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in sorted(world["images"].iterdir())])
    a, b = F.normalize(fp32.encode_image(pixels), dim=-1), F.normalize(int8.encode_image(pixels), dim=-1)
    assert (a * b).sum(dim=1).mean() >= 0.98
    classifier = TreeOfLifeClassifier.from_pretrained(str(world["onnx"]), str(world["bank"]))
    top_fp32 = classifier.probabilities(a).argmax(dim=1)
    top_int8 = classifier.probabilities(b).argmax(dim=1)
    assert (top_fp32 == top_int8).float().mean() >= 0.9


def test_int8_tower_keeps_its_first_and_last_weight_products_in_float(world: dict[str, Path]) -> None:
    """The int8 export leaves the first and last MatMul/Gemm with a constant weight in float32 (the
    measured agreement gain) and quantises every other one; a name mismatch would silently quantise all."""
    import onnx  # noqa: PLC0415

    fp32 = onnx.load(str(world["onnx"] / IMAGE_ONNX)).graph
    weights = {init.name for init in fp32.initializer}
    products = [n.name for n in fp32.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    assert float_ends(world["onnx"] / IMAGE_ONNX) == [products[0], products[-1]] and len(products) > 4
    int8 = {node.name: node.op_type for node in onnx.load(str(world["onnx"] / IMAGE_INT8_ONNX)).graph.node}
    assert int8[products[0]] == "MatMul" and int8[products[-1]] in ("MatMul", "Gemm")
    quantised = [name for name in products[1:-1] if name not in int8 or int8[name] != "MatMul"]
    assert len(quantised) == len(products) - 2
    assert sum(op == "MatMulInteger" for op in int8.values()) >= len(products) - 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_embed_exported_equals_torch(world: dict[str, Path], tmp_path: Path, runtime: str,
                                     opened: list[str]) -> None:
    for name, model in (("torch", world["model"]), (runtime, world["onnx"])):
        assert main(["embed", str(world["images"]), "--model", str(model), "--runtime", name,
                     "--output", str(tmp_path / f"{name}.parquet")]) == 0
    assert opened == [runtime]
    a, b = (pq.read_table(tmp_path / f"{name}.parquet").to_pylist() for name in ("torch", runtime))
    assert [row["path"] for row in a] == [row["path"] for row in b]
    assert np.abs(np.array([r["embedding"] for r in a]) - np.array([r["embedding"] for r in b])).max() < 1e-4


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_runs_exported_with_custom_labels(world: dict[str, Path], runtime: str) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from treeclip.serve.app import create_app  # noqa: PLC0415

    photo = (world["images"] / "s2_02.jpg").read_bytes()
    answers = []
    for model, name in ((world["model"], "torch"), (world["onnx"], runtime)):
        classifier = TreeOfLifeClassifier.from_pretrained(str(model), str(world["bank"]), runtime=name)
        assert name == "torch" or classifier.model.runtime == name
        with TestClient(create_app(classifier=classifier), base_url="http://localhost") as client:
            tol = client.post("/v1/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))], data={"k": "3"})
            labels = client.post("/v1/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))],
                                 data={"labels": "Genusab spa,Genusaa spb,a red fox"})
        assert tol.status_code == 200 and labels.status_code == 200, (tol.text, labels.text)
        answers.append([tol.json()["results"][0]["rows"], labels.json()["results"][0]["rows"]])
    for got, want in zip(answers[1], answers[0], strict=True):  # same top-1, same score per answer
        assert _answer(got[0]) == _answer(want[0])
        assert {_answer(row): row["score"] for row in got} == pytest.approx({_answer(row): row["score"] for row in want},
                                                                           abs=1e-4)


def _answer(row: dict) -> str:
    return row.get("species") or row["classification"]


def test_runtime_mismatches_exit_2_with_the_fix(world: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _predict(world, tmp_path / "a.csv", "--model", str(world["model"]), "--runtime", "onnx") == 2
    assert "treeclip export MODEL --format onnx" in capsys.readouterr().err
    assert _predict(world, tmp_path / "b.csv", "--model", str(world["onnx"]), "--runtime", "torch") == 2
    assert "--runtime onnx" in capsys.readouterr().err
    assert _predict(world, tmp_path / "c.csv", "--model", str(world["model"]), "--runtime", "openvino") == 2
    assert "needs an ONNX model folder" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("a.csv", "b.csv", "c.csv"))


def test_openvino_missing_is_one_line_and_exit_2(world: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # importlib.util.find_spec now answers None
    for command in (["predict", str(world["images"]), "--output", str(tmp_path / "a.csv")],
                    ["embed", str(world["images"]), "--output", str(tmp_path / "a.parquet")], ["serve"]):
        assert main([*command, "--model", str(world["onnx"]), "--runtime", "openvino"]) == 2
        assert capsys.readouterr().err.strip().endswith("pip install 'treeclip[openvino]'")
    assert list(tmp_path.iterdir()) == []


@NO_OPENVINO
def test_openvino_runs_on_the_cpu_only(world: dict[str, Path]) -> None:
    from treeclip.errors import UsageError  # noqa: PLC0415

    with pytest.raises(UsageError, match="--device cuda is not available with the openvino runtime"):
        load_onnx(world["onnx"], runtime="openvino", device="cuda")


def test_openvino_refuses_int8_and_names_the_runtime_that_has_it(world: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """OpenVINO ran the int8 file slower than its fp32 (benchmarks/RESULTS.md): refused in one line, exit 2."""
    assert _predict(world, tmp_path / "a.csv", "--model", str(world["onnx"]), "--runtime", "openvino",
                    "--precision", "int8") == 2
    err = capsys.readouterr().err.strip()
    assert "--precision int8 is not available with the openvino runtime" in err and "--runtime onnx" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exported_model_pickles_for_ray_workers(world: dict[str, Path], runtime: str) -> None:
    import pickle  # noqa: PLC0415

    precision = "int8" if runtime == "onnx" else "fp32"
    model, preprocess, _ = load_onnx(world["onnx"], precision=precision, runtime=runtime)
    copy = pickle.loads(pickle.dumps(model))
    pixels = preprocess(_photo(1, np.random.default_rng(0)))[None]
    assert copy.precision == precision and copy.runtime == runtime
    assert torch.equal(copy.encode_image(pixels), model.encode_image(pixels))
    assert math.isclose(float(copy.logit_scale), float(model.logit_scale))


def test_int8_bank_with_the_onnx_int8_tower_keeps_the_answers(world: dict[str, Path], tmp_path: Path) -> None:
    """The most compact CPU setup (int8 tower, int8 bank) still names the trained model's species."""
    assert main(["bank", "prune", str(world["bank"]), "--out", str(tmp_path / "int8"), "--dtype", "int8"]) == 0
    fp32_out, int8_out = tmp_path / "fp32.csv", tmp_path / "int8.csv"
    assert _predict(world, fp32_out, "--model", str(world["model"]), "--k", "1") == 0
    assert main(["predict", str(world["images"]), "--bank", str(tmp_path / "int8"), "--output", str(int8_out),
                 "--model", str(world["onnx"]), "--precision", "int8", "--k", "1"]) == 0
    expected, got = _rows(fp32_out, "csv"), _rows(int8_out, "csv")
    same = [a["species"] == b["species"] for a, b in zip(got, expected, strict=True)]
    assert len(same) == 24 and sum(same) / len(same) >= 0.9


def test_bank_build_from_the_onnx_folder_equals_torch(world: dict[str, Path], tmp_path: Path) -> None:
    """`treeclip bank build --model ONNX_DIR` encodes with the exported text tower on ONNX Runtime: the same
    vectors as the torch bank (within 1e-4) and the same answers, and the bank records the ONNX folder."""
    taxonomy = tmp_path / "taxa.csv"
    rows = ["kingdom,phylum,class,order,family,genus,species,common_name"]
    taxonomy.write_text("\n".join(rows + [",".join([*t.lineage, t.common]) for t in _taxa()]) + "\n", encoding="utf-8")
    assert main(["bank", "build", "--taxonomy", str(taxonomy), "--model", str(world["onnx"]), "--out",
                 str(tmp_path / "bank"), "--text-type", "sci", "--templates", "photo", "--batch-size", "4"]) == 0
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["model"] == str(world["onnx"])
    reference, built = load_bank(world["bank"]), load_bank(tmp_path / "bank")
    assert built.lineages == reference.lineages
    assert (built.matrix() - reference.matrix()).abs().max() < 1e-4
    out = tmp_path / "onnx-bank.csv"
    assert main(["predict", str(world["images"]), "--bank", str(tmp_path / "bank"), "--output", str(out),
                 "--model", str(world["onnx"]), "--k", "1"]) == 0
    assert _predict(world, tmp_path / "torch.csv", "--model", str(world["model"]), "--k", "1") == 0
    assert [r["species"] for r in _rows(out, "csv")] == [r["species"] for r in _rows(tmp_path / "torch.csv", "csv")]


def test_bank_info_measures_agreement_on_your_images(world: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bank", "prune", str(world["bank"]), "--out", str(tmp_path / "fp16"), "--dtype", "fp16"]) == 0
    capsys.readouterr()
    assert main(["bank", "info", str(tmp_path / "fp16"), "--reference", str(world["bank"]), "--images",
                 str(world["images"]), "--model", str(world["onnx"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["queries"] == "24 images" and info["dtype"] == "float16"
    assert info["top1_species"] == 1.0 and info["score_cosine"] > 0.9999
