"""Internal covariate shift, Santurkar et al. (2018) Definition 2.1.

For weight layer i at step t, on the batch (x, y) of that step:
    G  = dL/dW_i at the current weights W_1..W_k
    G' = dL/dW_i at (W_1', .., W_{i-1}', W_i, .., W_k), where W_j' is W_j after this step's optimizer update
    ICS_i = ||G - G'||_2 (Frobenius norm of the difference) and cos(G, G') = <G, G'> / (||G|| ||G'||).

"Layers 1..i-1" are all trainable parameters registered before W_i (model.named_parameters() order, which the
normlab models keep equal to forward order): the earlier weights and biases and the norm layers' gamma/beta between
them. W_i's own bias and everything after it stay put. The update is the real optimizer's rule, run by a scratch
optimizer of the same class with the same param-group settings on clones of the parameters and of their state
(momentum buffers, Adam moments and step counts); the real optimizer and model are never mutated. Every
torch.optim optimizer but LBFGS updates each parameter from its own gradient and state only, so one simulated
step of all parameters gives the W_j' for every i at once.

Cost: one forward + one partial backward (from the loss down to W_i only) per measured layer, plus one full
forward + backward when G is recomputed instead of read from .grad. Layer 0 has no earlier parameters: G' = G by
definition and no pass is run.

Example (ics, in the module docstring so that the function stays short)::

    >>> import torch, normlab
    >>> from normlab import diagnostics
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), normlab.BatchNorm1d(8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3))
    >>> x, y, loss_fn = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.nn.functional.cross_entropy
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> rows = diagnostics.ics(model, loss_fn, x, y, opt, layers=[1])   # the second weight layer
    >>> rows[0]["layer"], -1 <= rows[0]["cos"] <= 1, rows[0]["l2"] >= 0
    ('3', True, True)
    >>> [p.grad is None for p in model.parameters()]   # the model is left as it was
    [True, True, True, True, True, True]
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .common import (LayerSpec, finite, flat_norm, loss_and_grads, resolve_layers, rng_fork, stochastic_layers,
                     trainable)


def simulate_step(optimizer: torch.optim.Optimizer, grads: dict[nn.Parameter, torch.Tensor]) -> dict:
    """{param: its value after one optimizer.step() with gradient grads[param]}, computed on clones.

    The scratch optimizer has the real one's class, param-group settings and per-parameter state (cloned), so the
    update rule is the real one (SGD momentum/dampening/nesterov/weight decay, Adam/AdamW moments and bias
    correction, ...). Parameters without a gradient are skipped, as optimizer.step() skips them.
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError("optimizer: LBFGS needs a closure and couples parameters; ICS supports per-parameter "
                        "optimizers (SGD, Adam, AdamW, RMSprop, ...)")
    clones: dict[nn.Parameter, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        params, keep = [], []
        for k, p in enumerate(group["params"]):
            g = grads.get(p)
            if g is None:
                continue
            c = p.detach().clone().requires_grad_(True)
            c.grad = g.detach().clone()
            clones[p] = c
            params.append(c)
            keep.append(k)
        if params:
            settings = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            if "param_names" in group:   # optimizers built from named_parameters()
                settings["param_names"] = [group["param_names"][k] for k in keep]
            groups.append({**settings, "params": params})
    if not groups:
        return {}
    cls = type(optimizer)
    try:
        scratch = cls(groups, **optimizer.defaults)
    except TypeError:
        scratch = cls(groups)
    for p, c in clones.items():
        state = optimizer.state.get(p)
        if state:
            scratch.state[c] = {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}
    with torch.no_grad():
        scratch.step()
    return {p: c.detach() for p, c in clones.items()}


def ics(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
        layers: LayerSpec = None, recompute: bool | None = None) -> list[dict]:
    """ICS (Definition 2.1) of each chosen weight layer; one row per layer.

    layers: None (all weight layers), index/indices into weight_layers(model), or module names.
    recompute: None: take G (and the update's gradients) from .grad when every measured weight has one (the hook
    case: after loss.backward(), before optimizer.step()) and no layer is stochastic (common.stochastic_layers:
    dropout, noisy BN in training mode), else recompute, so that G and G' see the same random draw; True: always
    recompute on (x, y); False: require .grad, and refuse (ValueError) a model with stochastic layers.
    The model runs in its current train/eval mode; BN buffers are never updated (common.forward).
    Row: layer, index, l2 = ||G - G'||, cos, rel_l2 = l2 / ||G||, g_norm, g_prime_norm, n_earlier (parameter
    tensors updated before W_i), recomputed (G recomputed rather than read from .grad), finite (False when any of
    these is inf/NaN; values are kept as computed).
    """
    chosen = resolve_layers(model, layers)
    named = trainable(model)
    order = {id(p): k for k, (_, p) in enumerate(named)}
    for _, name, mod in chosen:
        if id(mod.weight) not in order:
            raise ValueError(f"layers: {name!r}.weight does not require grad; ICS needs a trainable weight")
    have = all(mod.weight.grad is not None for _, _, mod in chosen)
    if recompute is False and not have:
        raise ValueError("recompute=False but a measured weight has no .grad; call loss.backward() first")
    noisy = stochastic_layers(model)
    if noisy and recompute is False:
        raise ValueError(f"recompute=False but {', '.join(noisy)} draw random numbers in training mode: .grad came "
                         f"from another random draw than G' would, so G - G' would measure the noise; pass "
                         f"recompute=None or True (G and G' from the same draw), or put the model in eval mode")
    recompute = bool(recompute or not have or noisy)
    with torch.no_grad(), rng_fork(x, model) as rewind:
        if recompute:
            with torch.enable_grad():
                _, gs = loss_and_grads(model, loss_fn, x, y)
            grads = {p: g for (_, p), g in zip(named, gs)}
        else:
            grads = {p: p.grad for _, p in named if p.grad is not None}
        updated = simulate_step(optimizer, grads)
        rows = []
        for index, name, mod in chosen:
            k = order[id(mod.weight)]
            G = grads.get(mod.weight)
            if G is None:
                G = torch.zeros_like(mod.weight)
            earlier = [(n, p) for n, p in named[:k] if p in updated]
            if earlier:
                params = {n: p.detach() for n, p in named}
                params.update({n: updated[p] for n, p in earlier})
                rewind()
                with torch.enable_grad():
                    _, (Gp,) = loss_and_grads(model, loss_fn, x, y, params, wrt=[named[k][0]])
            else:
                Gp = G
            rows.append(_row(name, index, G, Gp, len(earlier)))
            rows[-1]["recomputed"] = recompute
    return rows


def _row(name: str, index: int | None, G: torch.Tensor, Gp: torch.Tensor, n_earlier: int) -> dict:
    g, gp = G.detach().double().flatten(), Gp.detach().double().flatten()
    l2 = flat_norm([g - gp])
    gn, gpn = flat_norm([g]), flat_norm([gp])
    denom = gn * gpn
    if Gp is G:   # no earlier parameters: G' = G by definition
        cos = 1.0 if gn > 0 else float("nan")
    else:
        cos = float(g @ gp) / denom if denom > 0 else float("nan")
    rel = l2 / gn if gn > 0 else float("nan")
    return {"layer": name, "index": index, "l2": l2, "cos": cos, "rel_l2": rel, "g_norm": gn, "g_prime_norm": gpn,
            "n_earlier": n_earlier, "finite": finite(l2, gn, gpn)}
