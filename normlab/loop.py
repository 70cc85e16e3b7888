"""The training loop itself, in the style of detectron2's TrainerBase: a `Trainer` that runs the steps and calls its
hooks around each one. Everything else a run does (learning-rate schedule, divergence, instruments, metrics rows,
evaluation, progress, checkpoints, the summary) is a hook in normlab.hooks; normlab.train assembles them.

Per step t (0-based):

    before_step()                      hooks: the learning rate of step t
    x, y = batch(t)                    batch t of the run's data order
    loss = loss_fn(model(x), y); loss.backward(); loss = reduce(loss)    (DDP: gradients averaged over ranks)
    after_backward()                   hooks: divergence check (may stop the run here), instruments (StepContext)
    optimizer.step()
    after_step()                       hooks: metrics rows, progress, checkpoints

before_train() runs once before the first step, after_train() once after the last (or after a stop).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["HookBase", "Trainer", "StepContext"]


class HookBase:
    """A hook of a Trainer: override any of the five methods; `self.trainer` is set by Trainer.register."""

    trainer: "Trainer"

    def before_train(self) -> None:
        """Once, before the first step (trainer.start is the first step, trainer.end the step count)."""

    def before_step(self) -> None:
        """Before the forward pass of step trainer.step."""

    def after_backward(self) -> None:
        """Gradients of step trainer.step are ready (averaged over ranks), the optimizer has not stepped yet."""

    def after_step(self) -> None:
        """After optimizer.step() of step trainer.step; trainer.step + 1 updates are done."""

    def after_train(self) -> None:
        """Once, after the last step or a stop; trainer.wall is the run's wall clock in seconds."""


class Trainer:
    """Runs steps [start, end) of SGD-style training and calls its hooks around each step (module docstring).

    Args:
        model: the module in training (the bare module; DDP gradient averaging is `reduce`).
        optimizer: steps once per step, after the after_backward hooks.
        loss_fn: loss_fn(model(x), y) -> scalar tensor.
        batch: batch(t) -> (x, y), step t's batch.
        reduce: reduce(loss) -> loss, called after loss.backward() (DDP: average gradients and loss over ranks).
        elapsed: wall-clock seconds of earlier parts of this run (resume), so trainer.elapsed() continues them.
    A hook ends the run by setting trainer.stop = True in after_backward: the later hooks and the update of that
    step do not run, and after_train follows.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, elapsed: float = 0.0) -> None:
        self.model, self.optimizer, self.loss_fn, self.batch, self.reduce = model, optimizer, loss_fn, batch, reduce
        self.hooks: list[HookBase] = []
        self.t0 = time.perf_counter() - elapsed
        self.start = self.end = self.step = 0
        self.x = self.y = self.loss = None
        self.stop = False
        self.wall = 0.0

    def register(self, hooks: Sequence[HookBase]) -> "Trainer":
        """Append hooks; they are called in this order at every event."""
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)
        return self

    def elapsed(self) -> float:
        """Wall-clock seconds of this run so far, resumed parts included."""
        return time.perf_counter() - self.t0

    def train(self, start: int, end: int) -> None:
        """Run steps start .. end-1 (fewer when a hook stops the run)."""
        self.start, self.end = start, end
        self._call("before_train")
        self.model.train()
        for self.step in range(start, end):
            self._call("before_step")
            self.run_step()
            if self.stop:
                break
            self.optimizer.step()
            self._call("after_step")
        self.wall = self.elapsed()
        self._call("after_train")

    def run_step(self) -> None:
        """Forward, loss, backward (and `reduce`) of step self.step, then the after_backward hooks."""
        self.x, self.y = self.batch(self.step)
        loss = self.loss_fn(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.loss = self.reduce(loss) if self.reduce is not None else loss
        for h in self.hooks:
            h.after_backward()
            if self.stop:   # e.g. divergence: neither the later hooks nor the update see this step
                return

    def _call(self, event: str) -> None:
        for h in self.hooks:
            getattr(h, event)()


class StepContext:
    """What a train hook (an instrument) sees at step t: after loss.backward() (and DDP gradient averaging), before
    optimizer.step().

    Fields: step, model (the bare module, never a DDP wrapper), x, y (this step's batch), loss_fn(outputs, y) -> scalar,
    optimizer, lr, loss (float; read lazily so that a run without hooks never waits for it), loss_tensor."""

    __slots__ = ("step", "model", "x", "y", "loss_fn", "optimizer", "lr", "loss_tensor", "_loss")

    def __init__(self, step: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                 optimizer: torch.optim.Optimizer, lr: float, loss_tensor: torch.Tensor,
                 loss: float | None = None) -> None:
        self.step, self.model, self.x, self.y, self.loss_fn = step, model, x, y, loss_fn
        self.optimizer, self.lr, self.loss_tensor, self._loss = optimizer, lr, loss_tensor, loss

    @property
    def loss(self) -> float:
        if self._loss is None:
            self._loss = float(self.loss_tensor)
        return self._loss
