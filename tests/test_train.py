"""Training: config, optimizer, schedule, accumulation, objectives, checkpoints, export, torchrun, kill+resume."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image

import treeclip.model
from _shards import TINY, species, write_shards
from treeclip.cli import main
from treeclip.data.loader import make_loader
from treeclip.errors import UsageError
from treeclip.model import create_model, export_model
from treeclip.model.bank import encode_class_texts
from treeclip.model.factory import ModelRef, parse_model_id
from treeclip.taxonomy import class_string
from treeclip.train import validate as validate_module
from treeclip.train import loop
from treeclip.train.checkpoint import list_checkpoints, load_checkpoint
from treeclip.train.config import load_config, loader_workers, micro_batch_size, preset_names, resolved_precision
from treeclip.train.metrics import read_metrics
from treeclip.train.objectives import ClassIndex, clip_loss
from treeclip.train.optim import lr_at, param_groups
from treeclip.train.shards import shard_taxa
from treeclip.train import throughput
from treeclip.train.throughput import Throughput, count_flops_per_sample, peak_tflops



@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def tiny_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> loop.TrainResult:
    config = load_config(preset="tiny", overrides=TINY)
    return loop.train(config, data_dir=shards, out_dir=tmp_path_factory.mktemp("run"))


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ---------------------------------------------------------------- config


def test_presets_state_bioclip_recipe() -> None:
    config = load_config(preset="bioclip-vit-b-16")
    assert (config.model.name, config.model.pretrained, config.model.grad_checkpointing) == ("ViT-B-16", "openai", True)
    assert (config.train.batch_size, config.train.epochs, config.train.precision) == (32768, 100, "fp16")
    assert (config.optim.lr, config.optim.betas, config.optim.eps) == (1e-4, [0.9, 0.98], 1e-6)
    assert (config.optim.weight_decay, config.optim.warmup_steps, config.optim.schedule) == (0.2, 1000, "cosine")
    assert config.text_types == ["sci", "com", "taxon", "sci_com", "taxon_com"]


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3.0e-4\ndata:\n  text_mix: batch\n")
    config = load_config(path=path, overrides=["train.batch_size=64", "text_type=com", "text_weights=1,2,3,4,5"])
    assert (config.optim.lr, config.data.text_mix, config.train.batch_size) == (3e-4, "batch", 64)
    assert config.text_types == ["com"]
    assert config.data.text_weights == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert config.optim.warmup_steps == 1000  # untouched default


@pytest.mark.parametrize(("override", "named"), [
    ("optim.lrr=1", "optim.lrr"), ("optim.lr=abc", "optim.lr"), ("train.batch_size=1.5", "train.batch_size"),
    ("nosuch=1", "nosuch"), ("train.objective=mse", "train.objective"), ("data.text_type=latin", "latin"),
    ("every_steps=3", "every_steps"),  # in three sections: ambiguous
    ("train.patch_dropout=1.0", "train.patch_dropout"), ("train.precision=fp8", "train.precision"),
])
def test_bad_overrides_name_the_key(override: str, named: str) -> None:
    with pytest.raises(UsageError, match=named):
        load_config(preset="tiny", overrides=[override])


def test_batch_must_divide_by_world_size_times_accumulation() -> None:
    config = load_config(preset="tiny", overrides=["train.batch_size=32", "train.accum_steps=4"])
    assert micro_batch_size(config, 1) == 8 and micro_batch_size(config, 2) == 4
    with pytest.raises(UsageError, match="train.batch_size: 32 is not divisible by world size 3 x"):
        micro_batch_size(config, 3)


def test_cli_config_errors_exit_2(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main([*base, "--data", str(shards), "optim.nope=1"]) == 2
    assert main([*base, "--data", str(shards), "train.batch_size=15", "accum_steps=2"]) == 2
    assert main([*base, "--data", str(tmp_path)]) == 2  # no train/*.tar
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("treeclip train: error:") for line in errors)
    assert "optim.nope" in errors[0] and "train.batch_size" in errors[1] and str(tmp_path / "train") in errors[2]


# ---------------------------------------------------------------- optimizer and schedule


def test_no_weight_decay_on_gains_biases_and_logit_scale() -> None:
    model = create_model("treeclip-test")[0]
    decay, plain = param_groups(model.named_parameters(), 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"logit_scale", "visual.ln_post.weight", "visual.ln_post.bias"} <= plain_names
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.2
    assert "visual.conv1.weight" in {names[id(p)] for p in decay["params"]}


def test_warmup_then_cosine_to_zero() -> None:
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=10, total_steps=110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


# ---------------------------------------------------------------- one step


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_gives_the_large_batch_gradient() -> None:
    torch.manual_seed(0)
    model, *_ = create_model("treeclip-test")
    module = loop.TrainModule(model)
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(8, 3, 32, 32, generator=generator),
             "text": torch.randint(1, 1000, (8, 16), generator=generator)}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    autocast = loop._autocast("fp32", loop.init_distributed("cpu"))
    kwargs = {"loss_fn": clip_loss(0, 1), "device": torch.device("cpu"), "autocast": autocast, "scaler": scaler}
    whole = loop.clip_step(module, [batch], **kwargs)
    reference = _grads(module)
    module.zero_grad()
    parts = [{k: v[i:i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]
    accumulated = loop.clip_step(module, parts, **kwargs)
    assert float(accumulated) == pytest.approx(float(whole), abs=1e-5)
    grads = _grads(module)
    assert reference.keys() == grads.keys() and "clip.logit_scale" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], atol=1e-5, rtol=1e-4, msg=name)


def test_loop_normalises_the_loaders_uint8_pixels_as_the_loader_would(shards: Path) -> None:
    """The training loader hands over uint8 pixels and the loop normalises them where the model is: the model's
    input equals the loader's own float batch bit for bit (a swapped or wrong mean/std, or pixels left
    unnormalised, would not); float batches pass as they are; uint8 without a known mean/std is an error."""
    _, preprocess_train, preprocess_val, tokenizer = create_model("treeclip-test")
    pixel_norm = loop.deferred_normalization(preprocess_train)
    assert pixel_norm == (tuple(preprocess_train.transforms[-1].mean), tuple(preprocess_train.transforms[-1].std))
    assert loop.deferred_normalization(lambda image: image) is None
    cpu = torch.device("cpu")

    def first_images(**options) -> torch.Tensor:
        torch.manual_seed(0)
        return next(iter(make_loader(shards / "train", transform=preprocess_train, tokenizer=tokenizer,
                                     batch_size=4, shuffle_buffer=0, **options)))["image"]

    pixels, floats = first_images(normalize=False), first_images()
    assert pixels.dtype == torch.uint8 and floats.dtype == torch.float32
    assert torch.equal(loop.model_images(pixels, device=cpu, pixel_norm=pixel_norm), floats)
    assert torch.equal(loop.model_images(floats, device=cpu, pixel_norm=pixel_norm), floats)
    as_tensors = tuple(torch.tensor(values) for values in pixel_norm)  # what the step function passes
    assert torch.equal(loop.model_images(pixels, device=cpu, pixel_norm=as_tensors), floats)
    channels_last = loop.model_images(pixels, device=cpu, pixel_norm=pixel_norm, memory_format=torch.channels_last)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, floats)
    with pytest.raises(ValueError, match="mean and std"):
        loop.model_images(pixels, device=cpu)


def test_uint8_batches_and_tensor_crops_train_like_the_float_pil_path(shards: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Six augmented steps three ways from the same seed: uint8 batches normalised by the loop give exactly the
    losses of float batches from the loader; crops on uint8 tensors (within 2 levels of PIL's) stay within
    0.1 % of the losses of PIL crops (the loader before both changes)."""
    from treeclip.data import loader as loader_module

    config = load_config(preset="tiny", overrides=[*TINY, "data.augment=true", "eval.every_steps=0",
                                                   "train.max_steps=6", "checkpoint.every_steps=6"])

    def losses(name: str) -> list[float]:
        return [r["loss"] for r in loop.train(config, data_dir=shards, out_dir=tmp_path / name).history]

    now = losses("now")
    with monkeypatch.context() as patch:
        patch.setattr(loop, "deferred_normalization", lambda transform: None)  # the loader normalises
        float_batches = losses("float")
        patch.setattr(loader_module, "tensor_steps", lambda steps: None)  # and crops on the PIL image
        before = losses("before")
    assert len(now) == 6 and now == float_batches
    assert now != before and now == pytest.approx(before, rel=1e-3)  # 2e-5 measured


