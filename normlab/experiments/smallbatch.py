"""The small-batch runs shared by wuhe-batch, renorm-ghost, precise-bn and train-eval-gap.

One configuration (Wu & He's protocol: SGD momentum 0.9, weight decay 1e-4, lr 0.1 * b / 32 decayed 10x for the
last quarter of training, the same number of training samples at every batch size b) so that a run needed by several
experiments is trained once: a run's identity is its config hash, and these four experiments build their configs
here. Every BN run carries the "eval-modes" instrument at its last step (EMA vs PreciseBN vs batch statistics;
precise-bn and train-eval-gap read it). Every run evaluates at each tenth of training, so that `converged` can read
how much the training loss still fell over the last tenth.

Preconditions the four experiments share (SPEC §2): the runs converged (training loss fell by at most 10% over the
last tenth of training), and, where a part compares against BN's small-batch penalty, that penalty is present.
"""
from __future__ import annotations

from .base import Run, Scale
from .common import offline, train_run
from .rows import EVAL_MODES
from .variants import NormBatch

# normlab.data has no ImageNet: the paper scale runs CIFAR-10 with a CIFAR ResNet-20 at 4x width (64-256 channels,
# so GN's G = 32 leaves 2-8 channels per group as in ResNet-50), 30 epochs.
PAPER = Scale("paper", dataset="cifar10", model="resnet", model_kw={"depth": 20, "width": 4.0}, gn="gn:32",
              batches=(32, 16, 8, 4, 2), samples=30 * 50_000, lr32=0.1, eval_samples=0, probe_samples=10_000,
              seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST; a small conv net whose last norm layer sees "
                      "7x7 positions; GN G = 8 for its 16-64 channels", dataset="mnist", model="vgg",
                      model_kw={"cfg": [16, "M", 32, "M", 64, "M"]}, gn="gn:8")
         .reduce("quick", "Fashion-MNIST (MNIST when it is not installed): harder than MNIST, so that BN's "
                 "small-batch penalty can show", dataset="fashion-mnist")
         .reduce("quick", "a 2-core CPU: three batch sizes, 60,000 training samples per run (1 epoch); "
                 "test error on a fixed 5,000-image half of the test split; eval-modes probes on 2,000 images",
                 batches=(32, 8, 2), samples=60_000, eval_samples=5000, probe_samples=2000))
SMOKE = QUICK.reduce("smoke", "tests only", samples=64, batches=(32, 2), eval_samples=64, probe_samples=64, seeds=2)
SCALES = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


def dataset(s: Scale) -> str:
    return offline(s.dataset)


def steps(s: Scale, b: int) -> int:
    return max(1, s.samples // b)


CONVERGED = 0.10   # a run has converged when its training loss fell by at most 10% over the last tenth of training


def require_converged(j, results_of, decide_at: str = "more epochs (a medium or the paper scale)") -> None:
    """The shared precondition: every kept run's training loss fell by at most CONVERGED over its last tenth."""
    from .judge import converged
    falls = [(g, converged(r)) for g in results_of for r in j.runs(g)]
    bad = [(g, f) for g, f in falls if not (f <= CONVERGED)]
    worst = max((f for _, f in falls if f == f), default=float("nan"))
    j.require("runs converged", not bad, f"{len(bad)} of {len(falls)} runs' training loss still fell by more than "
              f"{CONVERGED:.0%} over the last tenth of training (worst {100 * worst:.0f}%)", decide_at)


def run(exp: str, s: Scale, v: NormBatch, seed: int, device: str = "cpu") -> Run:
    """One run of variant v: v.norm at batch v.batch (lr and steps from the batch). ghost-bn:V runs at its own batch."""
    norm, b = v
    inst = []
    if norm == "bn":
        inst = [EVAL_MODES.spec(dataset=dataset(s), steps=[steps(s, b) - 1], batch=b,
                                eval_samples=s.probe_samples, precise_samples=s.probe_samples)]
    n = steps(s, b)
    return train_run(exp, v, seed, inst, model=s.model, norm=norm, dataset=dataset(s),
                     model_kw=s.model_kw, optimizer="sgd", lr=s.lr32 * b / 32, momentum=0.9, weight_decay=1e-4,
                     schedule="step", lr_milestones=(max(1, 3 * n // 4),), lr_gamma=0.1, batch_size=b, steps=n,
                     eval_every=max(1, n // 10), eval_samples=s.eval_samples, device=device)


def eval_modes(result) -> dict:
    """The eval-modes row of a BN run (its last step), or {} when absent."""
    rows = EVAL_MODES.of(result)
    return rows[-1] if rows else {}

# MNIST shows no small-batch penalty for BN at CPU scale (issue 14 measured batch 2 at 1.34% error vs 2.58% at 32 after
# 2 epochs), so when it stands in for Fashion-MNIST these claims cannot be decided.
UNFIT = ("mnist",)
