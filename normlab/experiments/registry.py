"""The experiment ids (SPEC §2 and normlab's own) and the module that defines each one.

EXPERIMENTS is normlab's Registry of the kind "experiment": id -> the module (in normlab.experiments) that defines
EXPERIMENT, imported when the experiment is asked for (so `reproduce --list` and `--only` import only what they run).
The registration order is the report's order.
"""
from __future__ import annotations

import importlib

from ..registry import Registry
from .base import Experiment

EXPERIMENTS = Registry("experiment")
for _id, _module in {
    "ioffe-mnist": "ioffe_mnist",
    "ioffe-lr": "ioffe_lr",
    "santurkar-vgg": "santurkar_vgg",
    "santurkar-noisy": "santurkar_noisy",
    "santurkar-ics": "santurkar_ics",
    "santurkar-landscape": "santurkar_landscape",
    "santurkar-lp": "santurkar_lp",
    "santurkar-bound": "santurkar_bound",
    "wuhe-batch": "wuhe_batch",
    "ng-regularization": "ng_regularization",
    "hessian": "hessian",
    "renorm-ghost": "renorm_ghost",
    "precise-bn": "precise_bn",
    "train-eval-gap": "train_eval_gap",
}.items():
    EXPERIMENTS.register(_id, _module)
# make demo: a representative subset that fits 15 minutes on 2 cores, set-up included (Ioffe Fig. 1 at the
# paper's 50k steps, Santurkar's landscape along the gradient, Theorem 4.1 on real batches)
DEMO = ("ioffe-mnist", "santurkar-landscape", "santurkar-bound")


def ids() -> list[str]:
    return EXPERIMENTS.names()


def get(exp_id: str) -> Experiment:
    """The experiment with this id (ValueError naming the valid ids otherwise)."""
    module = EXPERIMENTS.get(exp_id, "experiment")
    exp = importlib.import_module(f"normlab.experiments.{module}").EXPERIMENT
    if exp.id != exp_id:  # pragma: no cover - a wiring mistake
        raise RuntimeError(f"module {module} defines {exp.id!r}, expected {exp_id!r}")
    return exp


def resolve(only: list[str] | tuple[str, ...] | None) -> list[Experiment]:
    """Experiments named by --only (ids, comma-separated allowed; default: all), in registry order."""
    names: list[str] = []
    for item in only or ():
        names += [s.strip() for s in item.split(",") if s.strip()]
    chosen = names or ids()
    unknown = [n for n in chosen if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"--only: unknown experiment id(s) {unknown}; valid: {', '.join(ids())}")
    return [get(i) for i in ids() if i in chosen]