def test_class_index_per_rank_ignores_missing_ranks() -> None:
    lineages = [("A", "B", "C", "D", "E", "G", "s"), ("A", "B", "C", "D", "E", "G", "t"),
                ("A", "X", "", "", "", "", "")]
    index = ClassIndex(lineages, ranks=(1, 6))
    assert index.sizes == [2, 2]
    phylum, species = index.labels([lineages[2], lineages[1]], torch.device("cpu"))
    assert phylum.tolist() == [1, 0] and species.tolist() == [-100, 1]


# ---------------------------------------------------------------- whole runs


def test_loss_falls_and_run_folder_is_complete(tiny_run: loop.TrainResult) -> None:
    assert tiny_run.steps == 12
    losses = [r["loss"] for r in tiny_run.history]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    records = read_metrics(tiny_run.run_dir)
    assert [r["step"] for r in records] == list(range(1, 13))
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated] == [6, 12] and 0.0 <= validated[-1]["zero_shot_top1"] <= 1.0
    stored = yaml.safe_load((tiny_run.run_dir / "config.yaml").read_text())
    assert stored["model"]["name"] == "treeclip-test" and stored["train"]["batch_size"] == 16
    state = load_checkpoint(tiny_run.last_checkpoint)
    assert state["step"] == 12 and state["config"]["optim"] == stored["optim"]
    assert [p.name for p in list_checkpoints(tiny_run.run_dir)] == ["step-00000006.pt", "step-00000012.pt"]
    assert 0.0 <= state["model"]["logit_scale"].item() <= math.log(100)


