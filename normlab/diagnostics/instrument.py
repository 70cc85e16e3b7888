"""What an instrument is, and the one registry of them that `normlab diagnose`, the CLI and the training hooks read.

An instrument measures a (model, batch) at one training step and returns rows: one dict (a per-model measurement:
landscape, hessian, spectrum, ...) or a list of dicts (one per layer: ics, distributions, bound, ...). Its class
declares the row schema once, in `fields`: the keys every row has (a row may add optional keys, listed in
`optional`); `Instrument.__call__` checks every row against it, so diagnose's JSON and diagnostics.jsonl hold the same
rows. normlab.train adds "step" and "hook" (= `name`) to each row it writes.

Adding an instrument touches one file (plus its docs): a subclass of Instrument with `name`, `fields` and `measure`,
registered with `@INSTRUMENTS.register(name)` where it is defined; `from_options` makes it available to
`normlab diagnose` as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..registry import Registry

INSTRUMENTS = Registry("instrument")


@dataclass
class Context:
    """What an instrument measures: the training loop's StepContext has the same attributes (step, model, x, y,
    loss_fn, optimizer, lr, loss); `normlab diagnose` builds one for a checkpoint's model and one batch."""
    model: nn.Module
    loss_fn: Any
    x: torch.Tensor
    y: torch.Tensor
    optimizer: torch.optim.Optimizer | None = None
    lr: float | None = None
    step: int = 0
    loss: float | None = None


@dataclass(frozen=True)
class Options:
    """`normlab diagnose`'s options, which any instrument may read in `from_options` (their defaults and meaning:
    summary.diagnose)."""
    layers: Any
    span: tuple[float, float]
    points: int
    spacing: str
    bn_mode: str
    iters: int | None
    trace_samples: int
    percentiles: Sequence[float]
    seed: int


class Instrument:
    """Base class: acts on its steps (`every` k steps counting from 0, or an explicit `steps` set) and returns rows
    that follow the declared schema. Subclasses set `name`, `fields` (and `optional`), implement `measure(ctx)`, and,
    to be offered by `normlab diagnose`, `from_options(opts)`; `needs` names the Context attributes `measure` needs
    (with the reason, for the error message); `whole_model` says that `--layers` does not select what it measures;
    `in_diagnose` that `normlab diagnose` offers it (built by `from_options`)."""

    name = "instrument"
    in_diagnose = False
    fields: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    needs: dict[str, str] = {}
    whole_model = False

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
        return self.check(self.measure(ctx))

    def measure(self, ctx: Any) -> list[dict] | dict:
        raise NotImplementedError

    @classmethod
    def from_options(cls, opts: Options) -> "Instrument":
        """The instrument as `normlab diagnose` runs it (classes with in_diagnose = True)."""
        raise NotImplementedError(f"instrument {cls.name!r} is not offered by normlab diagnose")

    def check(self, rows: list[dict] | dict) -> list[dict] | dict:
        """rows, after checking each against the declared schema (RuntimeError: the instrument broke its contract)."""
        for row in [rows] if isinstance(rows, dict) else rows:
            missing = [k for k in self.fields if k not in row]
            extra = [k for k in row if k not in self.fields and k not in self.optional]
            if missing or extra:
                raise RuntimeError(f"instrument {self.name!r}: a row breaks its declared schema (missing "
                                   f"{missing}, undeclared {extra}); fix the row or the declaration")
        return rows


def diagnosable() -> list[str]:
    """The instruments `normlab diagnose` offers, in registration order."""
    return [n for n, cls in INSTRUMENTS.items() if cls.in_diagnose]
