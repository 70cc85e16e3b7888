"""Pick a norm layer by name (after timm's create_norm): norm_layer("gn:32", 64) -> GroupNorm(32, 64).

Specs (docs/variants.md): none, bn, gn[:G], ln, ln2d, in, noisy-bn, l1-bn, l2-bn, linf-bn, brn[:r_max:d_max],
ghost-bn[:V], frozen-bn. ndim=1 builds the 1d layer for dense (N, C) / sequence (N, C, L) inputs, ndim=2 the 2d one.

As a model constructor's `norm_layer=` (timm / torchvision style): norm_layer("gn:32") without a channel count
returns a callable `(num_features, **kwargs) -> module` taking eps, momentum, affine, track_running_stats, bias,
device and dtype (docs/dropin.md); an argument a layer has no use for (momentum for GroupNorm) is dropped.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from ..registry import Registry
from .batchnorm import BatchNorm1d, BatchNorm2d
from .groupnorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, LayerNorm2d
from .renorm import BatchRenorm1d, BatchRenorm2d
from .variants import GhostBatchNorm1d, GhostBatchNorm2d, LpBatchNorm1d, LpBatchNorm2d, NoisyBatchNorm1d, \
    NoisyBatchNorm2d

Builder = Callable[..., nn.Module]   # (num_channels, ndim, arg, **kwargs) -> module

# spec name -> builder(num_channels, ndim, arg_after_colon_or_None, **kwargs); ndim is 1 for (N, C[, L]) inputs and 2
# for (N, C, H, W) images. A builder's `form` attribute (e.g. "gn[:G]") is how error messages write the spec.
NORMS = Registry("norm")

# the keyword arguments a model constructor may pass to norm_layer(num_features, **kwargs)
KWARGS = ("eps", "momentum", "affine", "track_running_stats", "bias", "device", "dtype")
_BN_KW = KWARGS
_GN_KW = ("eps", "affine", "bias", "device", "dtype")


def _take(kw: dict, allowed: tuple[str, ...], rename: dict[str, str] | None = None) -> dict:
    """The kwargs in `allowed` (renamed per `rename`); the other known ones dropped; TypeError for unknown ones."""
    unknown = sorted(set(kw) - set(KWARGS))
    if unknown:
        raise TypeError(f"norm_layer: unexpected keyword argument(s) {unknown}; accepted: {list(KWARGS)}")
    rename = rename or {}
    return {rename.get(k, k): v for k, v in kw.items() if k in allowed}


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise ValueError(f"'{name}' takes no ':' argument, got '{name}:{arg}'")


def _plain(name: str, one_d: type, two_d: type, **kw) -> Builder:
    def build(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
        _no_arg(name, arg)
        return (one_d if nd == 1 else two_d)(c, **{**kw, **_take(extra, _BN_KW)})
    return build


def _lp(name: str, p: float) -> Builder:
    def build(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
        _no_arg(name, arg)
        return (LpBatchNorm1d if nd == 1 else LpBatchNorm2d)(c, p, **_take(extra, _BN_KW))
    return build


def _int(arg: str, what: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{what}: expected an int after ':', got {arg!r}") from None


def _brn(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    """'brn': the paper's warm-up schedule (r_max 3, d_max 5); 'brn:R:D': r_max = R, d_max = D from the first step."""
    cls = BatchRenorm1d if nd == 1 else BatchRenorm2d
    kw = _take(extra, _BN_KW)
    if arg is None:
        return cls(c, **kw)
    parts = arg.split(":")
    try:
        r_max, d_max = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"brn: expected 'brn:R:D' with two numbers r_max and d_max, got 'brn:{arg}'") from None
    return cls(c, r_max=r_max, d_max=d_max, warmup_steps=0, r_max_steps=0, d_max_steps=0, **kw)


