"""normlab.train: the loop, metrics, hooks, divergence, schedules, checkpoint/resume after SIGKILL, and the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normlab import checkpoint as ckpt
from normlab.cli import main as cli
from normlab.train import ConfigError, StepContext, TrainConfig, evaluate, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """A learnable MNIST-format npz: class k has a bright 3-row bar starting at row 2k, plus noise."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 * k + 3: 2 * k + 6, 4:24] = 200
        return x, y
    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return root


def cfg_for(root: Path, **kw) -> TrainConfig:
    base = dict(model="mlp", norm="bn", dataset="mnist", data_root=str(root), steps=30, batch_size=20, lr=0.5,
                eval_every=10, eval_samples=0, progress=False, checkpoint_every=0, model_kw={"hidden": [32, 32]})
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("data"))


def bare_loop(cfg: TrainConfig, root: Path) -> tuple[torch.nn.Module, list[float]]:
    """The same work written out by hand: the oracle for train()'s arithmetic."""
    from normlab import data, models
    torch.manual_seed(cfg.seed)
    ds = data.load("mnist", root=root)
    model = models.build("mlp", cfg.norm, ds.in_shape, 10, **cfg.model_kw)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    per_epoch = len(ds.x_train) // cfg.batch_size
    losses = []
    for t in range(cfg.steps):
        epoch, i = divmod(t, per_epoch)
        perm = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_train_matches_bare_loop_and_writes_files(root, tmp_path):
    cfg = cfg_for(root, momentum=0.9, log_every=1)
    summary = train(cfg, tmp_path)
    model, losses = bare_loop(cfg, root)
    rows = ckpt.read_jsonl(tmp_path / "metrics.jsonl")
    got = [r["loss"] for r in rows if r["step"] > 0]
    assert [r["step"] for r in rows] == list(range(31))
    np.testing.assert_allclose(got, losses, rtol=1e-6)
    # final accuracy equals a direct evaluation of the hand-trained model on the whole test split
    from normlab import data
    ds = data.load("mnist", root=root)
    loss, acc = evaluate(model, ds.x_test, ds.y_test, torch.nn.functional.cross_entropy, True)
    assert summary["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["diverged_at"] is None and summary["status"] == "completed"
    assert summary["dataset"] == "mnist" and "mnist.npz" in summary["source"]
    assert summary["peak_rss_mb"] > 0 and summary["config"]["lr"] == 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["test_acc"] == summary["test_acc"]
    assert summary["test_acc"] > 0.5   # the bars are learnable: a broken loop stays at chance (0.1)
    # eval rows carry accuracies, loss-only rows do not
    assert rows[10]["test_acc"] is not None and "test_acc" not in rows[11]


def test_hooks_see_gradients_before_step_and_rows_are_written(root, tmp_path):
    seen = []

    class GradNorm:
        name = "gradnorm"

        def __call__(self, ctx: StepContext):
            assert isinstance(ctx, StepContext)
            w = ctx.model[1].weight
            seen.append((ctx.step, w.detach().clone(), w.grad.detach().clone(), ctx.lr, ctx.loss))
            # loss_fn reproduces the step's loss on the step's batch
            with torch.no_grad():
                again = float(ctx.loss_fn(ctx.model(ctx.x), ctx.y))
            return [{"layer": 0, "grad_norm": w.grad.norm()}, {"layer": -1, "loss_again": again}]

    def every_other(ctx):
        return {"even": True} if ctx.step % 2 == 0 else None

    cfg = cfg_for(root, steps=6, momentum=0.0, norm="none")
    train(cfg, tmp_path, hooks=[GradNorm(), every_other])
    steps = [s[0] for s in seen]
    assert steps == list(range(6))
    for (_, w0, g0, lr, _), (_, w1, _, _, _) in zip(seen, seen[1:]):
        torch.testing.assert_close(w1, w0 - lr * g0)   # hook ran after backward, before the SGD update
    rows = ckpt.read_jsonl(tmp_path / "diagnostics.jsonl")
    grad_rows = [r for r in rows if r["hook"] == "gradnorm" and r["layer"] == 0]
    assert [r["step"] for r in grad_rows] == steps
    assert grad_rows[0]["grad_norm"] == pytest.approx(float(seen[0][2].norm()), rel=1e-6)
    again = [r["loss_again"] for r in rows if r.get("layer") == -1]
    np.testing.assert_allclose(again, [s[4] for s in seen], rtol=1e-5)   # norm="none": same loss in no_grad
    assert [r["step"] for r in rows if r["hook"] == "every_other"] == [0, 2, 4]


def test_divergence_ends_run_cleanly(root, tmp_path):
    cfg = cfg_for(root, norm="none", lr=1e4, steps=50, optimizer="sgd", diverge_loss=50.0, checkpoint_every=10)
    s = train(cfg, tmp_path)
    assert s["status"] == "diverged" and isinstance(s["diverged_at"], int) and 0 < s["diverged_at"] < 50
    rows = ckpt.read_jsonl(tmp_path / "metrics.jsonl")
    last = rows[-1]
    assert last["diverged"] is True and last["step"] == s["diverged_at"]
    assert not (math.isfinite(last["loss"]) and last["loss"] <= 50.0)
    assert all(r["loss"] is None or r["loss"] <= 50 for r in rows[:-1])


def test_step_schedule_adam_weight_decay(root, tmp_path):
    cfg = cfg_for(root, optimizer="adam", lr=1e-2, weight_decay=1e-4, schedule="step", lr_milestones=(10, 20),
                  lr_gamma=0.5, log_every=5, steps=25)
    train(cfg, tmp_path)
    lrs = {r["step"]: r["lr"] for r in ckpt.read_jsonl(tmp_path / "metrics.jsonl")}
    assert lrs[5] == 1e-2 and lrs[10] == 5e-3 and lrs[15] == 5e-3 and lrs[20] == 2.5e-3 and lrs[25] == 2.5e-3


def test_regression_dataset_uses_mse(tmp_path):
    cfg = TrainConfig(model="linear", norm="none", dataset="synthetic-linear", steps=5, batch_size=1000, lr=1e-3,
                      eval_every=5, progress=False, checkpoint_every=0, model_kw={"depth": 3}, init="glorot")
    s = train(cfg, tmp_path)
    assert s["test_acc"] is None and s["test_loss"] > 0
    from normlab import data, models
    torch.manual_seed(0)
    ds = data.load("synthetic-linear")
    m = models.build("linear", "none", (10,), 10, "glorot", depth=3)
    first = ckpt.read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert first["train_loss"] == pytest.approx(float(torch.nn.functional.mse_loss(m(ds.x_train), ds.y_train).detach()),
                                                rel=1e-5)


@pytest.mark.parametrize("field, value, match", [
    ("norm", "bogus", "norm: expected a norm spec"), ("lr", -1.0, "lr: expected"), ("model", "vit", "model:"),
    ("batch_size", 0, "batch_size: expected a positive integer"), ("optimizer", "lbfgs", "optimizer:"),
    ("dataset", "imagenet", "dataset:"), ("schedule", "cosine", "schedule:"), ("device", "tpu", "device:")])
def test_bad_config_values(field, value, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        train(TrainConfig(**{field: value}), tmp_path)


def test_batch_larger_than_dataset(root, tmp_path):
    with pytest.raises(ConfigError, match="batch_size: 5000 is larger than the mnist training set .600 samples."):
        train(cfg_for(root, batch_size=5000), tmp_path)


def test_config_roundtrip():
    cfg = TrainConfig(model="vgg", lr_milestones=(1, 2), model_kw={"width": 0.5})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"lrr": 1})


