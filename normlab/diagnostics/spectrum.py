"""Curvature spectra of the loss: one operator (Hessian, Gauss-Newton or empirical Fisher, on one batch or averaged
over a loader, on all or some parameters) and the Krylov methods that read it (docs/diagnostics.md, "Spectra").

Operator M (flat vectors of length n = number of chosen parameters, concatenated in registration order):
    "hessian"  H = sum_b w_b d^2 L_b / dw^2                  H v by double backward (Pearlmutter)
    "ggn"      G = sum_b w_b J_b^T (d^2 L_b / dz^2) J_b      z = the model's output on batch b, J_b = dz/dw;
                                                             J v by the double-VJP trick, then H_z (J v), then J^T
    "fisher"   F = sum_b w_b (1/N_b) sum_i g_i g_i^T         g_i = d loss_fn(z[i:i+1], y[i:i+1]) / dw (empirical)
with w_b = N_b / sum N (batch sizes), so that for a loss that is a mean over samples M is the curvature of the mean
loss over every sample. The chosen parameters w are a snapshot; every other parameter is a constant.
BN (bn_mode): "train" = batch statistics of each batch (their dependence on w is part of M), buffers untouched;
"eval" = running statistics. Stochastic layers draw the same noise at every product (forked RNG), so M is fixed.

Methods (each result says whether it converged, and how many products it cost):
    lanczos           top-k / bottom-k eigenpairs: Lanczos with full reorthogonalization (twice), stops when every
                      wanted Ritz pair has residual ||M y - theta y|| = |beta_{m+1} s_{m,i}| <= tol * max|theta|
    power_iteration   the eigenvalue of largest |lambda|; stops when ||M v - lambda v|| <= tol * |lambda|
    slq_density       stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019): per probe
                      v/||v||, m Lanczos steps give nodes theta_j and weights tau_j = (e_1^T s_j)^2 with
                      sum_j tau_j theta_j^p = v^T M^p v / v^T v exactly for p <= 2m - 1; averaged over probes the
                      moments estimate tr(M^p) / n; probes are added until the moments' stderr is below tol
    hutchpp_trace     Hutch++ (Meyer, Musco, Musco & Woodruff 2021): tr(Q^T M Q) on a sketch Q = orth(M S), plus
                      Hutchinson on (I - QQ^T) M (I - QQ^T), samples added until stderr <= tol * |trace|
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .common import check_bn_mode, forward, model_mode, rng_fork, trainable, weight_layers

KINDS = ("hessian", "ggn", "fisher")
ParamSpec = int | str | Sequence[int | str] | None


def select_params(model: nn.Module, params: ParamSpec) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters named by `params`, in registration order.

    params: None (all trainable), or one item or a list of: an int (index into weight_layers(model): that layer's
    own weight and bias), a parameter name ("features.0.weight"), or a module name (all trainable parameters under
    it, e.g. "features.3" for one BN layer's gamma and beta).
    """
    named = trainable(model)
    if params is None:
        chosen = {n for n, _ in named}
    else:
        items = [params] if isinstance(params, (int, str)) else list(params)
        wl, modules, pnames = weight_layers(model), dict(model.named_modules()), {n for n, _ in named}
        chosen = set()
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise TypeError(f"params: expected weight-layer indices (int) or parameter/module names (str), "
                                f"got {item!r}")
            if isinstance(item, int):
                if not -len(wl) <= item < len(wl):
                    raise ValueError(f"params: index {item} is out of range; the model has {len(wl)} weight layers")
                prefix = wl[item][0]
                chosen |= {f"{prefix}.{n}" for n, _ in wl[item][1].named_parameters(recurse=False)} & pnames
            elif item in pnames:
                chosen.add(item)
            elif item in modules and item != "":
                chosen |= {n for n in pnames if n.startswith(item + ".")}
            else:
                raise ValueError(f"params: {item!r} is neither a trainable parameter nor a module of the model; "
                                 f"trainable parameters are: {', '.join(sorted(pnames)) or '(none)'}")
    out = [(n, p) for n, p in named if n in chosen]
    if not out:
        raise ValueError("params: selects no trainable parameter" if params is not None
                         else "model: no trainable parameters")
    return out