def test_existing_run_needs_resume(shards: Path, tiny_run: loop.TrainResult) -> None:
    with pytest.raises(UsageError, match="--resume latest"):
        loop.train(load_config(preset="tiny", overrides=TINY), data_dir=shards, out_dir=tiny_run.run_dir)


@pytest.mark.parametrize("objective", ["ce", "hier_ce"])
def test_cross_entropy_objectives_learn(objective: str, shards: Path, tmp_path: Path) -> None:
    config = load_config(preset="tiny", overrides=[*TINY, f"train.objective={objective}", "eval.every_steps=0",
                                                   "optim.lr=3e-3", "optim.warmup_steps=1", "train.max_steps=6"])
    result = loop.train(config, data_dir=shards, out_dir=tmp_path)
    losses = [r["loss"] for r in result.history]
    assert result.steps == 6 and losses[-1] < 0.6 * losses[0]
    heads = load_checkpoint(result.last_checkpoint)["heads"]
    sizes = [heads[f"heads.{i}.weight"].shape[0] for i in range(len(heads) // 2)]
    assert sizes == ([6] if objective == "ce" else [1, 1, 1, 1, 2, 2, 6])


@pytest.mark.parametrize("bad_step", [4, 5])  # 5: the step before a checkpoint step, whose loss is read late
def test_nan_loss_stops_naming_step_and_checkpoint(shards: Path, tmp_path: Path, bad_step: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop._step_function

    def poisoned(*args):  # noqa: ANN002, ANN202 - wraps the real step function
        step_fn, calls = real(*args), []

        def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            loss = step_fn(*args, **kwargs)
            return loss * float("nan") if len(calls) == bad_step else loss
        return step

    monkeypatch.setattr(loop, "_step_function", poisoned)
    config = load_config(preset="tiny", overrides=[*TINY, "eval.every_steps=0", "checkpoint.every_steps=3"])
    expected = rf"loss is nan at step {bad_step}; last good checkpoint: .*step-00000003\.pt"
    with pytest.raises(loop.TrainingDiverged, match=expected):
        loop.train(config, data_dir=shards, out_dir=tmp_path)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000003.pt"]  # nothing saved after it


def test_export_loads_in_plain_open_clip_with_identical_embeddings(tiny_run: loop.TrainResult, tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert main(["export", str(tmp_path / "no-run"), "--out", str(out)]) == 2
    assert main(["export", str(tiny_run.run_dir), "--out", str(out)]) == 0
    ours, _, _, tokenizer = create_model(tiny_run.last_checkpoint)
    plain, _ = open_clip.create_model_from_pretrained(f"local-dir:{out}")
    ours.eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = tokenizer(["a photo of Ptilotula alba.", "a photo of Rosa rubra.", "a photo of a crow.", "x"])
    with torch.no_grad():
        assert (ours.encode_image(images) - plain.encode_image(images)).abs().max() <= 1e-5
        assert (ours.encode_text(texts) - plain.encode_text(texts)).abs().max() <= 1e-5


# ---------------------------------------------------------------- several processes, SIGKILL


def _train_command(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "treeclip", "train", "--data", str(shards), "--out", str(out), "--no-progress", *extra]


def test_two_processes_follow_the_one_process_trajectory(shards: Path, tiny_run: loop.TrainResult,
                                                         tmp_path: Path) -> None:
    """Same global batch (16 = 2 x 8): one shard, no shuffling, so rank r reads samples r, r+2, ... and the
    two ranks' micro-batches together hold exactly the one-process batch; the losses must agree."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *_train_command(shards, tmp_path / "two", "--preset", "tiny", *TINY)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in tiny_run.history] == list(range(1, 13))
    for ours, theirs in zip(two, tiny_run.history):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-5), ours["step"]
    assert two[-1]["val_loss"] == pytest.approx(tiny_run.history[-1]["val_loss"], rel=1e-4)
    assert two[-1]["loss"] < 0.7 * two[0]["loss"]


def test_sigkill_then_resume_latest_ends_at_the_same_step(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [*TINY, "train.epochs=6", "checkpoint.every_steps=4", "eval.every_steps=0"]  # 36 steps
    process = subprocess.Popen([sys.executable, *_train_command(shards, run, "--preset", "tiny", *overrides)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not any(int(p.stem.split("-")[1]) >= 8 for p in list_checkpoints(run)):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    interrupted = list_checkpoints(run)
    assert 8 <= load_checkpoint(interrupted[-1])["step"] < 36
    for path in interrupted:  # every checkpoint left behind is complete
        load_checkpoint(path)

    resumed = subprocess.run([sys.executable, *_train_command(shards, run, "--resume", "latest")],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(list_checkpoints(run)[-1])
    assert final["step"] == 36 and final["config"]["train"]["epochs"] == 6
    assert read_metrics(run)[-1]["step"] == 36
    model = create_model(list_checkpoints(run)[-1])[0]  # the checkpoint is a model id
    assert sum(p.numel() for p in model.parameters()) > 0


# ---------------------------------------------------------------- schedule length and resume equivalence


RESUMABLE = [*TINY, "train.batch_size=32", "train.max_steps=5", "optim.warmup_steps=1", "eval.every_steps=0",
             "checkpoint.every_steps=1", "checkpoint.keep_last=10", "data.augment=true", "data.shuffle_buffer=8"]


def _same_state(ours: object, theirs: object, where: str = "") -> None:
    """Equal nested checkpoint states: tensors exactly, other values by ==."""
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            _same_state(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same_state(a, b, f"{where}[{i}]")
    elif isinstance(ours, torch.Tensor):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=where)
    else:
        assert ours == theirs, where


def test_resumed_step_equals_the_in_memory_step(shards: Path, tmp_path: Path) -> None:
    """Run A takes steps 1-5 in memory; run B restores A's step-3 checkpoint (model, optimizer, scaler, RNG
    with random-crop augmentation on) and takes steps 4-5: B's step-4 state must equal A's, bit for bit.
    The schedule is train.max_steps long (5), not the 6 steps of train.epochs=2, in both runs."""
    config = load_config(preset="tiny", overrides=RESUMABLE)
    first = loop.train(config, data_dir=shards, out_dir=tmp_path / "a")
    assert first.steps == 5
    expected = [lr_at(s, base_lr=1e-3, warmup_steps=1, total_steps=5) for s in range(5)]
    assert [r["lr"] for r in read_metrics(tmp_path / "a")] == pytest.approx(expected)
    assert expected[-1] < 0.15e-3  # the cosine ends at step 5, not at epoch 2's step 6 (0.25e-3 there)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    (tmp_path / "b" / "checkpoints" / "step-00000003.pt").write_bytes(
        (tmp_path / "a" / "checkpoints" / "step-00000003.pt").read_bytes())
    second = loop.train(config, data_dir=shards, out_dir=tmp_path / "b", resume="latest")
    assert second.steps == 5 and [r["step"] for r in second.history] == [4, 5]
    assert [r["lr"] for r in second.history] == pytest.approx(expected[3:])
    ours = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000004.pt")
    theirs = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000004.pt")
    for part in ("model", "optimizer", "scaler", "rng", "step"):
        _same_state(ours[part], theirs[part], part)


# ---------------------------------------------------------------- validation text


def test_validation_zero_shot_uses_evaluations_class_text_and_encoder(shards: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero-shot validation names classes like evaluation (class_string of the shard's taxon, common name
    included) and encodes them with the one text encoder, model.bank.encode_class_texts."""
    seen: list[list[str]] = []

    def spy(model, tokenizer, names, templates, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(list(names))
        return encode_class_texts(model, tokenizer, names, templates, **kwargs)

    monkeypatch.setattr(validate_module, "encode_class_texts", spy)
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = create_model("treeclip-test")
    val_shards = sorted(str(p) for p in (shards / "val").glob("*.tar"))
    batches = make_loader(val_shards, transform=preprocess, tokenizer=tokenizer, batch_size=8, shuffle_buffer=0)
    metrics = validate_module.validate(
        model, batches, tokenizer=tokenizer, device=torch.device("cpu"), autocast=contextlib.nullcontext,
        max_batches=10, text_type="taxon_com", templates="photo", taxa=shard_taxa(val_shards))
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0 and model.training
    expected = [class_string(taxon, "taxon_com") for taxon in sorted(species(6), key=lambda t: t.lineage)]
    assert seen == [expected]
    assert "Animalia Chordata Aves Passeriformes Corvidae Corvus alba with common name Alba corvus" in expected


# ---------------------------------------------------------------- shipped configs, golden outputs, attention


def _shipped_architectures() -> dict[str, list[str]]:
    """Every shipped JSON architecture and preset, as {architecture: preset overrides to apply}."""
    shipped = {path.stem: "tiny" for path in (Path(treeclip.model.__file__).parent / "configs").glob("*.json")}
    for name in preset_names():
        config = load_config(preset=name)
        arch = config.model.name if config.model.name in open_clip.list_models() else "ViT-B-16"  # hub: BioCLIP's
        shipped.setdefault(arch, name)  # ViT-B-16 once (with bioclip-vit-b-16's gradient checkpointing)
    return shipped


@pytest.mark.parametrize(("arch", "preset"), sorted(_shipped_architectures().items()))
def test_every_shipped_config_trains_every_parameter(arch: str, preset: str) -> None:
    """Forward + backward of the contrastive loss with the preset's options: every trainable parameter gets a
    non-zero gradient (a detached tower, a dead branch or a broken checkpointing would leave some at None)."""
    config = load_config(preset=preset, overrides=[f"model.name={arch}"])
    torch.manual_seed(0)
    clip, _, _, tokenizer = create_model(arch)
    loop._apply_speed_options(clip, config)
    size = clip.visual.image_size
    images = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size))
    features = loop.TrainModule(clip)(images, tokenizer(["a photo of Rosa rubra.", "Corvus alba"]))
    clip_loss(0, 1)(*features).backward()
    for name, param in clip.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_finetune_preset_can_freeze_the_text_tower() -> None:
    config = load_config(preset="finetune", overrides=["model.freeze_text=true", "model.name=treeclip-test"])
    assert config.optim.lr <= 1e-5 and len(config.text_types) == 5
    clip = create_model("treeclip-test")[0]
    loop._apply_speed_options(clip, config)
    trainable = {name for name, param in clip.named_parameters() if param.requires_grad}
    assert "logit_scale" in trainable and "visual.conv1.weight" in trainable
    assert not trainable & {"token_embedding.weight", "text_projection", "ln_final.weight"}


GOLDEN_TOKENS = [49406, 320, 1125, 539, 11139, 4220, 36332, 25254, 593, 4176, 1981, 1579]
GOLDEN_IMAGE = [-0.04663, 0.15953, -0.08729, 0.15774, -0.01006, -0.23117]
GOLDEN_TEXT = [0.04629, -0.08682, 0.21058, 0.07271, -0.08237, 0.13742]


def test_golden_outputs_of_a_seeded_tiny_model() -> None:
    """A seeded treeclip-test model's embeddings of a fixed square image and caption: a change of
    preprocessing (resize, normalisation), tokenisation or model construction changes these numbers."""
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = create_model("treeclip-test")
    model.eval()
    ramp = np.linspace(0, 255, 48 * 48 * 3).reshape(48, 48, 3).astype(np.uint8)
    image = preprocess(Image.fromarray(ramp)).unsqueeze(0)
    tokens = tokenizer(["a photo of Ptilotula alba with common name White-plumed Honeyeater."])
    with torch.no_grad():
        image_embedding = model.encode_image(image, normalize=True)[0, :6]
        text_embedding = model.encode_text(tokens, normalize=True)[0, :6]
    assert tokens[0, :12].tolist() == GOLDEN_TOKENS
    torch.testing.assert_close(image_embedding, torch.tensor(GOLDEN_IMAGE), atol=1e-4, rtol=0)
    torch.testing.assert_close(text_embedding, torch.tensor(GOLDEN_TEXT), atol=1e-4, rtol=0)


def test_attention_runs_through_fused_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both towers' attention goes through torch's scaled_dot_product_attention (flash / memory-efficient
    kernels on GPUs), and the fused path computes the same as the textbook softmax(QK^T/sqrt(d))V."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    clip, _, _, tokenizer = create_model("treeclip-test")
    clip(torch.randn(2, 3, 32, 32), tokenizer(["a", "b"]))
    assert len(calls) == 2 + 2  # two vision blocks, two text blocks
    monkeypatch.undo()
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=generator) for _ in range(3))
    textbook = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    torch.testing.assert_close(real(q, k, v), textbook, atol=1e-5, rtol=1e-5)


