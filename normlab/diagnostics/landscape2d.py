"""Loss landscapes: 1-D and 2-D slices through weight space (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing
the loss landscape of neural nets"; Goodfellow, Vinyals & Saxe 2015 for the line between two solutions).

    L(a)    = L(w + a d)                      1-D, coords = [a_1..a_n]
    L(a, b) = L(w + a d1 + b d2)              2-D, loss[i][j] at (a_i, b_j)

Directions (dicts {parameter name: tensor}, trainable parameters only):
    random_direction       Gaussian, then filter-normalized: each filter d_f (a slice along dim 0 of a conv or linear
                           weight: one output channel or neuron) is rescaled to ||d_f|| = ||w_f|| (Li et al. Sec. 4),
                           which makes slices of networks with different weight scales comparable (BN nets are
                           invariant to a filter's scale). 1-D parameters (biases, BN gamma/beta) get d = 0
                           (one_d="zero", Li et al.'s default) or d = w (one_d="copy").
    gradient_direction     -grad L(w), raw ("none": a = the SGD step size), unit norm ("unit": a = distance) or
                           filter-normalized ("filter").
    checkpoint_direction   theta_B - theta_A from the model (A, a = 0) to another checkpoint (B, a = 1); floating
                           buffers (BN running statistics) are interpolated along with the weights in bn="frozen".

BN at every point (bn):
    "batch"      every module with running statistics in training mode: batch statistics of each evaluated batch
                 (as during training); buffers untouched; everything else (dropout) in eval mode.
    "frozen"     eval mode with the running statistics as they are (the model's, or interpolated between two
                 checkpoints): the test-time network, but with statistics that belong to w, not to w + a d.
    "recompute"  at each point the running statistics are recomputed as PreciseBN does (Wu & Johnson 2021,
                 torch.optim.swa_utils.update_bn): reset, then training-mode forwards over bn_data (default: the
                 evaluated data) with momentum=None, giving the equal-weight average of the batch means and
                 unbiased batch variances; then eval mode with those statistics. The test-time network that w + a d
                 really is; costs one extra forward over bn_data per point. Dropout stays off during these
                 forwards (update_bn would leave it on), so the statistics are those of the deterministic network.
The model is never changed: weights, buffers, momentum and train/eval flags are restored; the RNG is forked.
Cost: points x batches forwards (x2 with "recompute" when bn_data is the evaluated data).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .common import model_mode, rng_fork, trainable
from .spectrum import _batches, _scalar

BN_MODES = ("batch", "frozen", "recompute")


@dataclass
class Direction:
    """A direction in weight space: params {name: tensor} (missing names move by 0); buffers {name: tensor} added
    to floating buffers in bn="frozen" (checkpoint lines only); kind says how it was made."""
    params: dict[str, torch.Tensor]
    kind: str = "custom"
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def norm(self) -> float:
        return float(torch.linalg.vector_norm(torch.stack([t.double().norm() for t in self.params.values()])))


def _check_bn(bn: str) -> str:
    if bn not in BN_MODES:
        raise ValueError(f"bn: expected 'batch' (batch statistics), 'frozen' (running statistics as they are) or "
                         f"'recompute' (running statistics recomputed at each point, PreciseBN), got {bn!r}")
    return bn


def filter_normalize(direction: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                     one_d: str = "zero") -> dict[str, torch.Tensor]:
    """Li et al.'s filter normalization: d_f <- d_f ||w_f|| / ||d_f|| per slice along dim 0 of every tensor with
    dim >= 2; tensors with dim <= 1 become 0 (one_d="zero") or w (one_d="copy")."""
    if one_d not in ("zero", "copy"):
        raise ValueError(f"one_d: expected 'zero' (Li et al.'s default: biases and BN parameters do not move) or "
                         f"'copy' (d = w), got {one_d!r}")
    out = {}
    for name, d in direction.items():
        w = weights[name].detach()
        if d.dim() <= 1:
            out[name] = torch.zeros_like(w) if one_d == "zero" else w.clone()
            continue
        dn = d.flatten(1).norm(dim=1).clamp_min(1e-30)
        wn = w.flatten(1).norm(dim=1)
        out[name] = d * (wn / dn).view(-1, *([1] * (d.dim() - 1)))
    return out


def _chosen(model: nn.Module, params: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    named = trainable(model)
    if params is None:
        return named
    names = {n for n, _ in named}
    bad = [p for p in params if p not in names]
    if bad:
        raise ValueError(f"params: {bad} are not trainable parameters; they are: {', '.join(sorted(names))}")
    return [(n, p) for n, p in named if n in set(params)]


def random_direction(model: nn.Module, seed: int = 0, params: Sequence[str] | None = None,
                     one_d: str = "zero", normalize: str = "filter") -> Direction:
    """A seeded Gaussian direction over `params` (default: every trainable parameter), filter-normalized
    (normalize="filter") or raw ("none")."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    named = _chosen(model, params)
    d = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for n, p in named}
    return Direction(_normalize(d, dict(named), normalize, one_d), f"random:{seed}")


