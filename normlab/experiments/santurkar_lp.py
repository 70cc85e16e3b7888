"""santurkar-lp — Santurkar et al. (2018), Sec. 3.3, Fig. 5, 6 (and 13-15): lp normalization instead of BN.

Setup (paper): the VGG of Fig. 1 and the deep linear net of Fig. 3 with BN replaced by lp normalization, p = 1, 2,
inf: center by the batch mean, divide by the batch average of the lp norm (SPEC §1.3; normlab's l1-bn, bn, linf-bn).
Plots: training curves (accuracy for VGG, loss for the linear net); distributions; smoothness.
Quick: VGG on Fashion-MNIST (MNIST when it is not installed), 1/8 width, 500 steps; the linear net (full batch,
3,000 steps instead of the paper's 10k) at the paper's rates 1e-6 and 1e-7 on the summed loss, i.e. 1e-2 and 1e-3 on
normlab's mean loss (SPEC §2 notes). The standard net is shown for reference.

Instruments: "batch-acc" (training accuracy in train mode on the step's batch, every 10 steps).
Decision rules (fixed before the data; paired by seed):
  * core `vgg`: the training accuracies (last 10% of steps) of L1 and L∞ normalization are each the same as L2's
    (BN's) within 2 points;
  * core `linear-<lr>`: L1 normalization reaches a lower final training loss than BN, by at least a factor 1.1.
The "no Gaussian-like or stable distributions" part of the claim is not measured here.
Seeds: 3 — a VGG run costs about a minute (the linear runs share the seeds).
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, final, offline, stat_text, tail_mean, train_run
from .judge import Judge
from .rows import BATCH_ACC
from .variants import Net
from .verdict import Rule
from ..report import figure, panel

NORMS = {"none": "standard", "bn": "L2 (BN)", "l1-bn": "L1", "linf-bn": "L∞"}
PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, eval_every=500, eval_samples=0, lin_steps=10_000, lin_lrs=(1e-2, 1e-3), tol=0.02, seeds=3)   # 1e-6, 1e-7 summed
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: Fashion-MNIST (MNIST when not installed)",
                      dataset="fashion-mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (8-conv layout kept), 500 steps", width=0.125, steps=500,
                 eval_every=50, eval_samples=2000)
         .reduce("quick", "a 2-core CPU: the deep linear net 3,000 steps instead of 10,000", lin_steps=3_000))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, eval_every=2, eval_samples=64,
                     lin_steps=4, seeds=2)


class SanturkarLp(Experiment):
    id = "santurkar-lp"
    title = "lp normalization (p = 1, 2, ∞) in place of BN"
    source = "Santurkar et al. 2018, Sec. 3.3, Fig. 5, 6"
    claim = ("Networks with l1, l2 or l∞ normalization train comparably to BN (l1 even better on the deep linear "
             "net), although their layer distributions are neither Gaussian-like nor stable.")
    paper_numbers = ("Fig. 5 (plots): VGG training curves of all lp variants close to BN's; Fig. 6: L1 best on the "
                     "linear net.")
    setup_text = ("VGG on CIFAR-10 and the 25-layer deep linear net with L1, L2, L∞ batch normalization (center by "
                  "the "
                  "batch mean, divide by the batch mean of the lp norm).")
    caveat = ("Fashion-MNIST/MNIST and 500 steps instead of CIFAR-10 and 15k; the lp formula is normlab's reading "
              "([open] in the paper); the linear net's init is normlab's.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}

    def dataset_of(self, s: Scale) -> str:
        return f"{offline(s.dataset)} (VGG); synthetic-linear (linear net)"

    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        out = [train_run(self.id, Net("vgg", norm), seed, [BATCH_ACC.spec(every=10)], model="vgg", norm=norm,
                         dataset=offline(s.dataset),
                         init="glorot", model_kw=kw, lr=s.lr, batch_size=s.batch, steps=s.steps,
                         eval_every=s.eval_every, eval_samples=s.eval_samples, device=device)
               for norm in NORMS for seed in seeds]
        out += [train_run(self.id, Net("linear", norm, lr), seed, model="linear", norm=norm,
                          dataset="synthetic-linear", init="glorot", loss="mse", lr=lr, batch_size=1000,
                          steps=s.lin_steps, eval_every=max(1, s.lin_steps // 20), eval_samples=0, device=device)
                for lr in s.lin_lrs for norm in ("bn", "l1-bn") for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        acc = {n: j.per_seed(Net("vgg", n), lambda r: tail_mean([r], BATCH_ACC.hook, "acc")[0]) for n in NORMS}
        j.similar(Rule("vgg", f"VGG: L1 and L∞ train as well as L2 (BN): training accuracy over the last 10% of "
                              f"steps", "training accuracy (%)", "similar", s.tol, "2 points: 'comparably'",
                       scale=100, unit=" pts", fmt=".2f"), {NORMS[n]: acc[n] for n in ("bn", "l1-bn", "linf-bn")},
                  NORMS["bn"])
        loss = {}
        for lr in s.lin_lrs:
            loss[lr] = {n: j.per_seed(Net("linear", n, lr), lambda r: final([r], "train_loss")[0])
                        for n in ("bn", "l1-bn")}
            j.decide(Rule(f"linear-{lr:g}", f"linear net (lr {lr:g}): L1 reaches a lower final training loss than BN",
                          "final training loss (MSE)", "less", 1.1, "a factor 1.1: 'even better'", log=True),
                     "L1", loss[lr]["l1-bn"], "BN", loss[lr]["bn"])
        g = {k: j.runs(k) for k in j.all}
        panels = [panel("VGG training accuracy", "training step", "training accuracy",
                        [band(NORMS[n], *curve(g[Net("vgg", n)], "acc", "diagnostics", BATCH_ACC.where()))
                         for n in NORMS]),
                  *[panel(f"deep linear net training loss, lr {lr:g}", "training step", "training loss (MSE)",
                          [band(NORMS[n], *curve(g[Net("linear", n, lr)], "train_loss")) for n in ("bn", "l1-bn")],
                          ylog=True) for lr in s.lin_lrs]]
        figs = [figure("fig5", "Santurkar Fig. 5/6 (ours): training curves with lp normalization; mean and [min, max] "
                               "over seeds.", panels, ncols=2)]
        table = [{"net": "VGG", "norm": NORMS[n], "train acc, last 10% (%)": stat_text(list(acc[n].values()), ".2f",
                                                                                     100)} for n in NORMS]
        table += [{"net": f"linear lr {lr:g}", "norm": NORMS[n], "final train loss": stat_text(list(v[n].values()),
                                                                                               ".4g")}
                  for lr, v in loss.items() for n in ("bn", "l1-bn")]
        notes = ["The distribution part of the claim (no Gaussian-like or stable distributions) is not measured by "
                 "this experiment."]
        return j.outcome(self.claim, figs, table, notes)


EXPERIMENT = SanturkarLp()
