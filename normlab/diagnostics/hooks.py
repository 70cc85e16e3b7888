"""The instruments as training-loop hooks (normlab.train protocol), each registered in INSTRUMENTS (instrument.py).

train() calls hook(ctx) every step after loss.backward() and before optimizer.step(); ctx has step, model, x, y,
loss_fn, optimizer, lr, loss. Each hook here acts only on its steps (`every` k steps counting from 0, or an explicit
`steps` set), returns rows of its declared schema (`fields`; train adds "step" and "hook" = the hook's name) and
leaves the model, its buffers, its .grad, the optimizer state and the global RNG stream as it found them.
`normlab diagnose` runs the same hooks (built by `from_options`) on a checkpoint.

Example: what train() does at a step, by hand on one batch (a Context carries what the loop's StepContext does)::

    >>> import torch, torch.nn as nn, normlab
    >>> from normlab.diagnostics import Context
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), normlab.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    >>> ctx = Context(model, nn.functional.cross_entropy, torch.randn(32, 4), torch.randint(0, 3, (32,)), step=20)
    >>> rows = BoundHook(every=10)(ctx)          # step 20 is due: one row per BN layer
    >>> [(r["layer"], r["identity_holds"], r["bound_holds"]) for r in rows]
    [('1', True, True)]
    >>> DistributionsHook(layers=[1], every=7)(ctx) is None    # step 20 is not a multiple of 7
    True
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from .bound import theorem41
from .common import LayerSpec, check_bn_mode
from .distributions import DEFAULT_PERCENTILES, DistributionTracker
from .hessian import hessian_trace, top_eigenvalue
from .ics import ics
from .instrument import INSTRUMENTS, Instrument, Options
from .landscape import SPAN_VGG, _check_multipliers, landscape, multipliers_for
from .spectrum import KINDS, ParamSpec, _check_which, collect_batches, hessian_spectrum


_Scheduled = Instrument   # the base class's former name


@INSTRUMENTS.register("ics")
class ICSHook(Instrument):
    """Definition 2.1 for `layers` (default all weight layers) with the run's optimizer; rows as ics()."""
    name = "ics"
    fields = ("layer", "index", "n_earlier", "l2", "rel_l2", "cos", "g_norm", "g_prime_norm", "recomputed", "finite")
    needs = {"optimizer": "ics simulates the optimizer's update; pass the run's optimizer"}
    in_diagnose = True

    def __init__(self, layers: LayerSpec = None, recompute: bool | None = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.layers, self.recompute = layers, recompute

    def measure(self, ctx: Any) -> list[dict]:
        return ics(ctx.model, ctx.loss_fn, ctx.x, ctx.y, ctx.optimizer, self.layers, self.recompute)

    @classmethod
    def from_options(cls, opts: Options) -> "ICSHook":
        return cls(opts.layers)


@INSTRUMENTS.register("landscape")
class LandscapeHook(Instrument):
    """Loss/gradient along -g at s = span x ctx.lr (or multipliers x ctx.lr); one row as landscape() and "lr"."""
    name = "landscape"
    fields = ("bn_mode", "lr", "multipliers", "losses", "loss0", "loss_range", "grad_norm", "pred", "pred_max",
              "pred_mean", "beta", "beta_max", "finite")
    needs = {"lr": "landscape probes s = span x lr; pass the learning rate"}
    in_diagnose = True
    whole_model = True

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

    @classmethod
    def from_options(cls, opts: Options) -> "LandscapeHook":
        return cls(opts.span, opts.points, opts.spacing, opts.bn_mode)


@INSTRUMENTS.register("hessian")
class HessianHook(Instrument):
    """Top eigenvalue (power iteration: at most `iters` products, None = 1000, stopping when the relative residual
    is <= tol) and, when trace_samples > 0, the Hutchinson trace (trace, trace_stderr, trace_samples).
    kind/params as spectrum.HessianOperator."""
    name = "hessian"
    fields = ("kind", "bn_mode", "eigenvalue", "iterations", "residual", "rel_change", "converged", "history", "loss",
              "finite")
    optional = ("trace", "trace_stderr", "trace_samples")
    in_diagnose = True

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

    @classmethod
    def from_options(cls, opts: Options) -> "HessianHook":
        # --layers selects the Hessian's parameter block (that layer's Hessian)
        return cls(opts.iters, opts.trace_samples, opts.bn_mode, opts.seed, params=opts.layers)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")


@INSTRUMENTS.register("spectrum")
class SpectrumHook(Instrument):
    """Top-k / bottom-k eigenvalues (Lanczos), Hutch++ trace and optionally SLQ nodes/weights; one row as
    spectrum.hessian_spectrum(). data: None (the step's batch), or a fixed iterable of (x, y) batches (materialized
    once, first max_batches) so that every record measures the same loss, averaged over those batches."""
    name = "spectrum"
    fields = ("kind", "bn_mode", "params", "dim", "loss", "tol", "iterations", "breakdowns", "converged", "finite")
    optional = ("top", "top_residuals", "bottom", "bottom_residuals", "trace", "trace_stderr", "trace_converged",
                "trace_iterations", "density_nodes", "density_weights", "density_moments", "density_converged",
                "batches")   # by `which`, `trace`, `density_probes` and `data`

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


@INSTRUMENTS.register("distributions")
class DistributionsHook(Instrument):
    """Per-unit activation summaries of `layers` on the step's batch at the step's (pre-update) weights; the deltas
    are between consecutive records of this hook (prev_step says which)."""
    name = "distributions"
    fields = ("layer", "index", "site", "units", "m", "percentiles", "mean", "var", "layer_mean", "layer_var",
              "hist", "prev_step", "dmean", "dvar", "dmean_l2", "dvar_l2", "finite")
    optional = ("unit_ids",)
    in_diagnose = True

    def __init__(self, layers: LayerSpec = None, site: str = "output",
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, bins: int = 50,
                 hist_range: tuple[float, float] | None = None, units: Sequence[int] | None = None, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.tracker = DistributionTracker(layers, site, percentiles, bins, hist_range, units)

    def measure(self, ctx: Any) -> list[dict]:
        return self.tracker.record(ctx.model, ctx.x, ctx.step)

    @classmethod
    def from_options(cls, opts: Options) -> "DistributionsHook":
        return cls(opts.layers, percentiles=opts.percentiles)


@INSTRUMENTS.register("bound")
class BoundHook(Instrument):
    """Theorem 4.1 identity, bound and shrink factors for every standard BN layer; rows as theorem41()."""
    name = "bound"
    fields = ("layer", "units", "m", "eps", "lhs", "rhs_identity", "rhs_theorem", "identity_err", "identity_holds",
              "bound_holds", "grad_z_sq", "grad_ratio", "shrink_min", "shrink_mean", "shrink_max", "removed_frac",
              "removed_mean_frac", "removed_yhat_frac", "finite")
    optional = ("lhs_units", "rhs_identity_units", "rhs_theorem_units", "shrink_units")   # per_unit=True
    in_diagnose = True
    whole_model = True

    def __init__(self, layers: Sequence[str] | None = None, per_unit: bool = False, every: int = 1,
                 steps: Iterable[int] | None = None) -> None:
        super().__init__(every, steps)
        self.layers, self.per_unit = layers, per_unit

    def measure(self, ctx: Any) -> list[dict]:
        return theorem41(ctx.model, ctx.loss_fn, ctx.x, ctx.y, self.layers, self.per_unit)

    @classmethod
    def from_options(cls, opts: Options) -> "BoundHook":
        return cls()   # every standard BN layer: --layers selects weight layers, which this does not measure


# the instruments defined here (the registry also holds those registered elsewhere, e.g. by normlab.experiments)
HOOKS = dict(INSTRUMENTS.items())


def build_hook(name: str, **kw: Any) -> Instrument:
    """The registered instrument `name` built with kw, e.g. build_hook("ics", layers=[3, 10], every=50) from an
    experiment's config; ValueError naming the registered ones for an unknown name."""
    return INSTRUMENTS.get(name, "name")(**kw)
