"""The path `torch.jit.script` takes: torch.nn's forward rules on torch's own ops, as TorchScript functions.

TorchScript compiles Python source into its own language, which has no autograd.Function and no Python custom ops
with a Python autograd, so normlab's core (the hand-written backward, the fused kernels) cannot be scripted. Under
`torch.jit.is_scripting()` each layer's forward returns one of these functions instead (TorchScript compiles only that
branch): torch.nn's numbers, from torch's ATen ops, with the layer's own parameters and buffers, and a scripted model
saved with torch.jit.save loads and runs without normlab. docs/dropin.md says what differs from eager normlab.

Shapes as normlab.layers.functional: x is (N, C, *) for batch_norm / group_norm / instance_norm / layer_norm_2d and
(*, *normalized_shape) for layer_norm / rms_norm.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as TF


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None, bias: torch.Tensor | None, num_batches_tracked: torch.Tensor | None,
               training: bool, momentum: float | None, eps: float) -> torch.Tensor:
    """torch.nn's _BatchNorm.forward: training counts the batch in num_batches_tracked and updates the running
    statistics by lerp with factor momentum (1 / num_batches_tracked for momentum=None); eval uses them."""
    factor = 0.0 if momentum is None else momentum
    track = running_mean is not None and running_var is not None
    if training and track and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / float(num_batches_tracked)
    return TF.batch_norm(x, running_mean, running_var, weight, bias, training or not track, factor, eps)


def instance_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                  weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float | None,
                  eps: float, num_features: int, spatial: int) -> torch.Tensor:
    """torch.nn's _InstanceNorm.forward: statistics per sample and channel over the `spatial` trailing dims;
    unbatched (C, *) input accepted; running statistics (if tracked) follow the batch average, momentum=None -> 0."""
    if x.dim() != spatial + 1 and x.dim() != spatial + 2:
        raise ValueError("input: expected a {}D (unbatched) or {}D tensor, got {}D input".format(
            spatial + 1, spatial + 2, x.dim()))
    unbatched = x.dim() == spatial + 1
    if unbatched:
        x = x.unsqueeze(0)
    if x.size(1) != num_features:
        if weight is not None or bias is not None:
            raise ValueError("input: expected {} channels in dim 1 (num_features), got {}".format(
                num_features, x.size(1)))
        warnings.warn("input has {} channels but num_features={}; with affine=False the statistics are still per "
                      "channel".format(x.size(1), num_features))
    track = running_mean is not None and running_var is not None
    y = TF.instance_norm(x, running_mean, running_var, weight, bias, training or not track,
                         0.0 if momentum is None else momentum, eps)
    return y.squeeze(0) if unbatched else y


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  eps: float) -> torch.Tensor:
    """Channels-first LN (timm's LayerNorm2d) as timm computes it: (N, C, *) -> channels last -> LN over C -> back."""
    if x.dim() < 2:
        raise ValueError("input: expected (N, C, *) of at least 2 dimensions, got {}D input".format(x.dim()))
    return TF.layer_norm(x.movedim(1, -1), [x.size(1)], weight, bias, eps).movedim(-1, 1)