def _normalize(d: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], how: str,
               one_d: str = "zero") -> dict[str, torch.Tensor]:
    if how == "filter":
        return filter_normalize(d, weights, one_d)
    if how == "unit":
        total = math.sqrt(sum(float(t.double().norm()) ** 2 for t in d.values()))
        return {n: t / total if total > 0 else t for n, t in d.items()}
    if how == "none":
        return d
    raise ValueError(f"normalize: expected 'filter', 'unit' or 'none', got {how!r}")


def gradient_direction(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, bn: str = "batch",
                       normalize: str = "unit", bn_data: Any = None) -> Direction:
    """-grad L(w) (the loss over x, y or a loader, BN as in `bn`), normalized "unit", "filter" or "none"."""
    _check_bn(bn)
    data = _batches(x, y)
    named = trainable(model)
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in named}
    with model_mode(model, False), rng_fork(_x0(data, named), model), torch.enable_grad():
        stats = data if bn_data is None else _batches(bn_data, None)
        buffers = _point_buffers(model, leaves, bn, stats, {})
        loss = _mean_loss(model, loss_fn, leaves, buffers, data, bn, need_grad=True)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    d = {n: -(g if g is not None else torch.zeros_like(t)) for (n, t), g in zip(leaves.items(), grads)}
    return Direction(_normalize(d, {n: p for n, p in named}, normalize), f"gradient:{normalize}")


def checkpoint_direction(model: nn.Module, other: nn.Module | dict[str, torch.Tensor]) -> Direction:
    """theta_B - theta_A from the model (a = 0) to `other` (a module or a state_dict; a = 1), over trainable
    parameters, with the floating buffers' difference for bn="frozen"."""
    state = other.state_dict() if isinstance(other, nn.Module) else other
    named = trainable(model)
    missing = [n for n, _ in named if n not in state]
    if missing:
        raise ValueError(f"other: has no {', '.join(missing)}; both checkpoints must be of the same architecture")
    params = {n: state[n].detach().to(p.device, p.dtype) - p.detach() for n, p in named}
    bufs = {n: state[n].detach().to(b.device, b.dtype) - b for n, b in model.named_buffers()
            if n in state and b.is_floating_point()}
    return Direction(params, "checkpoints", bufs)


def _has_running(m: nn.Module) -> bool:
    return isinstance(getattr(m, "running_mean", None), torch.Tensor) and \
        isinstance(getattr(m, "running_var", None), torch.Tensor)


def _x0(data: list, named: list) -> torch.Tensor:
    x = data[0][0]
    return x if isinstance(x, torch.Tensor) else named[0][1]


