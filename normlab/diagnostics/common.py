"""What every instrument shares: layer look-up, side-effect-free forward passes, gradients, finiteness.

A measurement pass never touches the model's parameters, buffers, .grad or the global RNG stream:
  * parameters and buffers are swapped in with torch.func.functional_call; buffers are passed as clones, so the
    BN running statistics (and num_batches_tracked) the pass would update are thrown away;
  * gradients come from torch.autograd.grad (never .backward()), so .grad is left as the training step left it;
  * every pass runs under `rng_fork`, which restores the global RNG afterwards (training stays reproducible) and
    starts every pass of one measurement from the same RNG state (stochastic layers draw the same noise in each).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..layers.variants import _NoisyBatchNorm

LayerSpec = int | str | Sequence[int | str] | None
_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv layer in registration (= forward) order; the same list as
    normlab.models.weight_layers, so "layer i" means the same thing everywhere."""
    model = getattr(model, "module", model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]


def resolve_layers(model: nn.Module, layers: LayerSpec, need_weight: bool = True,
                   arg: str = "layers") -> list[tuple[int | None, str, nn.Module]]:
    """Turn `layers` into [(weight_layers index or None, qualified name, module)].

    layers: None (every weight layer), an int (index into weight_layers, negatives count from the end), a module
    name as in model.named_modules(), or a list of those. need_weight: the module must own a `weight` Parameter.
    """
    wl = weight_layers(model)
    index_of = {n: i for i, (n, _) in enumerate(wl)}
    if layers is None:
        return [(i, n, m) for i, (n, m) in enumerate(wl)]
    items = [layers] if isinstance(layers, (int, str)) else list(layers)
    modules = dict(model.named_modules())
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"{arg}: expected layer indices (int) or module names (str), got {item!r}")
        if isinstance(item, int):
            if not -len(wl) <= item < len(wl):
                raise ValueError(f"{arg}: index {item} is out of range; the model has {len(wl)} weight layers "
                                 f"(0..{len(wl) - 1}: {', '.join(n for n, _ in wl)})")
            name, mod = wl[item]
        else:
            if item not in modules or item == "":
                raise ValueError(f"{arg}: unknown layer name {item!r}; weight layers are: "
                                 f"{', '.join(n for n, _ in wl) or '(none)'}")
            name, mod = item, modules[item]
        if need_weight and not isinstance(getattr(mod, "weight", None), nn.Parameter):
            raise ValueError(f"{arg}: layer {name!r} ({type(mod).__name__}) has no weight parameter; "
                             f"weight layers are: {', '.join(n for n, _ in wl)}")
        if name not in [o[1] for o in out]:
            out.append((index_of.get(name), name, mod))
    return out


def check_bn_mode(bn_mode: str) -> str:
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode: expected 'train' (batch statistics, buffers untouched) or 'eval' "
                         f"(running statistics), got {bn_mode!r}")
    return bn_mode


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool | None) -> Iterator[None]:
    """Set model.train(training) for the block (None: leave as is); restore every submodule's own flag after."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def rng_fork(x: torch.Tensor, model: nn.Module | None = None) -> Iterator[Callable[[], None]]:
    """Fork the global RNG and every torch.Generator a submodule of `model` holds (e.g. noisy BN's `generator`);
    all are restored on exit. Yields `rewind()`, which resets them to their state at entry."""
    devices = [x.device] if x.device.type == "cuda" else []
    gens = [] if model is None else [m.generator for m in model.modules()
                                     if isinstance(getattr(m, "generator", None), torch.Generator)]
    with torch.random.fork_rng(devices=devices):
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(x.device) if devices else None
        own = [g.get_state() for g in gens]

        def rewind() -> None:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, x.device)
            for g, st in zip(gens, own):
                g.set_state(st)
        try:
            yield rewind
        finally:
            for g, st in zip(gens, own):
                g.set_state(st)


def stochastic_layers(model: nn.Module) -> list[str]:
    """Names of the submodules that draw random numbers in their current mode: torch's dropout family with p > 0
    and normlab's noisy BN in training mode, and any module with a true `stochastic` attribute (opt-in for custom
    layers; a random op called inside an arbitrary forward cannot be detected). A gradient read from .grad came
    from another draw than any pass an instrument makes, so instruments that compare gradients recompute them."""
    out = []
    for name, m in model.named_modules():
        if not m.training:
            continue
        dropout = isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
        if dropout or isinstance(m, _NoisyBatchNorm) or getattr(m, "stochastic", False) is True:
            out.append(name or type(m).__name__)
    return out


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """named_parameters that require grad, in registration order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """model(x) with `params` swapped in and clones of every buffer (so no running statistic changes)."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return functional_call(model, {**params, **buffers}, (x,), strict=False)


def loss_of(model: nn.Module, loss_fn: Callable, params: dict[str, torch.Tensor], x: torch.Tensor,
            y: torch.Tensor, need_grad: bool = True) -> torch.Tensor:
    loss = loss_fn(forward(model, params, x), y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn: expected a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    if need_grad and not loss.requires_grad:
        raise ValueError("loss_fn: the loss does not require grad (is it computed from the model's output without "
                         "detach()/no_grad, and do the parameters require grad?)")
    return loss.reshape(())


def loss_and_grads(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                   params: dict[str, torch.Tensor] | None = None,
                   wrt: Sequence[str] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(loss, [dloss/dparams[n] for n in wrt]) at `params` (default: the model's own), via autograd.grad.

    Parameters named in `wrt` (default: all trainable) become fresh leaves; the rest are detached, so the backward
    only runs as deep as it must. A parameter the loss does not reach gets a zero gradient.
    """
    base = {n: p.detach() for n, p in trainable(model)} if params is None else dict(params)
    wrt = list(base) if wrt is None else list(wrt)
    leaves = {n: base[n].detach().requires_grad_(True) for n in wrt}
    loss = loss_of(model, loss_fn, {**{n: t.detach() for n, t in base.items()}, **leaves}, x, y)
    grads = torch.autograd.grad(loss, [leaves[n] for n in wrt], allow_unused=True)
    return loss.detach(), [torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(wrt, grads)]


def flat_norm(tensors: Iterable[torch.Tensor]) -> float:
    """l2 norm of the concatenation (the vectorized / Frobenius norm); per-tensor norms in the tensors' dtype."""
    ts = [t.detach() for t in tensors]
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts)).double())) if ts else 0.0


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
