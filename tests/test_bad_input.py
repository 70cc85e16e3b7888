"""Bad input gets a clear error naming the argument; NaN/Inf stay inside the statistic set they fall in
(docs/backward.md, "NaN and Inf")."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normlab

ALL_LAYERS = {   # name -> (constructor, a valid input shape)
    "bn1d": (lambda **kw: normlab.BatchNorm1d(3, **kw), (4, 3)),
    "bn2d": (lambda **kw: normlab.BatchNorm2d(3, **kw), (4, 3, 2, 2)),
    "bn3d": (lambda **kw: normlab.BatchNorm3d(3, **kw), (2, 3, 2, 2, 2)),
    "in1d": (lambda **kw: normlab.InstanceNorm1d(3, **kw), (2, 3, 4)),
    "in2d": (lambda **kw: normlab.InstanceNorm2d(3, **kw), (2, 3, 2, 2)),
    "in3d": (lambda **kw: normlab.InstanceNorm3d(3, **kw), (2, 3, 2, 2, 2)),
    "gn": (lambda **kw: normlab.GroupNorm(3, 6, **kw), (2, 6, 2)),
    "ln": (lambda **kw: normlab.LayerNorm(4, **kw), (2, 3, 4)),
}


# ----------------------------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("eps", [0.0, -1e-5, math.nan, math.inf])
def test_eps_must_be_positive(name, eps):
    with pytest.raises(ValueError, match="eps: expected a positive finite float"):
        ALL_LAYERS[name][0](eps=eps)


@pytest.mark.parametrize("name", ["bn1d", "bn2d", "bn3d", "in1d", "in2d", "in3d"])
@pytest.mark.parametrize("momentum", [-0.1, 1.5, "0.1", math.nan])
def test_momentum_must_be_in_unit_interval_or_none(name, momentum):
    with pytest.raises(ValueError, match="momentum: expected a float in \\[0, 1\\] or None"):
        ALL_LAYERS[name][0](momentum=momentum)


@pytest.mark.parametrize("call,match", [
    (lambda: normlab.BatchNorm2d(0), "num_features"),
    (lambda: normlab.BatchNorm2d(3.0), "num_features"),
    (lambda: normlab.InstanceNorm2d(-2), "num_features"),
    (lambda: normlab.GroupNorm(4, 6), "num_groups: expected a divisor of num_channels=6"),
    (lambda: normlab.GroupNorm(0, 6), "num_groups"),
    (lambda: normlab.GroupNorm(2, 0), "num_channels"),
    (lambda: normlab.LayerNorm(()), "normalized_shape"),
    (lambda: normlab.LayerNorm((3, 0)), "normalized_shape"),
])
def test_bad_constructor_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_inputs_are_rejected(name, dtype):
    make, shape = ALL_LAYERS[name]
    with pytest.raises(TypeError, match="input: expected a floating-point tensor"):
        make()(torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("name,shape", [("bn1d", (4,)), ("bn1d", (2, 3, 2, 2)), ("bn2d", (4, 3, 2)),
                                        ("bn2d", (2, 3, 2, 2, 2)), ("bn3d", (2, 3, 2, 2)), ("in1d", (3,)),
                                        ("in2d", (2, 3, 2, 2, 2)), ("in3d", (3, 2, 2)), ("gn", (6,))])
def test_wrong_rank(name, shape):
    with pytest.raises(ValueError, match="input: .*got [0-9]D input|input: expected \\(N, 6, \\*\\)"):
        ALL_LAYERS[name][0]()(torch.randn(shape))


@pytest.mark.parametrize("name,shape", [("bn1d", (4, 5)), ("bn2d", (4, 2, 2, 2)), ("bn3d", (2, 4, 2, 2, 2))])
def test_batchnorm_channel_mismatch(name, shape):
    with pytest.raises(ValueError, match="input: expected 3 channels in dim 1 \\(num_features\\)"):
        ALL_LAYERS[name][0]()(torch.randn(shape))


def test_groupnorm_channel_mismatch():
    with pytest.raises(ValueError, match="num_channels=6"):
        normlab.GroupNorm(3, 6)(torch.randn(2, 4, 3))


def test_instancenorm_channel_mismatch_errors_with_affine_and_warns_without():
    with pytest.raises(ValueError, match="num_features"):
        normlab.InstanceNorm2d(3, affine=True)(torch.randn(2, 4, 3, 3))
    with pytest.warns(UserWarning, match="num_features=3"):
        y = normlab.InstanceNorm2d(3)(torch.randn(2, 4, 3, 3))   # as torch: statistics are per channel anyway
    torch.testing.assert_close(y, nn.InstanceNorm2d(4)(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("normalized_shape,shape", [(4, (2, 3, 5)), ((3, 4), (2, 4, 4)), ((2, 3, 4), (3, 4))])
def test_layernorm_trailing_shape_mismatch(normalized_shape, shape):
    with pytest.raises(ValueError, match="normalized_shape="):
        normlab.LayerNorm(normalized_shape)(torch.randn(shape))


@pytest.mark.parametrize("make,shape", [
    (lambda: normlab.BatchNorm1d(3), (1, 3)),
    (lambda: normlab.BatchNorm1d(3), (1, 3, 1)),
    (lambda: normlab.BatchNorm2d(3), (1, 3, 1, 1)),
    (lambda: normlab.BatchNorm1d(3, track_running_stats=False).eval(), (1, 3)),   # batch statistics in eval too
])
def test_one_value_per_channel(make, shape):
    with pytest.raises(ValueError, match="input: expected more than 1 value per channel"):
        make()(torch.randn(shape))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):     # torch agrees on each case
        layer = make()
        twin = getattr(nn, type(layer).__name__)(3, track_running_stats=layer.track_running_stats)
        twin.train(layer.training)(torch.randn(shape))


def test_one_value_per_channel_is_fine_with_running_statistics():
    bn = normlab.BatchNorm2d(3).eval()
    x = torch.randn(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), x / math.sqrt(1 + 1e-5))


@pytest.mark.parametrize("make,shape", [(lambda: normlab.InstanceNorm1d(3), (2, 3, 1)),
                                        (lambda: normlab.InstanceNorm2d(3), (3, 1, 1)),
                                        (lambda: normlab.InstanceNorm2d(3, track_running_stats=True), (2, 3, 1, 1))])
def test_one_spatial_element_instance_norm(make, shape):
    with pytest.raises(ValueError, match="input: expected more than 1 spatial element"):
        make()(torch.randn(shape))


# -------------------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_inf_in_one_channel_stays_in_that_channel_batchnorm(bad):
    """Training: the bad value poisons its own channel's statistics (output, running stats, weight/bias grads of
    that channel become NaN); the other channels are exactly as without it. Same pattern as torch.nn."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    x[1, 0, 1, 1] = bad
    clean = x.clone()
    clean[:, 0] = 0.0
    mine, ref, base = (normlab.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double(), normlab.BatchNorm2d(3).double())
    xs = [x.clone().requires_grad_() for _ in range(3)]
    xs[2] = clean.clone().requires_grad_()
    outs = [layer(xi) for layer, xi in zip((mine, ref, base), xs)]
    g = torch.randn_like(x)
    for out in outs:
        out.backward(g)
    y, y_ref, y_clean = outs
    assert torch.isnan(y[:, 0]).all() and torch.isfinite(y[:, 1:]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    torch.testing.assert_close(y[:, 1:], y_clean[:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(xs[0].grad[:, 1:], xs[2].grad[:, 1:], rtol=0, atol=1e-12)
    assert torch.isnan(xs[0].grad[:, 0]).all()
    assert torch.isnan(mine.weight.grad[0]) and torch.isfinite(mine.weight.grad[1:]).all()
    assert torch.isfinite(mine.bias.grad).all()          # dbeta = sum(dy) only sees the incoming gradient
    assert torch.isnan(mine.running_var[0]) and torch.isfinite(mine.running_var[1:]).all()
    # running_mean[0]: NaN here for NaN and Inf alike (centering on the mean turns inf - inf into NaN);
    # torch.nn keeps +-inf there for an Inf input. Non-finite either way, and only in that channel.
    assert torch.equal(torch.isfinite(mine.running_mean), torch.isfinite(ref.running_mean))
    # eval afterwards: the poisoned channel stays NaN for every input until reset_running_stats()
    mine.eval()
    y_eval = mine(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    assert torch.isnan(y_eval[:, 0]).all() and torch.isfinite(y_eval[:, 1:]).all()
    mine.reset_running_stats()
    assert torch.isfinite(mine(torch.randn(2, 3, 2, 2, dtype=torch.float64))).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_inf_at_eval_with_running_statistics_is_elementwise(bad):
    """Eval with running statistics is an affine map per channel: only the bad element itself is affected."""
    bn = normlab.BatchNorm2d(3).double().eval()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    x[0, 1, 0, 0] = bad
    y = bn(x)
    assert (~torch.isfinite(y)).sum() == 1
    assert torch.equal(torch.isnan(y), torch.isnan(x)) and torch.equal(torch.isinf(y), torch.isinf(x))


@pytest.mark.parametrize("make,shape,poisoned", [
    (lambda: normlab.LayerNorm([3, 4]), (2, 3, 4), lambda y: y[1]),             # the whole sample
    (lambda: normlab.InstanceNorm1d(3), (2, 3, 4), lambda y: y[1, 2]),          # the sample's channel
    (lambda: normlab.GroupNorm(3, 6), (2, 6, 4), lambda y: y[1, 4:6]),          # the sample's group (channels 4-5)
])
def test_nan_stays_in_its_statistic_set(make, shape, poisoned):
    x = torch.randn(shape)
    x[(1, 2, 0) if len(shape) == 3 and shape[1] == 3 else (1, 5, 0)] = math.nan
    y = make()(x)
    assert torch.isnan(poisoned(y)).all()
    assert int(torch.isnan(y).sum()) == poisoned(y).numel()
