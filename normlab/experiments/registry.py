"""The experiment ids (SPEC §2 and normlab's own) and the module that defines each one."""
from __future__ import annotations

import importlib

from .base import Experiment

# id -> module (in normlab.experiments) that defines EXPERIMENT; order = report order
MODULES: dict[str, str] = {
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
}
# make demo: a representative subset that fits 15 minutes on 2 cores, set-up included (Ioffe Fig. 1 at the
# paper's 50k steps, Santurkar's landscape along the gradient, Theorem 4.1 on real batches)
DEMO = ("ioffe-mnist", "santurkar-landscape", "santurkar-bound")


def ids() -> list[str]:
    return list(MODULES)


def get(exp_id: str) -> Experiment:
    """The experiment with this id (ValueError naming the valid ids otherwise)."""
    if exp_id not in MODULES:
        raise ValueError(f"experiment: unknown id {exp_id!r}; valid: {', '.join(MODULES)}")
    mod = importlib.import_module(f"normlab.experiments.{MODULES[exp_id]}")
    exp = mod.EXPERIMENT
    if exp.id != exp_id:  # pragma: no cover - a wiring mistake
        raise RuntimeError(f"module {MODULES[exp_id]} defines {exp.id!r}, expected {exp_id!r}")
    return exp


def resolve(only: list[str] | tuple[str, ...] | None) -> list[Experiment]:
    """Experiments named by --only (ids, comma-separated allowed; default: all), in registry order."""
    names: list[str] = []
    for item in only or ():
        names += [s.strip() for s in item.split(",") if s.strip()]
    chosen = names or ids()
    unknown = [n for n in chosen if n not in MODULES]
    if unknown:
        raise ValueError(f"--only: unknown experiment id(s) {unknown}; valid: {', '.join(MODULES)}")
    return [get(i) for i in ids() if i in chosen]
