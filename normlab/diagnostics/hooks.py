"""The instruments as training-loop hooks (normlab.train protocol).

train() calls hook(ctx) every step after loss.backward() and before optimizer.step(); ctx has step, model, x, y,
loss_fn, optimizer, lr, loss. Each hook here acts only on its steps (`every` k steps counting from 0, or an explicit
`steps` set), returns rows (train adds "step" and "hook" = the hook's name) and leaves the model, its buffers, its
.grad, the optimizer state and the global RNG stream as it found them.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from .bound import theorem41
from .common import LayerSpec, check_bn_mode
from .distributions import DEFAULT_PERCENTILES, DistributionTracker
from .hessian import hessian_trace, top_eigenvalue
from .ics import ics
from .landscape import SPAN_VGG, _check_multipliers, landscape, multipliers_for
from .spectrum import KINDS, ParamSpec, _check_which, collect_batches, hessian_spectrum


class _Scheduled:
    name = "hook"

    def __init__(self, every: int = 1, steps: Iterable[int] | None = None) -> None:
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every: expected an int >= 1 (act at steps 0, every, 2*every, ...), got {every!r}")
        self.every = every
        self.steps = None if steps is None else frozenset(int(s) for s in steps)

    def due(self, step: int) -> bool:
        return step in self.steps if self.steps is not None else step % self.every == 0

    def __call__(self, ctx: Any) -> list[dict] | dict | None:
        if not self.due(ctx.step):
            return None
        return self.measure(ctx)

    def measure(self, ctx: Any) -> list[dict] | dict:
        raise NotImplementedError


class ICSHook(_Scheduled):
    """Definition 2.1 for `layers` (default all weight layers) with the run's optimizer; rows as ics()."""
    name = "ics"

    def __init__(self, layers: LayerSpec = None, recompute: bool | None = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.layers, self.recompute = layers, recompute

    def measure(self, ctx: Any) -> list[dict]:
        return ics(ctx.model, ctx.loss_fn, ctx.x, ctx.y, ctx.optimizer, self.layers, self.recompute)


class LandscapeHook(_Scheduled):
    """Loss/gradient along -g at s = span x ctx.lr (or multipliers x ctx.lr); one row as landscape()."""
    name = "landscape"

    def __init__(self, span: tuple[float, float] = SPAN_VGG, points: int = 8, spacing: str = "linear",
                 bn_mode: str = "train", multipliers: Sequence[float] | None = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        multipliers_for(1.0, span, points, spacing)   # validate now, not at step 0 of a long run
        if multipliers is not None:
            _check_multipliers(multipliers)
        check_bn_mode(bn_mode)
        self.span, self.points, self.spacing, self.bn_mode = span, points, spacing, bn_mode
        self.multipliers = None if multipliers is None else [float(m) for m in multipliers]

    def measure(self, ctx: Any) -> dict:
        ms = None if self.multipliers is None else [m * ctx.lr for m in self.multipliers]
        row = landscape(ctx.model, ctx.loss_fn, ctx.x, ctx.y, ctx.lr, ms, self.span, self.points, self.spacing,
                        self.bn_mode, loss0=getattr(ctx, "loss", None))
        row["lr"] = ctx.lr
        return row


class HessianHook(_Scheduled):
    """Top eigenvalue (power iteration: at most `iters` products, None = 1000, stopping when the relative residual
    is <= tol) and, when trace_samples > 0, the Hutchinson trace. kind/params as spectrum.HessianOperator."""
    name = "hessian"

    def __init__(self, iters: int | None = None, trace_samples: int = 0, bn_mode: str = "train", seed: int = 0,
                 tol: float = 1e-3, kind: str = "hessian", params: ParamSpec = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        check_bn_mode(bn_mode)
        _check_kind(kind)
        self.iters, self.trace_samples, self.bn_mode, self.seed = iters, trace_samples, bn_mode, seed
        self.tol, self.kind, self.params = tol, kind, params

    def measure(self, ctx: Any) -> dict:
        row = top_eigenvalue(ctx.model, ctx.loss_fn, ctx.x, ctx.y, self.iters, self.tol, self.bn_mode, self.seed,
                             kind=self.kind, params=self.params)
        if self.trace_samples:
            tr = hessian_trace(ctx.model, ctx.loss_fn, ctx.x, ctx.y, self.trace_samples, self.bn_mode, self.seed,
                               kind=self.kind, params=self.params)
            row.update(trace=tr["trace"], trace_stderr=tr["stderr"], trace_samples=tr["samples"],
                       finite=row["finite"] and tr["finite"])
        return row


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")


class SpectrumHook(_Scheduled):
    """Top-k / bottom-k eigenvalues (Lanczos), Hutch++ trace and optionally SLQ nodes/weights; one row as
    spectrum.hessian_spectrum(). data: None (the step's batch), or a fixed iterable of (x, y) batches (materialized
    once, first max_batches) so that every record measures the same loss, averaged over those batches."""
    name = "spectrum"

    def __init__(self, k: int = 5, which: str = "both", kind: str = "hessian", params: ParamSpec = None,
                 bn_mode: str = "train", tol: float = 1e-3, max_iter: int | None = None, trace: bool = True,
                 trace_tol: float = 1e-2, density_probes: int = 0, density_steps: int = 60, data: Any = None,
                 max_batches: int | None = None, seed: int = 0, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        check_bn_mode(bn_mode)
        _check_kind(kind)
        _check_which(which)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        self.data = None if data is None else collect_batches(data, max_batches)
        if self.data == []:
            raise ValueError("data: the loader yielded no batch")
        self.kw = dict(k=k, which=which, kind=kind, params=params, bn_mode=bn_mode, tol=tol, max_iter=max_iter,
                       trace=trace, trace_tol=trace_tol, density_probes=density_probes, density_steps=density_steps,
                       seed=seed)

    def measure(self, ctx: Any) -> dict:
        if self.data is None:
            return hessian_spectrum(ctx.model, ctx.loss_fn, ctx.x, ctx.y, **self.kw)
        row = hessian_spectrum(ctx.model, ctx.loss_fn, self.data, None, **self.kw)
        row["batches"] = len(self.data)
        return row


class DistributionsHook(_Scheduled):
    """Per-unit activation summaries of `layers` on the step's batch at the step's (pre-update) weights; the deltas
    are between consecutive records of this hook (prev_step says which)."""
    name = "distributions"

    def __init__(self, layers: LayerSpec = None, site: str = "output",
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, bins: int = 50,
                 hist_range: tuple[float, float] | None = None, units: Sequence[int] | None = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.tracker = DistributionTracker(layers, site, percentiles, bins, hist_range, units)

    def measure(self, ctx: Any) -> list[dict]:
        return self.tracker.record(ctx.model, ctx.x, ctx.step)


class BoundHook(_Scheduled):
    """Theorem 4.1 identity, bound and shrink factors for every standard BN layer; rows as theorem41()."""
    name = "bound"

    def __init__(self, layers: Sequence[str] | None = None, per_unit: bool = False, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.layers, self.per_unit = layers, per_unit

    def measure(self, ctx: Any) -> list[dict]:
        return theorem41(ctx.model, ctx.loss_fn, ctx.x, ctx.y, self.layers, self.per_unit)


HOOKS = {"ics": ICSHook, "landscape": LandscapeHook, "hessian": HessianHook, "distributions": DistributionsHook,
         "bound": BoundHook, "spectrum": SpectrumHook}


def build_hook(name: str, **kw: Any) -> _Scheduled:
    """HOOKS[name](**kw), e.g. build_hook("ics", layers=[3, 10], every=50) from an experiment's config."""
    if name not in HOOKS:
        raise ValueError(f"name: unknown instrument {name!r}; valid: {', '.join(HOOKS)}")
    return HOOKS[name](**kw)
