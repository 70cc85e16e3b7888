"""The layers' forward passes as functions (as torch.nn.functional is to torch.nn), on normlab's core.

Each is registered with torch.fx.wrap, so FX symbolic tracing records one call_function node per normlab layer
(its buffers and parameters as get_attr inputs) instead of tracing into the shape checks; torch.compile, torch.export
and jit.trace trace through them (plain Python on shapes, the core's ops and the fused custom op).

Shapes: x is (N, C, *) for batch_norm / group_norm / instance_norm, (*, *normalized_shape) for layer_norm /
rms_norm. Every function checks the input's rank and channels and the parameters' shapes (ValueError naming the
argument), and returns an empty output for an input with no values (as torch), leaving running statistics alone.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx

from .. import core


def positive_int(value, name: str) -> int:
    """value as an int (Python or NumPy integer, as torch accepts); ValueError unless it is a positive integer."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected a positive int, got {value!r}") from None
    if out <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return out


def check_param(t: torch.Tensor | None, shape: Sequence[int], name: str) -> None:
    """weight / bias must have exactly `shape` (a 1-element or wrong-size parameter never broadcasts, as torch)."""
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected a tensor of shape {tuple(shape)}, got shape {tuple(t.shape)}")


def _check_channels(x: torch.Tensor, c: int) -> None:
    if x.dim() < 2 or x.shape[1] != c:
        raise ValueError(f"input: expected {c} channels in dim 1 (num_features), got input of shape {tuple(x.shape)}")


def _empty(x: torch.Tensor) -> torch.Tensor:
    """The output for an input with no values: an empty tensor of x's shape (still part of the graph)."""
    return x.clone()


@torch.no_grad()
def update_running(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                   m: int, factor: float | torch.Tensor) -> None:
    """EMA of the batch mean and the *unbiased* batch variance (Alg. 2 step 10: m / (m - 1)), in place."""
    if not torch.compiler.is_compiling() and torch._C._functorch.is_batchedtensor(mean) \
            and not torch._C._functorch.is_batchedtensor(running_mean):
        raise RuntimeError("normlab: batch statistics under torch.func.vmap would update the running statistics, "
                           "which are not batched (torch.nn's BatchNorm raises here too); use the module in eval "
                           "mode, track_running_stats=False, or torch.func.replace_all_batch_norm_modules_")
    unbiased = var * (m / (m - 1)) if m > 1 else var
    if isinstance(factor, torch.Tensor):
        factor = factor.to(running_mean.dtype)
    running_mean.lerp_(mean.reshape(running_mean.shape).to(running_mean.dtype), factor)
    running_var.lerp_(unbiased.reshape(running_var.shape).to(running_var.dtype), factor)


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None, bias: torch.Tensor | None, num_batches_tracked: torch.Tensor | None,
               training: bool, momentum: float | None, eps: float, num_features: int,
               ranks: tuple[int, ...] | None = None, name: str = "BatchNorm") -> torch.Tensor:
    """BN (Ioffe & Szegedy Alg. 1 / 2) with torch.nn's module rules. x: (N, C, *) with x.dim() in `ranks`.

    Training with running statistics: num_batches_tracked += 1, then running = lerp(running, batch, factor) with
    factor = momentum, or 1 / num_batches_tracked for momentum=None. Eval with running statistics: Alg. 2.
    """
    core.check_float(x)
    nd = x.dim()
    if (ranks is not None and nd not in ranks) or nd < 2:
        want = "tensor (N, C, ...) of at least 2 dimensions" if ranks is None else \
            " or ".join(f"{r}D" for r in ranks) + " tensor (N, C, ...)"
        raise ValueError(f"input: {name} expects a {want}, got {nd}D input of shape {tuple(x.shape)}")
    _check_channels(x, num_features)
    check_param(weight, (num_features,), "weight")
    check_param(bias, (num_features,), "bias")
    dims, shape = (0, *range(2, nd)), core.channel_shape(nd)
    track = running_mean is not None and running_var is not None
    if training and track and num_batches_tracked is not None:
        num_batches_tracked.add_(1)   # torch counts every training call, empty ones included
    if not training and track:
        if torch.compiler.is_exporting():
            # Deployment: inference BN is a fixed per-channel affine map; torch's op exports as ONNX
            # BatchNormalization, which exporters and runtimes fold into the convolution before it (same numbers).
            return torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        return core.normalize_with_affine(x, running_mean.view(shape), running_var.view(shape), eps, weight, bias,
                                          shape)
    m = core.count(x, dims)
    if m == 1:   # as torch: also in eval without running statistics, where it would silently give 0
        raise ValueError(f"input: expected more than 1 value per channel when normalizing with batch statistics "
                         f"(training, or track_running_stats=False), got input of shape {tuple(x.shape)}")
    if x.numel() == 0:
        return _empty(x)
    y, mean, var = core.normalize_affine(x, dims, eps, weight, bias, shape)
    if training and track:
        if momentum is None:
            # a tensor, not float(...): no graph break under torch.compile; exact in the buffers' dtype
            factor = num_batches_tracked.to(running_mean.dtype).reciprocal() if num_batches_tracked is not None \
                else 0.0
        else:
            factor = momentum
        update_running(running_mean, running_var, mean, var, m, factor)
    return y


