"""Instrument specs -> train hooks. A spec is a JSON dict {"name": ..., **kwargs}, part of the run's hashed config.

Names: every instrument in normlab.diagnostics.INSTRUMENTS: the hooks of normlab.diagnostics (ics, landscape,
hessian, spectrum, distributions, bound) and three registered here:
"batch-acc", the training accuracy as a training loop sees it (train mode, the step's batch, noise included),
"probe", per-unit moments of named modules' outputs on one fixed probe batch (distribution stability without the
sampling noise of a new batch each record), and
"eval-modes": test accuracy of a copy of the model with EMA running statistics, with PreciseBN statistics and with
batch statistics at the training batch size (Wu & Johnson 2021).
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..diagnostics import INSTRUMENTS, Instrument


def spec(name: str, **kw: Any) -> dict:
    """An instrument spec for a run's config."""
    return {"name": name, **kw}


def build(s: dict) -> Any:
    """The train hook of instrument spec `s`, from the instrument registry."""
    kw = dict(s)
    return INSTRUMENTS.get(kw.pop("name"), "name")(**kw)


@INSTRUMENTS.register("batch-acc")
class BatchAccuracy(Instrument):
    """Every `every` steps: accuracy and loss of the model in training mode on the step's own batch (pre-update
    weights, batch statistics, stochastic layers drawing fresh noise), i.e. the training accuracy a training loop
    logs. Running statistics and the global RNG are left as they were (diagnostics.common.forward / rng_fork)."""

    name = "batch-acc"
    fields = ("acc", "loss")

    def __init__(self, every: int = 10) -> None:
        super().__init__(every)

    def measure(self, ctx: Any) -> dict:
        from ..diagnostics.common import forward, rng_fork
        with torch.no_grad(), rng_fork(ctx.x, ctx.model):
            out = forward(ctx.model, {n: p.detach() for n, p in ctx.model.named_parameters()}, ctx.x)
        return {"acc": float((out.argmax(1) == ctx.y).float().mean()), "loss": float(ctx.loss_fn(out, ctx.y))}


@INSTRUMENTS.register("probe")
class Probe(Instrument):
    """Every `every` steps: the mean and variance of every unit (channel) of each module in `layers` (output), on a
    fixed probe batch of `batch` test images (the first of a fixed permutation, the same for every run), in training
    mode as the network trains (batch statistics; running statistics, the RNG and noisy BN's generator left as they
    were). Row per layer: {"layer", "mean": [C], "var": [C]}. Comparing records measures how the distribution of a
    layer's units moves as the weights train, free of the sampling noise of a fresh batch (Santurkar Fig. 1-2)."""

    name = "probe"
    fields = ("layer", "mean", "var")

    def __init__(self, layers: list[str], dataset: str, every: int = 10, batch: int = 256,
                 data_root: str | None = None) -> None:
        if not (isinstance(every, int) and every >= 1) or not (isinstance(batch, int) and batch >= 2):
            raise ValueError(f"every, batch: expected ints >= 1 and >= 2, got {every!r}, {batch!r}")
        super().__init__(every)
        self.layers, self.dataset, self.every, self.batch, self.data_root = list(layers), dataset, every, batch, \
            data_root
        self._x = None

    def _probe(self, device: torch.device) -> torch.Tensor:
        if self._x is None:
            from .. import data
            ds = data.load(self.dataset, root=self.data_root)
            idx = torch.randperm(len(ds.x_test), generator=torch.Generator().manual_seed(977))[: self.batch]
            self._x = ds.x_test[idx].to(device)
        return self._x

    def measure(self, ctx: Any) -> list[dict]:
        from ..diagnostics.common import forward, rng_fork
        mods = dict(ctx.model.named_modules())
        missing = [n for n in self.layers if n not in mods]
        if missing:
            raise ValueError(f"layers: no module named {missing} in the model")
        seen: dict[str, torch.Tensor] = {}
        handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
                   for n in self.layers]
        try:
            with torch.no_grad(), rng_fork(ctx.x, ctx.model):
                forward(ctx.model, {n: p.detach() for n, p in ctx.model.named_parameters()},
                        self._probe(ctx.x.device))
        finally:
            for h in handles:
                h.remove()
        rows = []
        for n in self.layers:
            o = seen[n].double()
            flat = o.transpose(0, 1).reshape(o.shape[1], -1)   # (C, N * positions)
            rows.append({"layer": n, "mean": flat.mean(1).tolist(), "var": flat.var(1, unbiased=False).tolist()})
        return rows


