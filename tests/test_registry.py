"""One registry per kind (issue 16 item 2): the Registry class, and a new instrument and a new norm each added from
this file alone, after which `normlab diagnose`, the training hooks, the factory and TrainConfig all know them."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import normlab
from normlab import data, diagnostics, models
from normlab.config import TrainConfig
from normlab.diagnostics import INSTRUMENTS, Instrument
from normlab.experiments import EXPERIMENTS, instruments
from normlab.layers import NORMS, factory
from normlab.registry import Registry
from normlab.train import train


def test_registry_registers_gets_and_names_the_valid_ones():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1
    reg.register("b", 2)
    assert reg.get("a") is a and reg["b"] == 2 and reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    assert dict(reg) == {"a": a, "b": 2}
    with pytest.raises(ValueError, match=r"widget: unknown widget 'c'; valid: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match=r"name: unknown widget 'c'"):
        reg.get("c", "name")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)
    reg.unregister("b")
    assert reg.names() == ["a"]


def test_each_kind_has_its_registry():
    assert models.MODELS.names() == ["mlp", "vgg", "linear", "resnet"] == models.names()
    assert data.DATASETS.names() == ["mnist", "fashion-mnist", "cifar10", "synthetic-linear"] == data.names()
    assert {"bn", "gn", "ln", "l1-bn", "linf-bn", "frozen-bn"} <= set(NORMS.names())
    assert EXPERIMENTS.names()[0] == "ioffe-mnist" and len(EXPERIMENTS) == 14
    assert {"ics", "landscape", "hessian", "spectrum", "distributions", "bound", "batch-acc", "probe",
            "eval-modes"} <= set(INSTRUMENTS.names())
    assert diagnostics.diagnosable() == ["ics", "landscape", "hessian", "distributions", "bound"]
    for name, cls in INSTRUMENTS.items():
        assert cls.name == name and cls.fields, name   # every instrument declares its row schema


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), normlab.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return model, torch.randn(16, 6), torch.randint(0, 3, (16,))


def test_rows_are_checked_against_the_declared_schema():
    model, x, y = _tiny()
    ctx = diagnostics.Context(model, nn.functional.cross_entropy, x, y)

    class Sloppy(Instrument):
        name, fields = "sloppy", ("a",)

        def measure(self, ctx):
            return [{"a": 1}, {"b": 2}]
    with pytest.raises(RuntimeError, match=r"'sloppy': a row breaks its declared schema \(missing \['a'\], "
                                           r"undeclared \['b'\]\)"):
        Sloppy()(ctx)


class GradNorm(Instrument):
    """The throwaway instrument: ||grad|| of each weight layer, registered from this file."""
    name = "grad-norm-test"
    fields = ("layer", "norm")
    in_diagnose = True

    def measure(self, ctx):
        return [{"layer": n, "norm": float(m.weight.grad.norm())} for n, m in models.weight_layers(ctx.model)]

    @classmethod
    def from_options(cls, opts):
        return cls()


@pytest.fixture()
def grad_norm_instrument():
    INSTRUMENTS.register(GradNorm.name, GradNorm)
    yield GradNorm
    INSTRUMENTS.unregister(GradNorm.name)


def test_a_new_instrument_from_one_file_reaches_diagnose_and_training(grad_norm_instrument, tmp_path):
    # normlab diagnose: offered, parsed, measured
    assert "grad-norm-test" in diagnostics.diagnosable()
    model, x, y = _tiny()
    nn.functional.cross_entropy(model(x), y).backward()
    want = [float(model[0].weight.grad.norm()), float(model[3].weight.grad.norm())]
    out = diagnostics.diagnose(model, nn.functional.cross_entropy, x, y, "grad-norm-test,bound")
    assert [r["norm"] for r in out["grad-norm-test"]] == want and out["bound"][0]["identity_holds"]
    # the training hooks: an experiment's instrument spec builds it from the registry
    hook = instruments.build(instruments.spec("grad-norm-test", every=2))
    assert isinstance(hook, GradNorm) and hook.due(4) and not hook.due(3)
    cfg = TrainConfig(model="linear", norm="bn", dataset="synthetic-linear", steps=3, batch_size=50, lr=0.01,
                      eval_every=0, progress=False, checkpoint_every=0, verbose=False, model_kw={"depth": 3})
    train(cfg, tmp_path / "run", hooks=[hook])
    rows = [json.loads(line) for line in (tmp_path / "run" / "diagnostics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["hook"], r["layer"]) for r in rows] == [(s, "grad-norm-test", n) for s in (0, 2)
                                                                  for n in ("0", "2", "4")]
    assert all(r["norm"] > 0 for r in rows)


def test_a_new_norm_from_one_file_reaches_the_factory_models_and_config(monkeypatch):
    monkeypatch.setattr(factory, "_BUILDERS", dict(factory._BUILDERS))   # the registration ends with this test

    class CenterOnly(nn.Module):   # the throwaway norm: subtract the per-channel batch mean
        def forward(self, x):
            return x - x.mean(0, keepdim=True)
    factory.register("center-test", lambda c, nd, arg, **kw: CenterOnly())
    assert "center-test" in factory.valid_specs()
    TrainConfig(model="mlp", norm="center-test").validate()
    model = models.build("mlp", "center-test", (1, 4, 4), 10, hidden=(5,))
    assert isinstance(model[2], CenterOnly)
    out = nn.Sequential(*list(model)[:3])(torch.randn(7, 1, 4, 4))
    torch.testing.assert_close(out.mean(0), torch.zeros(5), rtol=0, atol=1e-6)