def _batches(x: Any, y: Any) -> list[tuple[Any, Any]]:
    """x a tensor: the one batch (x, y); otherwise x is an iterable of (x, y) pairs (a DataLoader) and y is None."""
    if isinstance(x, torch.Tensor):
        return [(x, y)]
    if y is not None:
        raise TypeError("y: pass y only with a tensor x; for a loader pass x=loader (pairs (x, y)) and y=None")
    try:
        out = [(b[0], b[1]) for b in x]
    except (TypeError, IndexError) as err:
        raise TypeError(f"x: expected a tensor or an iterable of (x, y) batches, got {type(x).__name__}") from err
    if not out:
        raise ValueError("x: the loader yielded no batch")
    return out


def _scalar(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn: expected a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if not loss.requires_grad:
        raise ValueError("loss_fn: the loss does not require grad (is it computed from the model's output without "
                         "detach()/no_grad, and do the parameters require grad?)")
    return loss.reshape(())


def _zeros_for(parts: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if h is None else h.detach() for h, t in zip(parts, like)]


def _grad(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], grad_outputs: Sequence[torch.Tensor],
          create_graph: bool = False) -> list[torch.Tensor | None]:
    """autograd.grad over the outputs that depend on the graph (others contribute zero); None where unused."""
    live = [k for k, o in enumerate(outputs) if o is not None and o.requires_grad]
    if not live:
        return [None] * len(inputs)
    return list(torch.autograd.grad([outputs[k] for k in live], list(inputs), [grad_outputs[k] for k in live],
                                    retain_graph=True, create_graph=create_graph, allow_unused=True))