def _ghost(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    v = 32 if arg is None else _int(arg, "ghost-bn virtual batch size")
    return (GhostBatchNorm1d if nd == 1 else GhostBatchNorm2d)(c, v, **_take(extra, _BN_KW))


def _frozen(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    _no_arg("frozen-bn", arg)
    from .frozen import FrozenBatchNorm1d, FrozenBatchNorm2d   # lazy: frozen.py belongs to another module owner
    return (FrozenBatchNorm1d if nd == 1 else FrozenBatchNorm2d)(c, **_take(extra, _GN_KW))


def _gn(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    return GroupNorm(min(32 if arg is None else _int(arg, "gn groups"), c), c, **_take(extra, _GN_KW))


def _ln(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    _no_arg("ln", arg)
    return GroupNorm(1, c, **_take(extra, _GN_KW))   # LN over (C, H, W) as in Wu & He; per-channel affine


def _ln2d(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    _no_arg("ln2d", arg)
    return LayerNorm2d(c, **_take(extra, _GN_KW))   # channels-first LN per position (timm's LayerNorm2d)


def _none(c: int, nd: int, arg: str | None, **extra) -> nn.Module:
    _no_arg("none", arg)
    _take(extra, ())
    return nn.Identity()


NORMS.register("none", _none)
NORMS.register("bn", _plain("bn", BatchNorm1d, BatchNorm2d))
NORMS.register("gn", _gn)
NORMS.register("ln", _ln)
NORMS.register("ln2d", _ln2d)
NORMS.register("in", _plain("in", InstanceNorm1d, InstanceNorm2d, affine=True))
NORMS.register("noisy-bn", _plain("noisy-bn", NoisyBatchNorm1d, NoisyBatchNorm2d))
NORMS.register("l1-bn", _lp("l1-bn", 1))
NORMS.register("l2-bn", _lp("l2-bn", 2))
NORMS.register("linf-bn", _lp("linf-bn", math.inf))
NORMS.register("brn", _brn)
NORMS.register("ghost-bn", _ghost)
NORMS.register("frozen-bn", _frozen)
# the factory reads NORMS through this name (a test swaps in a copy to register a throwaway spec); forms: how each
# spec is written in error messages, with its ':' arguments
_BUILDERS = NORMS
_FORMS: dict[str, str] = {"gn": "gn[:G]", "brn": "brn[:R:D]", "ghost-bn": "ghost-bn[:V]"}


def register(name: str, builder: Builder | None = None, form: str | None = None):
    """Add a spec name: builder(num_channels, ndim, arg_after_colon_or_None, **kwargs) -> module. form: how the spec
    is written in error messages, e.g. 'foo[:N]'. Without `builder`, a decorator for the builder, written next to the
    layer it builds:

        @register("rms", form="rms")
        def _rms(c, nd, arg, **kw): ...
    """
    def add(b: Builder) -> Builder:
        _BUILDERS[name] = b
        if form is not None:
            _FORMS[name] = form
        return b
    return add if builder is None else add(builder)


def forms() -> str:
    """Every spec as it is written, with its ':' arguments: 'bn, brn[:R:D], ..., gn[:G], ...'."""
    return ", ".join(_FORMS.get(n, n) for n in valid_specs())


def valid_specs() -> list[str]:
    """The registered spec names (without their ':' arguments)."""
    return sorted(_BUILDERS)


def norm_layer(spec: str, num_channels: int | None = None, ndim: int = 2, **kwargs):
    """Build the norm named by `spec` ("bn", "gn:32", "ghost-bn:32", "brn:1.5:0.5", ...) for `num_channels` channels.

    ndim: 1 for dense (N, C) / sequence (N, C, L) inputs, 2 for images (N, C, H, W). kwargs: any of KWARGS (eps,
    momentum, affine, track_running_stats, bias, device, dtype). Without num_channels: the factory
    `(num_features, **kwargs) -> module` for a model constructor's norm_layer= argument, e.g.
    resnet(norm_layer=norm_layer("gn:32")).

    Examples::

        >>> import torch
        >>> gn = norm_layer("gn:4", 8)
        >>> type(gn).__name__, gn.num_groups, isinstance(gn, torch.nn.GroupNorm)
        ('GroupNorm', 4, True)
        >>> make = norm_layer("bn")                      # a factory, as a model constructor's norm_layer= wants
        >>> bn = make(16, eps=1e-3, momentum=None)
        >>> type(bn).__name__, bn.eps, bn.momentum
        ('BatchNorm2d', 0.001, None)
        >>> norm_layer("bn", 8, ndim=1)(torch.randn(5, 8)).shape
        torch.Size([5, 8])
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a string such as 'bn' or 'gn:32', got {type(spec).__name__}")
    name, sep, arg = spec.strip().lower().partition(":")
    if name not in _BUILDERS:
        raise ValueError(f"spec: unknown norm {spec!r}; valid: {forms()}")
    if ndim not in (1, 2):
        raise ValueError(f"ndim: expected 1 (dense) or 2 (images), got {ndim!r}")
    if num_channels is None:
        return NormFactory(spec, ndim, kwargs)
    try:
        return _BUILDERS[name](num_channels, ndim, arg if sep else None, **kwargs)
    except ValueError as e:
        raise ValueError(f"spec: cannot build {spec!r} for num_channels={num_channels}: {e}") from e


class NormFactory:
    """norm_layer(spec) without a channel count: `factory(num_features, **kwargs)` builds the layer (defaults from
    the factory's own kwargs, overridden per call). Picklable, with a readable repr."""

    def __init__(self, spec: str, ndim: int = 2, kwargs: dict | None = None) -> None:
        self.spec, self.ndim, self.kwargs = spec, ndim, dict(kwargs or {})

    def __call__(self, num_features: int, **kwargs) -> nn.Module:
        return norm_layer(self.spec, num_features, self.ndim, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        return f"norm_layer({self.spec!r}, ndim={self.ndim}{''.join(f', {k}={v!r}' for k, v in self.kwargs.items())})"
