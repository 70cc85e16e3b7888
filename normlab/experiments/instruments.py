"""Instrument specs -> train hooks. A spec is a JSON dict {"name": ..., **kwargs}, part of the run's hashed config.

Names: the hooks of normlab.diagnostics (ics, landscape, hessian, distributions, bound) and two of normlab's own:
"batch-acc", the training accuracy as a training loop sees it (train mode, the step's batch, noise included), and
"eval-modes": test accuracy of a copy of the model with EMA running statistics, with PreciseBN statistics and with
batch statistics at the training batch size (Wu & Johnson 2021).
"""
from __future__ import annotations

import copy
from typing import Any

import torch


def spec(name: str, **kw: Any) -> dict:
    """An instrument spec for a run's config."""
    return {"name": name, **kw}


def build(s: dict) -> Any:
    kw = dict(s)
    name = kw.pop("name")
    if name == "eval-modes":
        return EvalModes(**kw)
    if name == "batch-acc":
        return BatchAccuracy(**kw)
    from ..diagnostics import build_hook
    return build_hook(name, **kw)


class BatchAccuracy:
    """Every `every` steps: accuracy and loss of the model in training mode on the step's own batch (pre-update
    weights, batch statistics, stochastic layers drawing fresh noise), i.e. the training accuracy a training loop
    logs. Running statistics and the global RNG are left as they were (diagnostics.common.forward / rng_fork)."""

    name = "batch-acc"

    def __init__(self, every: int = 10) -> None:
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every: expected an int >= 1, got {every!r}")
        self.every = every

    def __call__(self, ctx: Any) -> dict | None:
        if ctx.step % self.every:
            return None
        from ..diagnostics.common import forward, rng_fork
        with torch.no_grad(), rng_fork(ctx.x, ctx.model):
            out = forward(ctx.model, {n: p.detach() for n, p in ctx.model.named_parameters()}, ctx.x)
        return {"acc": float((out.argmax(1) == ctx.y).float().mean()), "loss": float(ctx.loss_fn(out, ctx.y))}


class EvalModes:
    """At `steps`, on a deep copy of the model (the run is untouched): test accuracy and loss with
      ema      the running statistics as trained (eval mode),
      precise  running statistics recomputed by normlab.tools.precise_bn from `precise_samples` training images,
      batch    batch statistics (train mode) on test batches of `batch` images, running statistics not updated.
    One row per step: {"ema_acc", "precise_acc", "batch_acc", "ema_loss", ...}."""

    name = "eval-modes"

    def __init__(self, dataset: str, steps: list[int], batch: int, eval_samples: int = 2000,
                 precise_samples: int = 2000, data_root: str | None = None) -> None:
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

    def __call__(self, ctx: Any) -> dict | None:
        if ctx.step not in self.steps:
            return None
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