class HessianOperator:
    """v -> M v for the loss of `model` (see the module docstring); v and M v are lists shaped like `leaves`.

    x, y: one batch; or x = an iterable of (x, y) batches (a DataLoader, materialized once) with y=None, giving the
    batch-size-weighted average. kind: "hessian", "ggn" or "fisher". params: see select_params. keep_graphs: keep
    each batch's double-backward graph (fast products, memory grows with the number of batches); False rebuilds
    them at every product (one forward + backward more per batch and product). Attributes: leaves, names, dim, loss
    (weighted mean loss), kind, bn_mode, batches (the number of batches).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, bn_mode: str = "train", *,
                 kind: str = "hessian", params: ParamSpec = None, keep_graphs: bool = True) -> None:
        check_bn_mode(bn_mode)
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        named = select_params(model, params)
        self.model, self.loss_fn, self.bn_mode, self.kind = model, loss_fn, bn_mode, kind
        self.data = _batches(x, y)
        self.batches = len(self.data)
        self.names = [n for n, _ in named]
        self.leaves = [p.detach().clone().requires_grad_(True) for _, p in named]   # a snapshot of w
        self.const = {n: p.detach() for n, p in model.named_parameters()}
        self.dim = sum(t.numel() for t in self.leaves)
        self.dtype, self.device = self.leaves[0].dtype, self.leaves[0].device
        sizes = [float(b[0].shape[0]) if isinstance(b[0], torch.Tensor) and b[0].dim() else 1.0 for b in self.data]
        self.weights = [s / sum(sizes) for s in sizes]
        self.keep_graphs = keep_graphs or kind == "fisher"   # the Fisher keeps per-sample gradients, no graph
        self.pieces: list[Callable] = []
        losses = []
        with model_mode(model, bn_mode == "train"), rng_fork(self._first_x(), model):
            for bx, by in self.data:
                if self.keep_graphs:
                    loss, apply = self._piece(bx, by)
                    self.pieces.append(apply)
                else:
                    with torch.no_grad():
                        loss = self.loss_fn(forward(model, self.const, bx), by)
                losses.append(float(loss.detach()))
        self.loss = torch.tensor(sum(w * v for w, v in zip(self.weights, losses)), dtype=torch.float64)

    def _first_x(self) -> torch.Tensor:
        x0 = self.data[0][0]
        return x0 if isinstance(x0, torch.Tensor) else self.leaves[0]

    def _params(self) -> dict[str, torch.Tensor]:
        return {**self.const, **dict(zip(self.names, self.leaves))}

    def _piece(self, x: Any, y: Any) -> tuple[torch.Tensor, Callable]:
        """(loss on the batch, apply: v parts -> M_b v parts) with the batch's graph held by the closure."""
        leaves = self.leaves
        with torch.enable_grad():
            out = forward(self.model, self._params(), x)
            loss = _scalar(self.loss_fn(out, y))
            if self.kind == "hessian":
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                return loss, lambda v: _zeros_for(_grad(grads, leaves, v), leaves)
            if self.kind == "ggn":
                return loss, self._ggn(out, loss)
            return loss, self._fisher(out, loss, y)

    def _ggn(self, out: torch.Tensor, loss: torch.Tensor) -> Callable:
        """J^T H_z J v: J v = d<J^T u, v>/du with a dummy u (J^T u is linear in u), H_z by double backward on the
        loss as a function of the output z, then one VJP through the network."""
        leaves = self.leaves
        (gz,) = torch.autograd.grad(loss, out, create_graph=True)
        u = torch.zeros_like(out, requires_grad=True)
        jtu = torch.autograd.grad(out, leaves, u, create_graph=True, allow_unused=True)

        def apply(v: list[torch.Tensor]) -> list[torch.Tensor]:
            (jv,) = _grad(jtu, [u], v)
            if jv is None or not gz.requires_grad:
                return [torch.zeros_like(t) for t in leaves]
            (hjv,) = _grad([gz], [out], [jv])
            if hjv is None:
                return [torch.zeros_like(t) for t in leaves]
            return _zeros_for(_grad([out], leaves, [hjv]), leaves)
        return apply

    def _fisher(self, out: torch.Tensor, loss: torch.Tensor, y: Any) -> Callable:
        """(1/N) G^T G v with G (N, n) the per-sample gradients (N backward passes, once)."""
        if not isinstance(y, torch.Tensor) or out.dim() == 0 or y.shape[:1] != out.shape[:1]:
            raise ValueError("kind: 'fisher' needs per-sample losses loss_fn(out[i:i+1], y[i:i+1]): y must be a "
                             "tensor with the same first (batch) dimension as the model's output")
        n = out.shape[0]
        rows, per = [], []
        for i in range(n):
            li = _scalar(self.loss_fn(out[i:i + 1], y[i:i + 1]))
            per.append(float(li.detach()))
            gi = torch.autograd.grad(li, self.leaves, retain_graph=True, allow_unused=True)
            rows.append(self.flatten(_zeros_for(gi, self.leaves)))
        mean, total = sum(per) / n, float(loss.detach())
        if abs(mean - total) > 1e-5 * max(1.0, abs(total)):
            raise ValueError(f"kind: 'fisher' needs a loss that is the mean of per-sample losses; loss_fn gives "
                             f"{total:.6g} on the batch but {mean:.6g} as the mean over single samples")
        G = torch.stack(rows)
        return lambda v: self.unflatten(G.T @ (G @ self.flatten(v)) / n)

    def matvec(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """M v (v a list shaped like leaves)."""
        acc = [torch.zeros_like(t) for t in self.leaves]
        if self.keep_graphs:
            for w, apply in zip(self.weights, self.pieces):
                torch._foreach_add_(acc, apply(v), alpha=w)
            return acc
        with model_mode(self.model, self.bn_mode == "train"), rng_fork(self._first_x(), self.model):
            for w, (bx, by) in zip(self.weights, self.data):
                _, apply = self._piece(bx, by)
                torch._foreach_add_(acc, apply(v), alpha=w)
        return acc

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(-1).to(self.dtype) for p in parts])

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector of length dim -> tensors shaped (and typed) like the parameters."""
        return [u.view_as(t).to(t.dtype) for u, t in zip(torch.split(v, [t.numel() for t in self.leaves]),
                                                         self.leaves)]

    def flat_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """M v on one flat vector of length dim (parameters concatenated in registration order)."""
        return self.flatten(self.matvec(self.unflatten(v.to(self.dtype))))

    def random(self, kind: str, gen: torch.Generator) -> torch.Tensor:
        """A flat random vector: "gauss" N(0, I) or "rademacher" +-1, drawn on the CPU from `gen`."""
        if kind == "gauss":
            v = torch.randn(self.dim, generator=gen, dtype=self.dtype)
        else:
            v = (torch.randint(0, 2, (self.dim,), generator=gen) * 2 - 1).to(self.dtype)
        return v.to(self.device)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0):
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    return float(tol)


def _orthogonalize(w: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """w minus its projection on the rows of Q, twice (classical Gram-Schmidt twice is enough in floating point)."""
    if Q.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - Q.T @ (Q @ w)
    return w


class _Lanczos:
    """Lanczos with full reorthogonalization; restarts from a fresh orthogonal vector when the Krylov space becomes
    invariant (beta = 0), so that the tridiagonal matrix T stays the projection of M on span(Q)."""

    def __init__(self, op: HessianOperator, v0: torch.Tensor, steps: int, gen: torch.Generator | None) -> None:
        self.op, self.gen = op, gen
        self.Q = torch.empty(steps + 1, op.dim, dtype=op.dtype, device=op.device)
        self.alpha: list[float] = []
        self.beta: list[float] = []     # beta[j] couples q_j and q_{j+1}
        self.Q[0] = v0 / v0.norm()
        self.m = 0
        self.breakdowns = 0

    def step(self) -> None:
        j, op = self.m, self.op
        q = self.Q[j]
        w = op.flat_matvec(q)
        a = float(torch.dot(q.double(), w.double()))
        w = w - a * q - (self.beta[-1] * self.Q[j - 1] if j > 0 else 0.0)
        w = _orthogonalize(w, self.Q[:j + 1])
        b = float(w.norm())
        self.alpha.append(a)
        self.m = j + 1
        scale = max(abs(t) for t in self.alpha) if self.alpha else 0.0
        if not math.isfinite(b) or not math.isfinite(a):
            self.beta.append(float("nan"))
            return
        if b <= 1e-10 * max(scale, 1e-300) and self.m < op.dim:   # invariant subspace: restart orthogonally
            self.breakdowns += 1
            self.beta.append(0.0)
            g = self.gen or torch.Generator().manual_seed(self.m)
            r = _orthogonalize(op.random("gauss", g), self.Q[:self.m])
            self.Q[self.m] = r / r.norm()
            return
        self.beta.append(b if self.m < op.dim else 0.0)
        if self.m < self.Q.shape[0] and b > 0:
            self.Q[self.m] = w / b

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(theta ascending, S (m, m) eigenvectors of T, residual bounds |beta_m s_{m,i}|), all float64."""
        m = self.m
        T = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.beta[:m - 1], dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        return theta, S, (abs(self.beta[m - 1]) * S[m - 1].abs())