def movement(rows: list[dict], lo: int, hi: int) -> tuple[float, float]:
    """Mean over consecutive probe records with lo <= step < hi of the layer's step-to-step movement:
    (mean over units of |Δ mean_c| / layer std, mean over units of |Δ var_c| / layer variance), the layer's std and
    variance taken over all its units and positions at the earlier record (scale-free, so nets whose activations
    differ in scale compare fairly). NaN when fewer than two records fall in the window."""
    import math
    sel = [r for r in rows if lo <= r["step"] < hi]
    dm, dv = [], []
    for a, b in zip(sel, sel[1:]):
        ma, va, mb, vb = (torch.tensor(a["mean"]), torch.tensor(a["var"]), torch.tensor(b["mean"]),
                          torch.tensor(b["var"]))
        layer_var = float((va + ma ** 2).mean() - ma.mean() ** 2)   # variance over units and positions
        if layer_var <= 0:
            continue
        dm.append(float((mb - ma).abs().mean()) / math.sqrt(layer_var))
        dv.append(float((vb - va).abs().mean()) / layer_var)
    if not dm:
        return math.nan, math.nan
    return sum(dm) / len(dm), sum(dv) / len(dv)


@INSTRUMENTS.register("eval-modes")
class EvalModes(Instrument):
    """At `steps`, on a deep copy of the model (the run is untouched): test accuracy and loss with
      ema      the running statistics as trained (eval mode),
      precise  running statistics recomputed by normlab.tools.precise_bn from `precise_samples` training images,
      batch    batch statistics (train mode) on test batches of `batch` images, running statistics not updated.
    One row per step: {"ema_acc", "precise_acc", "batch_acc", "ema_loss", ...}."""

    name = "eval-modes"
    fields = ("ema_acc", "ema_loss", "precise_acc", "precise_loss", "batch_acc", "batch_loss", "batch")

    def __init__(self, dataset: str, steps: list[int], batch: int, eval_samples: int = 2000,
                 precise_samples: int = 2000, data_root: str | None = None) -> None:
        super().__init__(steps=steps)
        self.dataset, self.steps, self.batch = dataset, set(int(s) for s in steps), int(batch)
        self.eval_samples, self.precise_samples, self.data_root = int(eval_samples), int(precise_samples), data_root
        self._data = None

    def _load(self, device: torch.device) -> tuple:
        if self._data is None:
            from .. import data
            ds = data.load(self.dataset, root=self.data_root)
            g = torch.Generator().manual_seed(4321)   # fixed subsets: independent of the run's seed
            te = torch.randperm(len(ds.x_test), generator=g)[: self.eval_samples or len(ds.x_test)]
            tr = torch.randperm(len(ds.x_train), generator=g)[: self.precise_samples]
            self._data = (ds.x_test[te].to(device), ds.y_test[te].to(device), ds.x_train[tr].to(device))
        return self._data

    @torch.no_grad()
    def _acc(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, chunk: int) -> tuple:
        correct, total = 0, 0.0
        chunk = min(chunk, len(x))
        n = (len(x) // chunk) * chunk   # whole batches only: batch statistics of a smaller last batch would differ
        for i in range(0, n, chunk):
            out = model(x[i:i + chunk])
            correct += int((out.argmax(1) == y[i:i + chunk]).sum())
            total += float(loss_fn(out, y[i:i + chunk])) * chunk
        return correct / n, total / n

    def measure(self, ctx: Any) -> dict:
        from ..tools import precise_bn
        x, y, xtr = self._load(ctx.x.device)
        m = copy.deepcopy(ctx.model)
        with torch.random.fork_rng():
            m.eval()
            ema_acc, ema_loss = self._acc(m, x, y, ctx.loss_fn, 500)
            m.train()   # batch statistics; the copy's running buffers may change, the run's do not
            batch_acc, batch_loss = self._acc(m, x, y, ctx.loss_fn, self.batch)
            m = copy.deepcopy(ctx.model)
            precise_bn(m, xtr.split(self.batch), self.precise_samples)
            m.eval()
            precise_acc, precise_loss = self._acc(m, x, y, ctx.loss_fn, 500)
        return {"ema_acc": ema_acc, "ema_loss": ema_loss, "precise_acc": precise_acc, "precise_loss": precise_loss,
                "batch_acc": batch_acc, "batch_loss": batch_loss, "batch": self.batch}
