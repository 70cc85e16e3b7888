"""The bridge from a Run to normlab.train: the full TrainConfig (hashed) and the call with instruments as hooks.

This is how every run executes unless its experiment has its own procedure (Experiment.execute)."""
from __future__ import annotations

import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..train import train
from .instruments import build


def train_config(**kw: Any) -> dict:
    """The full TrainConfig as a dict, defaults included, so a run's hash covers every setting.

    Building the TrainConfig here also validates the arguments before any run starts.
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"train config: unknown field(s) {unknown}; TrainConfig has {sorted(known)}")
    kw.setdefault("progress", False)   # reproduce prints its own per-run progress (Progress below)
    return TrainConfig(**kw).validate().to_dict()


class Progress:
    """A train hook that prints the run's step every `every_s` seconds (per-run progress); writes no rows."""

    name = "progress"

    def __init__(self, label: str, steps: int, every_s: float = 30.0) -> None:
        self.label, self.steps, self.every_s = label, steps, every_s
        self.t0 = self.last = self.first = None

    def __call__(self, ctx: Any) -> None:
        now = time.monotonic()
        if self.t0 is None:   # the clock starts at the first step (after data loading and the step-0 evaluation)
            self.t0 = self.last = now
            self.first = ctx.step
            return None
        if now - self.last >= self.every_s:
            self.last = now
            done = ctx.step + 1
            eta = (now - self.t0) / max(1, done - self.first) * (self.steps - done)
            print(f"      … {self.label}: step {done:,}/{self.steps:,} ({100 * done / self.steps:.0f}%, "
                  f"~{eta:.0f}s left)", flush=True, file=sys.__stdout__)
        return None


def train_run(run: Any, out_dir: Path) -> dict:
    """Train run.config["train"] with its instruments attached as hooks; returns train's summary.

    The hooks are built from the specs in run.config["instruments"] only: a run may be shared by several experiments,
    so its config alone must say what is measured."""
    cfg = TrainConfig.from_dict(run.config["train"])
    hooks = [build(spec) for spec in run.config.get("instruments", [])]
    hooks.append(Progress(f"{run.exp} {run.label}", cfg.steps))
    return train(cfg, out_dir, hooks=hooks, resume=True)