def _check_which(which: str) -> str:
    if which not in ("top", "bottom", "both"):
        raise ValueError(f"which: expected 'top' (largest), 'bottom' (smallest, most negative) or 'both', "
                         f"got {which!r}")
    return which


def lanczos(op: HessianOperator, k: int = 1, which: str = "top", tol: float = 1e-3, max_iter: int | None = None,
            seed: int = 0, vectors: bool = True) -> dict:
    """The k largest ("top"), k smallest ("bottom") or both eigenpairs of the operator.

    Stops when every wanted Ritz pair (theta, y) has ||M y - theta y|| <= tol * max|theta| (and at least k of
    each wanted side exist), or after max_iter products (default min(dim, max(100, 4k + 20))).
    Keys: top (k values, descending), bottom (k values, ascending), top_residuals, bottom_residuals, converged,
    iterations (products), breakdowns (invariant subspaces met), tol, dim, kind, bn_mode, loss, finite; with
    vectors=True also top_vectors / bottom_vectors: (k, dim) tensors, unit norm, in the operator's dtype (use
    op.unflatten to shape one like the parameters). A repeated eigenvalue is found once per Krylov space: after an
    invariant subspace the iteration restarts orthogonally to it, which finds the next copy.
    """
    _check_int("k", k, 1)
    _check_which(which)
    tol = _check_tol(tol)
    n = op.dim
    k = min(k, n)
    steps = min(n, _check_int("max_iter", max_iter, 1) if max_iter is not None else max(100, 4 * k + 20))
    need = min(n, k * (2 if which == "both" else 1))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lz = _Lanczos(op, op.random("gauss", gen), steps, gen)
    converged = False
    while lz.m < steps:
        lz.step()
        theta, S, res = lz.ritz()
        if not (torch.isfinite(theta).all() and math.isfinite(lz.beta[-1])):
            break
        if lz.m >= need:
            idx = _wanted(lz.m, k, which)
            scale = float(theta.abs().max())
            converged = bool((res[idx] <= tol * scale).all()) or lz.m == n
            if converged:
                break
    theta, S, res = lz.ritz()
    out: dict[str, Any] = {"converged": converged, "iterations": lz.m, "breakdowns": lz.breakdowns, "tol": tol,
                           "dim": n, "kind": op.kind, "bn_mode": op.bn_mode, "loss": float(op.loss)}
    kk = min(k, lz.m)
    sides = {"top": torch.arange(lz.m - 1, lz.m - 1 - kk, -1), "bottom": torch.arange(kk)}
    for side, idx in sides.items():
        if which not in (side, "both"):
            continue
        out[side] = theta[idx].tolist()
        out[f"{side}_residuals"] = res[idx].tolist()
        if vectors:
            Y = S[:, idx].T.to(op.dtype) @ lz.Q[:lz.m]
            out[f"{side}_vectors"] = Y
    vals = out.get("top", []) + out.get("bottom", [])
    out["finite"] = all(math.isfinite(v) for v in vals)
    return out


