"""Pick a norm layer by name (after timm's create_norm): norm_layer("gn:32", 64) -> GroupNorm(32, 64)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d
from .groupnorm import GroupNorm, InstanceNorm1d, InstanceNorm2d

# spec name -> builder(num_channels, ndim, arg) ; ndim is 1 for (N, C[, L]) inputs and 2 for (N, C, H, W) images
_BUILDERS: dict[str, Callable[[int, int, str | None], nn.Module]] = {
    "none": lambda c, nd, a: nn.Identity(),
    "bn": lambda c, nd, a: (BatchNorm1d if nd == 1 else BatchNorm2d)(c),
    "gn": lambda c, nd, a: GroupNorm(min(int(a or 32), c), c),
    "ln": lambda c, nd, a: GroupNorm(1, c),   # LN over (C, H, W) as in Wu & He; per-channel affine
    "in": lambda c, nd, a: (InstanceNorm1d if nd == 1 else InstanceNorm2d)(c, affine=True),
}


def register(name: str, builder: Callable[[int, int, str | None], nn.Module]) -> None:
    """Add a spec name; builder(num_channels, ndim, arg_after_colon_or_None) -> module."""
    _BUILDERS[name] = builder


def valid_specs() -> list[str]:
    return sorted(_BUILDERS)


def norm_layer(spec: str, num_channels: int, ndim: int = 2) -> nn.Module:
    """Build the norm named by `spec` ("bn", "gn:32", "ln", "in", "none", ...) for `num_channels` channels.

    ndim: 1 for dense (N, C) / sequence (N, C, L) inputs, 2 for images (N, C, H, W).
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string such as 'bn' or 'gn:32', got {type(spec).__name__}")
    name, _, arg = spec.strip().lower().partition(":")
    if name not in _BUILDERS:
        raise ValueError(f"spec: unknown norm {spec!r}; valid: {', '.join(valid_specs())} (some take ':N')")
    if ndim not in (1, 2):
        raise ValueError(f"ndim: expected 1 (dense) or 2 (images), got {ndim!r}")
    try:
        return _BUILDERS[name](num_channels, ndim, arg or None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spec: {spec!r} does not fit num_channels={num_channels}: {e}") from e
