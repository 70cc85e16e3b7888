"""Pick a norm layer by name (after timm's create_norm): norm_layer("gn:32", 64) -> GroupNorm(32, 64).

Specs (docs/variants.md): none, bn, gn[:G], ln, in, noisy-bn, l1-bn, l2-bn, linf-bn, brn[:r_max:d_max],
ghost-bn[:V], frozen-bn. ndim=1 builds the 1d layer for dense (N, C) / sequence (N, C, L) inputs, ndim=2 the 2d one.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d
from .groupnorm import GroupNorm, InstanceNorm1d, InstanceNorm2d
from .renorm import BatchRenorm1d, BatchRenorm2d
from .variants import GhostBatchNorm1d, GhostBatchNorm2d, LpBatchNorm1d, LpBatchNorm2d, NoisyBatchNorm1d, \
    NoisyBatchNorm2d

Builder = Callable[[int, int, "str | None"], nn.Module]


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise ValueError(f"'{name}' takes no ':' argument, got '{name}:{arg}'")


def _plain(name: str, one_d: type, two_d: type, **kw) -> Builder:
    def build(c: int, nd: int, arg: str | None) -> nn.Module:
        _no_arg(name, arg)
        return (one_d if nd == 1 else two_d)(c, **kw)
    return build


def _lp(name: str, p: float) -> Builder:
    def build(c: int, nd: int, arg: str | None) -> nn.Module:
        _no_arg(name, arg)
        return (LpBatchNorm1d if nd == 1 else LpBatchNorm2d)(c, p)
    return build


def _int(arg: str, what: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{what}: expected an int after ':', got {arg!r}") from None


def _brn(c: int, nd: int, arg: str | None) -> nn.Module:
    """'brn': the paper's warm-up schedule (r_max 3, d_max 5); 'brn:R:D': r_max = R, d_max = D from the first step."""
    cls = BatchRenorm1d if nd == 1 else BatchRenorm2d
    if arg is None:
        return cls(c)
    parts = arg.split(":")
    try:
        r_max, d_max = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"brn: expected 'brn:R:D' with two numbers r_max and d_max, got 'brn:{arg}'") from None
    return cls(c, r_max=r_max, d_max=d_max, warmup_steps=0, r_max_steps=0, d_max_steps=0)


def _ghost(c: int, nd: int, arg: str | None) -> nn.Module:
    v = 32 if arg is None else _int(arg, "ghost-bn virtual batch size")
    return (GhostBatchNorm1d if nd == 1 else GhostBatchNorm2d)(c, v)


def _frozen(c: int, nd: int, arg: str | None) -> nn.Module:
    _no_arg("frozen-bn", arg)
    from .frozen import FrozenBatchNorm1d, FrozenBatchNorm2d   # lazy: frozen.py belongs to another module owner
    return (FrozenBatchNorm1d if nd == 1 else FrozenBatchNorm2d)(c)


def _gn(c: int, nd: int, arg: str | None) -> nn.Module:
    return GroupNorm(min(32 if arg is None else _int(arg, "gn groups"), c), c)


def _ln(c: int, nd: int, arg: str | None) -> nn.Module:
    _no_arg("ln", arg)
    return GroupNorm(1, c)   # LN over (C, H, W) as in Wu & He; per-channel affine


def _none(c: int, nd: int, arg: str | None) -> nn.Module:
    _no_arg("none", arg)
    return nn.Identity()


# spec name -> builder(num_channels, ndim, arg) ; ndim is 1 for (N, C[, L]) inputs and 2 for (N, C, H, W) images
_BUILDERS: dict[str, Builder] = {
    "none": _none,
    "bn": _plain("bn", BatchNorm1d, BatchNorm2d),
    "gn": _gn,
    "ln": _ln,
    "in": _plain("in", InstanceNorm1d, InstanceNorm2d, affine=True),
    "noisy-bn": _plain("noisy-bn", NoisyBatchNorm1d, NoisyBatchNorm2d),
    "l1-bn": _lp("l1-bn", 1),
    "l2-bn": _lp("l2-bn", 2),
    "linf-bn": _lp("linf-bn", math.inf),
    "brn": _brn,
    "ghost-bn": _ghost,
    "frozen-bn": _frozen,
}
# how each spec is written, for error messages; register() adds bare names
_FORMS: dict[str, str] = {"gn": "gn[:G]", "brn": "brn[:R:D]", "ghost-bn": "ghost-bn[:V]"}


def register(name: str, builder: Builder, form: str | None = None) -> None:
    """Add a spec name; builder(num_channels, ndim, arg_after_colon_or_None) -> module. form: e.g. 'foo[:N]'."""
    _BUILDERS[name] = builder
    if form is not None:
        _FORMS[name] = form


def valid_specs() -> list[str]:
    """The registered spec names (without their ':' arguments)."""
    return sorted(_BUILDERS)


def norm_layer(spec: str, num_channels: int, ndim: int = 2) -> nn.Module:
    """Build the norm named by `spec` ("bn", "gn:32", "ghost-bn:32", "brn:1.5:0.5", ...) for `num_channels` channels.

    ndim: 1 for dense (N, C) / sequence (N, C, L) inputs, 2 for images (N, C, H, W).
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string such as 'bn' or 'gn:32', got {type(spec).__name__}")
    name, sep, arg = spec.strip().lower().partition(":")
    if name not in _BUILDERS:
        forms = ", ".join(_FORMS.get(n, n) for n in valid_specs())
        raise ValueError(f"spec: unknown norm {spec!r}; valid: {forms}")
    if ndim not in (1, 2):
        raise ValueError(f"ndim: expected 1 (dense) or 2 (images), got {ndim!r}")
    try:
        return _BUILDERS[name](num_channels, ndim, arg if sep else None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spec: cannot build {spec!r} for num_channels={num_channels}: {e}") from e