def _wanted(m: int, k: int, which: str) -> torch.Tensor:
    k = min(k, m)
    top, bottom = list(range(m - k, m)), list(range(k))
    return torch.tensor(sorted(set({"top": top, "bottom": bottom, "both": top + bottom}[which])))


def power_iteration(op: HessianOperator, tol: float = 1e-3, max_iter: int = 1000, seed: int = 0,
                    vector: bool = False) -> dict:
    """The eigenvalue of largest |lambda|: v <- M v / ||M v|| from a seeded Gaussian v, estimate <v, M v>.

    Stops when the residual ||M v - lambda v|| <= tol * |lambda| (tol=0: run max_iter products). The residual bounds
    the distance from lambda to the nearest eigenvalue. Keys: eigenvalue, iterations, residual (relative),
    converged, rel_change (between the last two estimates), history, finite; vector=True adds `vector`.
    """
    tol = _check_tol(tol)
    _check_int("max_iter", max_iter, 1)
    v = op.random("gauss", torch.Generator(device="cpu").manual_seed(seed))
    v = v / v.norm()
    history: list[float] = []
    change, rel_res = float("inf"), float("inf")
    for _ in range(max_iter):
        hv = op.flat_matvec(v)
        lam = float(torch.dot(v.double(), hv.double()))
        if history:
            change = abs(lam - history[-1]) / max(abs(lam), 1e-30)
        history.append(lam)
        norm = float(hv.norm())
        if not math.isfinite(lam) or not math.isfinite(norm) or norm == 0:
            rel_res = 0.0 if norm == 0 else float("nan")
            break
        rel_res = float((hv - lam * v).norm()) / max(abs(lam), 1e-300)
        if tol and rel_res <= tol:
            break
        v = hv / norm
    lam = history[-1]
    out = {"eigenvalue": lam, "iterations": len(history), "residual": rel_res,
           "converged": bool(rel_res <= max(tol, 1e-12)), "rel_change": change, "history": history,
           "finite": math.isfinite(lam)}
    if vector:
        out["vector"] = v
    return out


