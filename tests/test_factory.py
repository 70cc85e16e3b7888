"""norm_layer: every spec builds the right layer with the right settings, for dense (ndim=1) and image (ndim=2)
inputs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normlab
from normlab.layers import (BatchNorm1d, BatchNorm2d, BatchRenorm1d, BatchRenorm2d, FrozenBatchNorm1d,
                            FrozenBatchNorm2d, GhostBatchNorm1d, GhostBatchNorm2d, GroupNorm, InstanceNorm1d,
                            InstanceNorm2d, LpBatchNorm1d, LpBatchNorm2d, NoisyBatchNorm1d, NoisyBatchNorm2d)
from normlab.layers import factory
from normlab.layers.factory import norm_layer, register, valid_specs

SPECS = {   # spec -> (class for ndim=1, class for ndim=2)
    "none": (nn.Identity, nn.Identity),
    "bn": (BatchNorm1d, BatchNorm2d),
    "gn:4": (GroupNorm, GroupNorm),
    "ln": (GroupNorm, GroupNorm),
    "ln2d": (normlab.LayerNorm2d, normlab.LayerNorm2d),
    "in": (InstanceNorm1d, InstanceNorm2d),
    "noisy-bn": (NoisyBatchNorm1d, NoisyBatchNorm2d),
    "l1-bn": (LpBatchNorm1d, LpBatchNorm2d),
    "l2-bn": (LpBatchNorm1d, LpBatchNorm2d),
    "linf-bn": (LpBatchNorm1d, LpBatchNorm2d),
    "brn": (BatchRenorm1d, BatchRenorm2d),
    "brn:1.5:0.5": (BatchRenorm1d, BatchRenorm2d),
    "ghost-bn:4": (GhostBatchNorm1d, GhostBatchNorm2d),
    "frozen-bn": (FrozenBatchNorm1d, FrozenBatchNorm2d),
}


def test_every_registered_name_is_covered():
    assert sorted({s.partition(":")[0] for s in SPECS}) == valid_specs()


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("ndim", [1, 2])
def test_spec_builds_layer_that_trains_and_evaluates(spec, ndim):
    layer = norm_layer(spec, 8, ndim=ndim)
    assert type(layer) is SPECS[spec][ndim - 1]
    shape = (12, 8) if ndim == 1 else (12, 8, 3, 3)
    if spec == "in" and ndim == 1:
        shape = (12, 8, 5)                # InstanceNorm1d needs a length axis
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    layer.eval()
    assert layer(x).shape == x.shape


def test_spec_settings():
    assert norm_layer("gn:4", 8).num_groups == 4
    assert norm_layer("gn", 64).num_groups == 32 and norm_layer("gn", 16).num_groups == 16
    assert norm_layer("ln", 8).num_groups == 1
    assert norm_layer("l1-bn", 8).p == 1 and norm_layer("l2-bn", 8).p == 2 and norm_layer("linf-bn", 8).p == math.inf
    n = norm_layer("noisy-bn", 8)
    assert (n.n_mu, n.n_sigma, n.r_mu, n.r_sigma) == (0.5, 1.25, 0.1, 0.1)
    b = norm_layer("brn", 8)
    assert (b.r_max, b.d_max, b.warmup_steps, b.r_max_steps, b.d_max_steps) == (3.0, 5.0, 5000, 40000, 25000)
    b = norm_layer("brn:1.5:0.5", 8, ndim=1)
    assert b.limits(0) == (1.5, 0.5)       # explicit values apply from the first step
    assert norm_layer("ghost-bn:16", 8).virtual_batch_size == 16
    assert norm_layer("ghost-bn", 8).virtual_batch_size == 32
    assert norm_layer(" BN ", 8).num_features == 8
    assert normlab.norm_layer is norm_layer


def test_unknown_spec_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'") as e:
        norm_layer("batchnorm", 8)
    for name in valid_specs():
        assert name in str(e.value)
    assert "ghost-bn[:V]" in str(e.value) and "brn[:R:D]" in str(e.value)


@pytest.mark.parametrize("spec, match", [
    ("bn:3", "'bn' takes no ':' argument"),
    ("l1-bn:2", "'l1-bn' takes no ':' argument"),
    ("ghost-bn:0", "virtual_batch_size: expected a positive int"),
    ("ghost-bn:x", "ghost-bn virtual batch size: expected an int"),
    ("gn:", "gn groups: expected an int"),
    ("gn:3", "num_groups: expected a divisor of num_channels=8"),
    ("brn:1.5", "expected 'brn:R:D'"),
    ("brn:0.5:0", "r_max: expected a finite float >= 1"),
    ("brn:2:-1", "d_max: expected a finite float >= 0"),
])
def test_bad_spec_arguments(spec, match):
    with pytest.raises(ValueError, match=match):
        norm_layer(spec, 8)


def test_bad_ndim_and_type():
    with pytest.raises(ValueError, match="ndim: expected 1"):
        norm_layer("bn", 8, ndim=3)
    with pytest.raises(TypeError, match="spec: expected a string"):
        norm_layer(nn.BatchNorm2d, 8)


def test_register_adds_a_spec(monkeypatch):
    monkeypatch.setattr(factory, "_BUILDERS", dict(factory._BUILDERS))
    monkeypatch.setattr(factory, "_FORMS", dict(factory._FORMS))
    register("scale", lambda c, nd, a: nn.Identity() if a is None else GroupNorm(int(a), c), form="scale[:G]")
    assert "scale" in valid_specs()
    assert type(norm_layer("scale", 4)) is nn.Identity and norm_layer("scale:2", 4).num_groups == 2
    with pytest.raises(ValueError, match=r"scale\[:G\]"):
        norm_layer("nope", 4)