_CHILD = """
import json, os, signal, sys
from normlab.train import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
kill_at = int(sys.argv[3])
def killer(ctx):
    if ctx.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, sys.argv[2], hooks=[killer] if kill_at >= 0 else [], resume=sys.argv[4] == "1")
"""


def _child(cfg: TrainConfig, out: Path, kill_at: int, resume: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict()), str(out), str(kill_at),
                           "1" if resume else "0"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(240)
def test_sigkill_then_resume_gives_identical_results(root, tmp_path):
    # noisy enough to catch a lost RNG/data-order/optimizer state: momentum, BN running stats, random init
    cfg = cfg_for(root, steps=60, momentum=0.9, checkpoint_every=20, eval_every=10, log_every=5)
    full, cut = tmp_path / "full", tmp_path / "cut"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in the children (OMP_NUM_THREADS=1): same kernels, same summation order
    try:
        train(cfg, full)       # the uninterrupted reference, in this process
    finally:
        torch.set_num_threads(threads)
    p = _child(cfg, cut, 57, False)                   # killed at step 57: last checkpoint at 40, rows up to 50
    assert p.returncode == -9, p.stderr
    assert not (cut / "summary.json").exists()
    assert ckpt.load_checkpoint(cut / "checkpoint.pt")["step"] == 40
    assert max(r["step"] for r in ckpt.read_jsonl(cut / "metrics.jsonl")) == 50
    p = _child(cfg, cut, -1, True)
    assert p.returncode == 0, p.stderr
    assert "resuming at step 40" in p.stderr
    a, b = ckpt.read_jsonl(full / "metrics.jsonl"), ckpt.read_jsonl(cut / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b]   # bit-identical metrics
    sa, sb = ckpt.read_json(full / "summary.json"), ckpt.read_json(cut / "summary.json")
    assert sa["final"]["test_loss"] == sb["final"]["test_loss"] and sa["test_acc"] == sb["test_acc"]
    wa, wb = ckpt.load_checkpoint(full / "checkpoint.pt"), ckpt.load_checkpoint(cut / "checkpoint.pt")
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    # no temp files left behind
    assert not [f for f in os.listdir(cut) if ".tmp" in f]
    # a finished run resumes to its saved summary without training again
    again = train(cfg, cut, resume=True)
    assert again["final"] == sb["final"]