def slq_density(op: HessianOperator, steps: int = 60, probes: int | None = None, tol: float = 0.05,
                min_probes: int = 3, max_probes: int = 20, seed: int = 0, grid: int = 201,
                sigma: float | None = None, probe_vectors: torch.Tensor | None = None, max_moment: int = 4) -> dict:
    """Spectral density by stochastic Lanczos quadrature (see the module docstring).

    steps: Lanczos steps per probe (capped at dim). probes: a fixed number of Gaussian probes; None: adaptive, from
    min_probes until the standard errors of the moments p = 1, 2 are <= tol times their value (or max_probes).
    probe_vectors: explicit probes (P, dim), used as given (tests). "Converged": the stderr of moment p (p = 1, 2) is
    <= tol * (moment 2)^(p/2) (tol relative to the spectrum's rms). grid, sigma: the density on `grid` points over
    [min node - 3 sigma, max node + 3 sigma], a sum of Gaussians of width sigma (default 1% of the node range).
    Keys: nodes, weights (per probe; each probe's weights sum to 1), moments (p = 0..max_moment: the SLQ estimate
    of tr(M^p)/n; needs max_moment >= 2), moment_stderr, probes, steps, converged, grid, density, sigma,
    iterations (products), finite.
    """
    _check_int("steps", steps, 1)
    _check_int("max_moment", max_moment, 2)
    tol = _check_tol(tol)
    steps = min(steps, op.dim)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if probe_vectors is not None:
        plan = [probe_vectors[i].to(op.dtype).to(op.device) for i in range(probe_vectors.shape[0])]
        count = len(plan)
    else:
        count = _check_int("probes", probes, 1) if probes is not None else _check_int("max_probes", max_probes, 1)
        plan = []
    nodes, weights, iters = [], [], 0
    converged = False
    for i in range(count):
        v0 = plan[i] if plan else op.random("gauss", gen)
        lz = _Lanczos(op, v0, steps, gen)
        while lz.m < steps:
            lz.step()
            if lz.beta[-1] == 0.0 and lz.breakdowns:   # the probe's Krylov space is invariant: quadrature exact
                lz.breakdowns -= 1
                break
        theta, S, _ = lz.ritz()
        nodes.append(theta.tolist())
        weights.append((S[0] ** 2).tolist())
        iters += lz.m
        mom, err = _moments(nodes, weights, max_moment)
        if probes is None and not plan and len(nodes) >= max(2, min_probes):
            converged = _moments_ok(mom, err, tol)
            if converged:
                break
    mom, err = _moments(nodes, weights, max_moment)
    if probes is not None or plan:
        converged = len(nodes) >= 2 and _moments_ok(mom, err, tol)
    out = {"nodes": nodes, "weights": weights, "moments": mom, "moment_stderr": err, "probes": len(nodes),
           "steps": steps, "converged": bool(converged), "iterations": iters, "kind": op.kind,
           "bn_mode": op.bn_mode, "dim": op.dim}
    if grid:
        out.update(density_on_grid(nodes, weights, grid, sigma))
    out["finite"] = all(math.isfinite(t) for row in nodes for t in row)
    return out


def _moments_ok(mom: list[float], err: list[float], tol: float) -> bool:
    """The stderr of moments 1 and 2 within tol of the spectrum's scale: err_p <= tol * (tr(M^2)/n)^(p/2) (relative
    to |moment 1| itself would never be met by an indefinite spectrum whose mean is near 0)."""
    rms = math.sqrt(max(mom[2], 0.0))
    return all(math.isfinite(err[p]) and err[p] <= tol * rms ** p for p in (1, 2))


def _moments(nodes: list[list[float]], weights: list[list[float]], max_moment: int) -> tuple[list, list]:
    """Per-probe quadrature moments sum_j tau_j theta_j^p, averaged over probes, with the standard error."""
    per = torch.tensor([[sum(w * t ** p for t, w in zip(th, tau)) for p in range(max_moment + 1)]
                        for th, tau in zip(nodes, weights)], dtype=torch.float64)
    mean = per.mean(0)
    err = per.std(0) / math.sqrt(per.shape[0]) if per.shape[0] > 1 else torch.full_like(mean, float("nan"))
    return mean.tolist(), err.tolist()