def test_patch_dropout_cuts_counted_flops_and_metrics_carry_throughput(tiny_run: loop.TrainResult) -> None:
    tokenizer = open_clip.get_tokenizer("treeclip-tiny")
    counts = {}
    for fraction in (0.0, 0.5):
        config = load_config(preset="tiny", overrides=[f"train.patch_dropout={fraction}"])
        torch.manual_seed(0)
        clip = create_model("treeclip-tiny")[0]
        loop._apply_speed_options(clip, config)
        counts[fraction] = count_flops_per_sample(loop.TrainModule(clip), tokenizer=tokenizer,
                                                  device=torch.device("cpu"))
    # 64 patches + class token; half the patches dropped: the vision tower costs about half
    assert 0.3 < counts[0.5] / counts[0.0] < 0.9
    record = read_metrics(tiny_run.run_dir)[-1]
    assert record["samples_per_s"] == pytest.approx(record["samples_per_s_per_device"])
    assert record["tflops_per_device"] > 0 and "mfu" not in record  # no known peak for a CPU
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0


# ---------------------------------------------------------------- model ids


def test_model_id_parsing_order(tmp_path: Path, tiny_run: loop.TrainResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """hf-hub: and local-dir: prefixes first, then architecture names (a folder named like one changes nothing),
    then existing paths; anything else is a usage error."""
    monkeypatch.chdir(tmp_path)
    hub = tmp_path / "treeclip-test"  # a real hub folder named like an architecture
    assert main(["export", str(tiny_run.run_dir), "--out", str(hub)]) == 0
    (tmp_path / "ViT-B-16").mkdir()  # an empty folder named like an architecture
    assert parse_model_id("hf-hub:imageomics/bioclip") == ModelRef("hub", "hf-hub:imageomics/bioclip")
    assert parse_model_id("treeclip-test") == ModelRef("arch", "treeclip-test")
    assert parse_model_id("ViT-B-16") == ModelRef("arch", "ViT-B-16")
    assert parse_model_id("ViT-B/16") == ModelRef("arch", "ViT-B-16")
    assert parse_model_id("./treeclip-test") == ModelRef("local_dir", "local-dir:./treeclip-test")
    assert parse_model_id("local-dir:treeclip-test") == ModelRef("local_dir", "local-dir:treeclip-test")
    assert parse_model_id(tiny_run.last_checkpoint) == ModelRef("checkpoint", str(tiny_run.last_checkpoint))
    for bad, reason in (("./ViT-B-16", "no open_clip_config.json"), ("local-dir:nowhere", "no such folder"),
                        ("ViT-Q-99", "unknown model")):
        with pytest.raises(UsageError, match=reason):
            parse_model_id(bad)


def test_precision_auto_is_bf16_on_cuda_only() -> None:
    config = load_config(preset="tiny")
    assert config.train.precision == "auto"
    assert (resolved_precision(config, "cuda"), resolved_precision(config, "cpu")) == ("bf16", "fp32")
    assert resolved_precision(load_config(preset="bioclip-vit-b-16"), "cuda") == "fp16"  # BioCLIP's own choice


def test_throughput_is_per_device_and_mfu_uses_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    timer = Throughput(512, world_size=8, flops_per_sample=int(1e11), peak_tflops=100.0)
    figures = timer.tick()  # 512 samples in 2 s on 8 devices: 32 samples/s per device, 3.2 TFLOP/s each
    assert figures == pytest.approx({"samples_per_s": 256.0, "samples_per_s_per_device": 32.0,
                                     "tflops_per_device": 3.2, "mfu": 0.032})


def test_loader_workers_default_to_the_cores_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(preset="tiny")
    assert loader_workers(config, "cpu") == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert loader_workers(config, "cuda") == 15
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert loader_workers(config, "cuda") == 11
    assert loader_workers(load_config(preset="tiny", overrides=["data.num_workers=3"]), "cuda") == 3


def test_finetune_from_a_model_folder_keeps_a_frozen_text_tower(shards: Path, tmp_path: Path) -> None:
    """The finetune preset starts from the given model's weights (not a fresh initialisation), trains the image
    tower and leaves a frozen text tower bit for bit as it was; the checkpoint loads as a model id."""
    torch.manual_seed(123)
    start = create_model("treeclip-test")[0]
    folder = export_model(start, out_dir=tmp_path / "start", model_name="treeclip-test")
    overrides = [*TINY, f"model.name={folder}", "model.freeze_text=true", "train.batch_size=16",
                 "train.max_steps=2", "optim.lr=1e-3", "eval.every_steps=0"]
    result = loop.train(load_config(preset="finetune", overrides=overrides), data_dir=shards, out_dir=tmp_path / "run")
    tuned = load_checkpoint(result.last_checkpoint)["model"]
    before = start.state_dict()
    assert torch.equal(tuned["token_embedding.weight"], before["token_embedding.weight"])
    assert torch.equal(tuned["transformer.resblocks.0.attn.in_proj_weight"],
                       before["transformer.resblocks.0.attn.in_proj_weight"])
    assert not torch.equal(tuned["visual.conv1.weight"], before["visual.conv1.weight"])
    reloaded = create_model(result.last_checkpoint)[0].state_dict()
    assert torch.equal(reloaded["visual.conv1.weight"], tuned["visual.conv1.weight"])