def test_resume_refuses_other_config(root, tmp_path):
    train(cfg_for(root, steps=10, checkpoint_every=5), tmp_path)
    with pytest.raises(ConfigError, match="resume: .* different config .*lr"):
        train(cfg_for(root, steps=10, checkpoint_every=5, lr=0.1), tmp_path, resume=True)


def test_checkpoint_loads_with_weights_only(root, tmp_path):
    train(cfg_for(root, steps=10, checkpoint_every=5), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 10 and state["done"] is True and "1.weight" in state["model"]


def test_atomic_jsonl_append(tmp_path):
    p = tmp_path / "m.jsonl"
    ckpt.append_jsonl_atomic(p, [{"a": 1}])
    ckpt.append_jsonl_atomic(p, [{"a": np.float32(2.5), "t": torch.tensor([1.0, 2.0])}])
    assert ckpt.read_jsonl(p) == [{"a": 1}, {"a": 2.5, "t": [1.0, 2.0]}]
    with pytest.raises(TypeError, match="not JSON serializable"):
        ckpt.append_jsonl_atomic(p, [{"a": object()}])
    assert ckpt.read_jsonl(p) == [{"a": 1}, {"a": 2.5, "t": [1.0, 2.0]}]   # a failed write leaves the old file
    assert os.listdir(tmp_path) == ["m.jsonl"]


def test_cli_train_and_errors(root, tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["train", "--help"])
    assert res.exit_code == 0 and "--batch-size" in res.output and "--resume" in res.output
    res = r.invoke(cli, ["train", "--norm", "bogus"])
    assert res.exit_code == 2 and "unknown norm 'bogus'; valid: " in res.output and "bn" in res.output
    res = r.invoke(cli, ["train", "--lr", "-0.1"])
    assert res.exit_code == 2 and "Invalid value for '--lr': expected a positive number" in res.output
    env = {"NORMLAB_DATA": str(root)}
    res = r.invoke(cli, ["train", "--batch-size", "601", "--out", str(tmp_path / "x")], env=env)
    assert res.exit_code == 2 and "batch_size: 601 is larger than the mnist training set (600 samples)" in res.output
    out = tmp_path / "run"
    res = r.invoke(cli, ["train", "--model", "mlp", "--norm", "bn", "--steps", "20", "--batch-size", "30",
                         "--eval-every", "10", "--checkpoint-every", "10", "--model-kw", "hidden=[16]",
                         "--out", str(out), "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    assert "completed: 20 steps" in res.output
    s = ckpt.read_json(out / "summary.json")
    assert s["config"]["model_kw"] == {"hidden": [16]} and s["config"]["batch_size"] == 30
    assert (out / "checkpoint.pt").exists() and len(ckpt.read_jsonl(out / "metrics.jsonl")) == 3


def test_train_samples_subset_and_augment(root, tmp_path):
    s = train(cfg_for(root, train_samples=100, batch_size=50, steps=4, augment=True, eval_every=2), tmp_path)
    assert s["train_size"] == 100 and s["status"] == "completed"
    with pytest.raises(ConfigError, match="batch_size: 120 is larger .*100 samples kept by train_samples"):
        train(cfg_for(root, train_samples=100, batch_size=120), tmp_path)
    with pytest.raises(ConfigError, match="train_samples: 601 is more than"):
        train(cfg_for(root, train_samples=601), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda(root, tmp_path):
    with pytest.raises(ConfigError, match="device: 'cuda' asked for but CUDA is not available"):
        train(cfg_for(root, device="cuda"), tmp_path)


def test_resume_of_finished_run_without_checkpoint_returns_summary(root, tmp_path):
    cfg = cfg_for(root, steps=5, checkpoint_every=0, model_kw={"hidden": (16,)})   # tuple: compared as JSON
    first = train(cfg, tmp_path)
    (tmp_path / "metrics.jsonl").write_text("sentinel\n")   # would be rewritten by a new run
    assert train(cfg, tmp_path, resume=True) == first
    assert (tmp_path / "metrics.jsonl").read_text() == "sentinel\n"