def density_on_grid(nodes: list[list[float]], weights: list[list[float]], points: int = 201,
                    sigma: float | None = None, lo: float | None = None, hi: float | None = None) -> dict:
    """phi(t) = mean over probes of sum_j tau_j N(t; theta_j, sigma^2) on `points` grid values; integrates to 1.
    Default sigma: 1% of the node range (or 1e-3 when all nodes coincide); default [lo, hi]: nodes -+ 3 sigma."""
    flat = torch.tensor([t for row in nodes for t in row], dtype=torch.float64)
    wts = torch.tensor([w for row in weights for w in row], dtype=torch.float64) / len(nodes)
    span = float(flat.max() - flat.min()) if flat.numel() else 0.0
    sigma = float(sigma) if sigma is not None else (0.01 * span if span > 0 else 1e-3)
    lo = float(flat.min()) - 3 * sigma if lo is None else lo
    hi = float(flat.max()) + 3 * sigma if hi is None else hi
    t = torch.linspace(lo, hi, points, dtype=torch.float64)
    dens = (wts * torch.exp(-0.5 * ((t[:, None] - flat) / sigma) ** 2)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return {"grid": t.tolist(), "density": dens.tolist(), "sigma": sigma}


def hutchpp_trace(op: HessianOperator, sketch: int = 20, tol: float = 1e-2, min_samples: int = 10,
                  max_samples: int = 200, seed: int = 0) -> dict:
    """Hutch++ trace: exact part tr(Q^T M Q) on Q = orth(M S) with S (dim, sketch) Rademacher (2 x sketch products;
    exact overall when sketch >= dim), plus Hutchinson samples g'^T M g' with g' = (I - QQ^T) g, added until
    stderr <= tol * |trace| (after min_samples) or max_samples. Keys: trace, stderr, low_rank (the sketch's part),
    samples, iterations (products), converged, dim, kind, bn_mode, finite."""
    _check_int("sketch", sketch, 0)
    tol = _check_tol(tol)
    _check_int("min_samples", min_samples, 1)
    _check_int("max_samples", max_samples, 1)
    n = op.dim
    s = min(sketch, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    iters = 0
    if s:
        Y = torch.stack([op.flat_matvec(op.random("rademacher", gen)) for _ in range(s)], 1)
        Q, _ = torch.linalg.qr(Y.double())
        Q = Q.to(op.dtype)
        low = sum(float(torch.dot(Q[:, j].double(), op.flat_matvec(Q[:, j]).double())) for j in range(s))
        iters += 2 * s
    else:
        Q, low = torch.empty(n, 0, dtype=op.dtype, device=op.device), 0.0
    vals: list[float] = []
    stderr, converged = 0.0, s == n
    while not converged and len(vals) < max_samples:
        g = op.random("rademacher", gen)
        g = g - Q @ (Q.T @ g)
        vals.append(float(torch.dot(g.double(), op.flat_matvec(g).double())))
        iters += 1
        est = torch.tensor(vals, dtype=torch.float64)
        stderr = float(est.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("inf")
        if len(vals) >= min_samples and stderr <= tol * abs(low + float(est.mean())):
            converged = True
    rest = float(torch.tensor(vals, dtype=torch.float64).mean()) if vals else 0.0
    tr = low + rest
    return {"trace": tr, "stderr": stderr, "low_rank": low, "samples": len(vals), "sketch": s, "iterations": iters,
            "converged": bool(converged), "dim": n, "kind": op.kind, "bn_mode": op.bn_mode,
            "finite": math.isfinite(tr) and math.isfinite(stderr)}


def hessian_spectrum(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, k: int = 5, which: str = "both",
             kind: str = "hessian", params: ParamSpec = None, bn_mode: str = "train", tol: float = 1e-3,
             max_iter: int | None = None, trace: bool = True, trace_tol: float = 1e-2, density_probes: int = 0,
             density_steps: int = 60, seed: int = 0, keep_graphs: bool = True) -> dict:
    """One JSON-ready row: Lanczos top/bottom-k eigenvalues (no vectors), optionally the Hutch++ trace and SLQ nodes
    and weights (density_probes > 0), on one operator built from (model, loss_fn, x, y) as HessianOperator.
    Keys: top, bottom, top_residuals, bottom_residuals, converged, iterations, kind, bn_mode, params (count of
    parameter tensors), dim, loss; trace, trace_stderr, trace_converged, trace_iterations; density_nodes,
    density_weights, density_moments, density_converged; finite."""
    op = HessianOperator(model, loss_fn, x, y, bn_mode, kind=kind, params=params, keep_graphs=keep_graphs)
    row = lanczos(op, k, which, tol, max_iter, seed, vectors=False)
    row["params"] = len(op.names)
    finite = row["finite"]
    if trace:
        tr = hutchpp_trace(op, tol=trace_tol, seed=seed)
        row.update(trace=tr["trace"], trace_stderr=tr["stderr"], trace_converged=tr["converged"],
                   trace_iterations=tr["iterations"])
        finite = finite and tr["finite"]
    if density_probes:
        d = slq_density(op, steps=density_steps, probes=density_probes, seed=seed, grid=0)
        row.update(density_nodes=d["nodes"], density_weights=d["weights"], density_moments=d["moments"],
                   density_converged=d["converged"])
        finite = finite and d["finite"]
    row["finite"] = finite
    return row


def collect_batches(loader: Iterable, max_batches: int | None = None) -> list[tuple[Any, Any]]:
    """The first max_batches (x, y) pairs of a loader, as a list (a fixed data set for repeated measurements)."""
    out = []
    for b in loader:
        if max_batches is not None and len(out) >= max_batches:
            break
        out.append((b[0], b[1]))
    return out
