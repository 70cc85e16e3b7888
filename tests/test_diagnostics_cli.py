"""`normlab diagnose CHECKPOINT`: the numbers it writes are the instruments' own on the checkpoint's model,
optimizer state and batch; bad input is a usage error naming the problem."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from normlab import data, diagnostics, models
from normlab.checkpoint import load_checkpoint
from normlab.cli import main as cli
from normlab.train import TrainConfig, train

from test_diagnostics_hooks import tiny_mnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    root = tiny_mnist(tmp / "data")
    cfg = TrainConfig(model="mlp", norm="bn", dataset="mnist", data_root=str(root), steps=3, batch_size=20, lr=0.3,
                      momentum=0.9, eval_every=0, eval_samples=0, progress=False, checkpoint_every=3,
                      model_kw={"hidden": [16, 16]})
    train(cfg, tmp / "run")
    return tmp / "run"


def test_diagnose_writes_the_instruments_numbers(run_dir, tmp_path):
    out = tmp_path / "d.json"
    res = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", "ics,landscape,bound,distributions",
                                   "--batch-size", "32", "--points", "3", "--layers", "1,2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "internal covariate shift" in res.output and "Theorem 4.1" in res.output
    doc = json.loads(out.read_text())
    assert doc["step"] == 3 and doc["lr"] == 0.3 and doc["batch_size"] == 32
    # recompute independently from the checkpoint
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = TrainConfig.from_dict(state["config"])
    ds = data.load("mnist", root=cfg.data_root)
    model = models.build("mlp", "bn", ds.in_shape, 10, **cfg.model_kw)
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    opt.load_state_dict(state["optimizer"])
    idx = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(0))[:32]
    x, y = ds.x_train[idx], ds.y_train[idx]
    rows = diagnostics.ics(model, torch.nn.functional.cross_entropy, x, y, opt, layers=[1, 2])
    assert [r["layer"] for r in doc["results"]["ics"]] == ["4", "7"]
    for a, b in zip(doc["results"]["ics"], rows):
        assert a["l2"] == pytest.approx(b["l2"], rel=1e-6) and a["l2"] > 0
    land = diagnostics.landscape(model, torch.nn.functional.cross_entropy, x, y, lr=0.3, points=3)
    assert doc["results"]["landscape"]["losses"] == pytest.approx(land["losses"], rel=1e-6)
    assert all(r["identity_holds"] for r in doc["results"]["bound"])
    assert doc["results"]["notes"] == ["--layers does not apply to landscape, bound: measured on the whole model"]
    assert "note: --layers does not apply to landscape, bound" in res.output


def test_diagnose_layers_select_the_hessian_block_and_bad_indices_are_refused(run_dir, tmp_path):
    # issue 15: `--layers 99` was silently ignored by bound, landscape and hessian
    for what in ("bound", "landscape", "hessian"):
        r = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", what, "--layers", "99",
                                     "--out", str(tmp_path / "x.json")])
        assert r.exit_code == 2 and "index 99 is out of range; the model has 3 weight layers" in r.output, r.output
    out = tmp_path / "h.json"
    r = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", "hessian", "--layers", "2", "--batch-size",
                                 "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = TrainConfig.from_dict(state["config"])
    ds = data.load("mnist", root=cfg.data_root)
    model = models.build("mlp", "bn", ds.in_shape, 10, **cfg.model_kw)
    model.load_state_dict(state["model"])
    idx = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(0))[:32]
    x, y = ds.x_train[idx], ds.y_train[idx]
    last = models.weight_layers(model)[2][1]   # the output Linear; its Hessian block, dense, in float64
    w, b = last.weight.detach().double(), last.bias.detach().double()
    seen = []
    handle = last.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().double()))
    model.train()(x)   # diagnose's default: BN with batch statistics
    handle.remove()
    feats = seen[0]

    def loss(flat):
        W, B = flat[:w.numel()].view_as(w), flat[w.numel():]
        return torch.nn.functional.cross_entropy(feats @ W.T + B, y)
    dense = torch.autograd.functional.hessian(loss, torch.cat([w.flatten(), b]))
    top = float(torch.linalg.eigvalsh(dense).abs().max())
    assert json.loads(out.read_text())["results"]["hessian"]["eigenvalue"] == pytest.approx(top, rel=1e-2)


def test_diagnose_bad_input(run_dir, tmp_path):
    r = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", "ics,curvature", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown instrument(s) ['curvature']" in r.output
    r = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", "ics", "--layers", "fc9",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown layer name 'fc9'" in r.output
    r = CliRunner().invoke(cli, ["diagnose", str(run_dir), "--what", "landscape", "--span", "0,4",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "span" in r.output