def instance_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                  weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float | None,
                  eps: float, num_features: int, spatial: int, name: str = "InstanceNorm") -> torch.Tensor:
    """IN: statistics per sample and channel over the `spatial` trailing dims; (C, *) unbatched input accepted.

    torch's rules: the running statistics follow the batch average of the per-instance statistics; momentum=None
    means factor 0 and num_batches_tracked is never counted.
    """
    core.check_float(x)
    batched = spatial + 2
    if x.dim() not in (batched - 1, batched):
        raise ValueError(f"input: {name} expects a {batched - 1}D (unbatched) or {batched}D tensor, "
                         f"got {x.dim()}D input of shape {tuple(x.shape)}")
    if x.dim() == batched - 1:
        return instance_norm(x.unsqueeze(0), running_mean, running_var, weight, bias, training, momentum, eps,
                             num_features, spatial, name).squeeze(0)
    if x.shape[1] != num_features:
        if weight is not None or bias is not None:
            _check_channels(x, num_features)
        import warnings
        warnings.warn(f"input has {x.shape[1]} channels but num_features={num_features}; "
                      "with affine=False the statistics are still per channel", stacklevel=3)
    check_param(weight, (num_features,), "weight")
    check_param(bias, (num_features,), "bias")
    dims, shape = tuple(range(2, x.dim())), core.channel_shape(x.dim())
    track = running_mean is not None and running_var is not None
    if not training and track:
        if torch.compiler.is_exporting():
            # Deployment: inference BN is a fixed per-channel affine map; torch's op exports as ONNX
            # BatchNormalization, which exporters and runtimes fold into the convolution before it (same numbers).
            return torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        return core.normalize_with_affine(x, running_mean.view(shape), running_var.view(shape), eps, weight, bias,
                                          shape)
    m = core.count(x, dims)
    if m == 1:   # as torch: whenever instance statistics are used, training or not
        raise ValueError(f"input: expected more than 1 spatial element per channel when normalizing with "
                         f"instance statistics, got input of shape {tuple(x.shape)}")
    if x.numel() == 0:
        return _empty(x)
    y, mean, var = core.normalize_affine(x, dims, eps, weight, bias, shape)
    if training and track:
        update_running(running_mean, running_var, mean.mean(0), var.mean(0), m, 0.0 if momentum is None else momentum)
    return y


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float, num_channels: int) -> torch.Tensor:
    """GN (Wu & He Eq. 1-3): per sample over C/G channels and all positions; per-channel affine."""
    core.check_float(x)
    if x.dim() < 2 or x.shape[1] != num_channels:
        raise ValueError(f"input: expected (N, {num_channels}, *) with num_channels={num_channels} in dim 1, "
                         f"got input of shape {tuple(x.shape)}")
    check_param(weight, (num_channels,), "weight")
    check_param(bias, (num_channels,), "bias")
    if x.numel() == 0:
        return _empty(x)
    n, positions = x.shape[0], core.count(x, tuple(range(2, x.dim())))
    # (N, G, C/G, positions): the per-channel affine broadcasts as (G, C/G, 1), so the core can fuse it
    xg = x.reshape(n, num_groups, num_channels // num_groups, positions)
    y, _, _ = core.normalize_affine(xg, (2, 3), eps, weight, bias, (num_groups, -1, 1))
    return y.view(x.shape)


def layer_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LN over the trailing `normalized_shape` dims; elementwise affine of that shape."""
    core.check_float(x)
    k = len(normalized_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k:]) != tuple(normalized_shape):
        raise ValueError(f"input: expected trailing dims equal to normalized_shape={list(normalized_shape)}, "
                         f"got input of shape {tuple(x.shape)}")
    check_param(weight, normalized_shape, "weight")
    check_param(bias, normalized_shape, "bias")
    if x.numel() == 0:
        return _empty(x)
    y, _, _ = core.normalize_affine(x, tuple(range(x.dim() - k, x.dim())), eps, weight, bias, normalized_shape)
    return y


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                  num_channels: int) -> torch.Tensor:
    """Channels-first LN (timm's LayerNorm2d): per sample and position over the C channels of (N, C, *)."""
    core.check_float(x)
    _check_channels(x, num_channels)
    check_param(weight, (num_channels,), "weight")
    check_param(bias, (num_channels,), "bias")
    if x.numel() == 0:
        return _empty(x)
    y, _, _ = core.normalize_affine(x, (1,), eps, weight, bias, core.channel_shape(x.dim())[1:])
    return y


def rms_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
             eps: float | None) -> torch.Tensor:
    """RMSNorm (torch.nn.RMSNorm's contract): x / sqrt(mean(x^2) + eps) * weight over the trailing dims;
    eps=None means torch.finfo(x.dtype).eps."""
    core.check_float(x)
    k = len(normalized_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k:]) != tuple(normalized_shape):
        raise ValueError(f"input: expected trailing dims equal to normalized_shape={list(normalized_shape)}, "
                         f"got input of shape {tuple(x.shape)}")
    check_param(weight, normalized_shape, "weight")
    if x.numel() == 0:
        return _empty(x)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    xhat = core.rms_normalize(x, tuple(range(x.dim() - k, x.dim())), eps)
    return core.affine(xhat, weight, None, normalized_shape).to(x.dtype)


for _fn in ("batch_norm", "instance_norm", "group_norm", "layer_norm", "layer_norm_2d", "rms_norm"):
    torch.fx.wrap(_fn)


def fx_leaf(module: torch.nn.Module, x) -> torch.fx.Proxy | None:
    """Under FX symbolic tracing, record `module` as one call_module node (a leaf, as torch.nn's modules are) and
    return its Proxy; None otherwise. For the variants, whose forward has data-dependent Python."""
    if isinstance(x, torch.fx.Proxy):
        tracer = x.tracer
        return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})
    return None