def _point_buffers(model: nn.Module, params: dict[str, torch.Tensor], bn: str, bn_data: list,
                   shift: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The buffers to evaluate with at this point: clones (+ the checkpoint shift in "frozen"), or in "recompute"
    the running statistics recomputed PreciseBN-style at `params` (see the module docstring)."""
    bufs = {n: b.clone() + shift[n] if n in shift and bn == "frozen" else b.clone() for n, b in model.named_buffers()}
    if bn != "recompute":
        return bufs
    mods = [(n, m) for n, m in model.named_modules() if _has_running(m)]
    saved = [(m, getattr(m, "momentum", None)) for _, m in mods]
    try:
        for name, m in mods:
            pre = f"{name}." if name else ""
            bufs[pre + "running_mean"].zero_()
            bufs[pre + "running_var"].fill_(1.0)
            if pre + "num_batches_tracked" in bufs:
                bufs[pre + "num_batches_tracked"].zero_()
            m.momentum = None      # cumulative average: equal weight for every batch
            m.train()
        with torch.no_grad():
            for bx, _ in bn_data:
                functional_call(model, {**params, **bufs}, (bx,), strict=False)   # updates land in bufs
    finally:
        for m, mom in saved:
            m.momentum = mom
            m.eval()
    return bufs


def _mean_loss(model: nn.Module, loss_fn: Callable, params: dict[str, torch.Tensor], buffers: dict,
               data: list, bn: str, need_grad: bool = False) -> torch.Tensor:
    """Batch-size-weighted mean of loss_fn over data at (params, buffers); BN modules in training mode for
    bn="batch" (every other module, and every module otherwise, in eval mode)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in model.modules():
            m.training = bn == "batch" and _has_running(m)
        total, count = 0.0, 0.0
        for bx, by in data:
            out = functional_call(model, {**params, **{k: v.clone() for k, v in buffers.items()}}, (bx,),
                                  strict=False)
            loss = loss_fn(out, by)
            loss = _scalar(loss) if need_grad else loss.reshape(())
            n = float(bx.shape[0]) if isinstance(bx, torch.Tensor) and bx.dim() else 1.0
            total, count = total + n * loss, count + n
        return total / count
    finally:
        for m, f in flags:
            m.training = f


def surface(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None,
            directions: Sequence[Direction] = (), coords: Sequence[Sequence[float]] = (), bn: str = "frozen",
            bn_data: Any = None) -> dict:
    """The loss on a 1-D (one direction) or 2-D (two directions) grid around the model's weights.

    x, y: one batch, or x = an iterable of (x, y) batches and y=None (batch-size-weighted mean loss). directions:
    one or two Direction objects. coords: one sequence of coefficients per direction. bn: "batch", "frozen" or
    "recompute" (module docstring). bn_data: the batches for "recompute" (default: the evaluated data).
    Keys: coords, loss (a list for 1-D; loss[i][j] at (coords[0][i], coords[1][j]) for 2-D), dims, bn, kinds
    (of the directions), direction_norms, loss_min, loss_max, finite.
    """
    _check_bn(bn)
    if not 1 <= len(directions) <= 2 or not all(isinstance(d, Direction) for d in directions):
        raise ValueError("directions: expected one or two Direction objects (random_direction, gradient_direction, "
                         "checkpoint_direction)")
    if len(coords) != len(directions):
        raise ValueError(f"coords: expected one sequence of coefficients per direction ({len(directions)}), "
                         f"got {len(coords)}")
    grid = [[float(c) for c in cs] for cs in coords]
    if any(not cs or not all(math.isfinite(c) for c in cs) for cs in grid):
        raise ValueError("coords: every sequence must be non-empty and finite")
    data = _batches(x, y)
    stats = data if bn_data is None else _batches(bn_data, None)
    named = trainable(model)
    w = {n: p.detach() for n, p in named}
    for d in directions:
        bad = [n for n in d.params if n not in w]
        if bad:
            raise ValueError(f"directions: {bad} are not trainable parameters of the model")
    losses: list = []
    with torch.no_grad(), model_mode(model, False), rng_fork(_x0(data, named), model) as rewind:
        for a in grid[0]:
            row = []
            for b in (grid[1] if len(grid) == 2 else [None]):
                coef = [(directions[0], a)] + ([(directions[1], b)] if b is not None else [])
                params = dict(w)
                shift: dict[str, torch.Tensor] = {}
                for d, c in coef:
                    for n, t in d.params.items():
                        params[n] = params[n] + c * t
                    for n, t in d.buffers.items():
                        shift[n] = shift.get(n, 0) + c * t
                rewind()
                buffers = _point_buffers(model, params, bn, stats, shift)
                row.append(float(_mean_loss(model, loss_fn, params, buffers, data, bn)))
            losses.append(row if len(grid) == 2 else row[0])
    flat = [v for r in losses for v in (r if isinstance(r, list) else [r])]
    finite = all(math.isfinite(v) for v in flat)
    t = torch.tensor(flat, dtype=torch.float64)
    return {"coords": grid, "loss": losses, "dims": len(grid), "bn": bn, "kinds": [d.kind for d in directions],
            "direction_norms": [d.norm() for d in directions], "loss_min": float(t.min()),
            "loss_max": float(t.max()), "finite": finite}


def interpolate(model: nn.Module, other: nn.Module | dict[str, torch.Tensor], loss_fn: Callable, x: Any,
                y: Any = None, coords: Iterable[float] = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
                bn: str = "recompute", bn_data: Any = None) -> dict:
    """The loss on the line (1 - a) theta_A + a theta_B between the model (a = 0) and `other` (a = 1)."""
    return surface(model, loss_fn, x, y, [checkpoint_direction(model, other)], [list(coords)], bn, bn_data)
