"""Model-level utilities on the layers: swapping torch.nn norm layers for normlab's and back."""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import layers

# torch.nn class -> normlab class; constructor arguments are the same on both sides.
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: layers.BatchNorm1d,
    nn.BatchNorm2d: layers.BatchNorm2d,
    nn.BatchNorm3d: layers.BatchNorm3d,
    nn.GroupNorm: layers.GroupNorm,
    nn.LayerNorm: layers.LayerNorm,
    nn.InstanceNorm1d: layers.InstanceNorm1d,
    nn.InstanceNorm2d: layers.InstanceNorm2d,
    nn.InstanceNorm3d: layers.InstanceNorm3d,
}


def _init_args(module: nn.Module) -> dict:
    if isinstance(module, (nn.GroupNorm, layers.GroupNorm)):
        return dict(num_groups=module.num_groups, num_channels=module.num_channels, eps=module.eps,
                    affine=module.affine)
    if isinstance(module, (nn.LayerNorm, layers.LayerNorm)):
        return dict(normalized_shape=module.normalized_shape, eps=module.eps,
                    elementwise_affine=module.elementwise_affine, bias=module.bias is not None)
    return dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats)


def _swap(module: nn.Module, table: dict) -> nn.Module:
    cls = table.get(type(module))
    if cls is None:
        for name, child in module.named_children():
            setattr(module, name, _swap(child, table))
        return module
    ref = next(iter(module.state_dict().values()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None and ref.is_floating_point() else {}
    new = cls(**_init_args(module), **factory)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


def convert(model: nn.Module, to: str = "normlab", inplace: bool = False) -> nn.Module:
    """Swap every torch.nn norm layer of `model` for its normlab twin (to="normlab") or back (to="torch").

    Weights, buffers and train/eval mode are kept; the model is copied first unless inplace=True.
    """
    if to not in ("normlab", "torch"):
        raise ValueError(f"to: expected 'normlab' or 'torch', got {to!r}")
    table = TWINS if to == "normlab" else {v: k for k, v in TWINS.items()}
    model = model if inplace else copy.deepcopy(model)
    return _swap(model, table)
