"""Training: config, optimizer, schedule, accumulation, objectives, checkpoints, export, torchrun, kill+resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from _shards import TINY, write_shards
from treeclip.cli import main
from treeclip.errors import UsageError
from treeclip.model import create_model
from treeclip.train import loop
from treeclip.train.checkpoint import list_checkpoints, load_checkpoint
from treeclip.train.config import load_config, micro_batch_size
from treeclip.train.metrics import read_metrics
from treeclip.train.objectives import ClassIndex, clip_loss
from treeclip.train.optim import lr_at, param_groups



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
    autocast = loop._autocast(load_config(preset="tiny"), loop.init_distributed("cpu"))
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


def test_nan_loss_stops_naming_step_and_checkpoint(shards: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop._step_function

    def poisoned(config, env, class_index):  # noqa: ANN001, ANN202 - wraps the real step function
        step_fn, calls = real(config, env, class_index), []

        def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            loss = step_fn(*args, **kwargs)
            return loss * float("nan") if len(calls) == 4 else loss
        return step

    monkeypatch.setattr(loop, "_step_function", poisoned)
    config = load_config(preset="tiny", overrides=[*TINY, "eval.every_steps=0", "checkpoint.every_steps=3"])
    expected = r"loss is nan at step 4; last good checkpoint: .*step-00000003\.pt"
    with pytest.raises(loop.TrainingDiverged, match=expected):
        loop.train(config, data_dir=shards, out_dir=tmp_path)


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
