"""santurkar-vgg — Santurkar et al. (2018), Sec. 2, Fig. 1: BN trains faster; distributions differ only marginally.

Setup (paper): a VGG network on CIFAR-10, SGD, batch 128, 15k steps, no augmentation, Glorot init, learning rates
0.1 and 0.5, with and without BN. Plots: training and test accuracy vs steps; the distribution (histograms over time)
of activations at an early and a late layer.
Quick: Fashion-MNIST when installed (closest offline stand-in for CIFAR-10's difficulty), else MNIST; VGG-11 layout at
1/8 width (8 conv layers kept); 800 steps.

Instruments: "probe" (per-unit mean and variance, on one fixed probe batch, of the activation an early and a late
layer pass on: the ReLU output), "batch-acc" (training accuracy as the loop logs it), DistributionsHook for the
histograms of the figure.
Decision rules (fixed before the data):
  * core `fast-0.1`, `fast-0.5`: BN's mean training accuracy over the first quarter of training is higher than the
    plain net's by at least 2 points, at each learning rate (a diverged plain run counts as chance, 10%: at lr 0.5
    "trains faster" includes "trains at all");
  * core `late`, `early`: at lr 0.1, the step-to-step movement of the layer input's unit means (|Δ mean| / layer std,
    probe batch, second half of training: after the plain net's initial plateau) is the same with and without BN
    within a factor 2 ("differ only marginally");
  * side: the same for unit variances, and for the pre-normalization (conv) outputs of both layers.
Seeds: 5 at the quick scale — a run costs about 40 s on one core (38-40 s measured, 2026-12-04); 3 at the paper scale
(15,000 steps of the full VGG-11 per run).
"""
from __future__ import annotations

import math

from .base import Experiment, Outcome, Scale
from .common import (band, curve, n_weight_layers, quarter_layers, relus_after, stat_text, train_run,
                     weight_names, window_mean)
from .instruments import movement
from .judge import Judge
from .rows import BATCH_ACC, DISTRIBUTIONS, PROBE
from .variants import NormLR
from .verdict import Rule
from ..report import figure, panel, series

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lrs=(0.1, 0.5), eval_every=500, eval_samples=0, dist_every=100, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: Fashion-MNIST (MNIST when it is not installed)",
                      dataset="fashion-mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (the 8-conv VGG-11 layout kept), 800 steps", width=0.125,
                 steps=800, eval_every=100, eval_samples=2000, dist_every=20)
         .reduce("quick", "a run costs under a minute here: 5 seeds, the suite's rule (docs/experiments.md)",
                 seeds=5))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=6, eval_every=3, eval_samples=64,
                     dist_every=2, seeds=2)


def fast_rule(lr: float) -> Rule:
    return Rule(f"fast-{lr:g}", f"lr {lr:g}: BN trains faster (training accuracy over the first quarter of "
                f"training)", "training accuracy (%)", "greater", 0.02, "2 points: a visible lead on the paper's plot",
                scale=100, unit=" pts", fmt=".2f")


def stable_rule(site: str, what: str, core: bool, pre: bool = False) -> Rule:
    where = "pre-normalization output" if pre else "input"
    return Rule(f"{site}-{what}{'-pre' if pre else ''}", f"lr 0.1, {site} layer {where}: unit {what}s move about as "
                f"much with BN as without",
                f"step-to-step |Δ {what}| relative to the layer (second half of training, probe batch)", "similar",
                2.0, "within a factor 2: 'differ only marginally'", core=core, log=True)


class SanturkarVGG(Experiment):
    id = "santurkar-vgg"
    title = "VGG with and without BN: training speed and layer distributions"
    source = "Santurkar et al. 2018, Sec. 2, Fig. 1"
    claim = ("BN trains faster (and at larger learning rates), while the stability of layer-input distributions "
             "differs only marginally between the networks with and without BN.")
    paper_numbers = "VGG on CIFAR-10: test accuracy 83% with BN vs 80% without (Fig. 1 / Sec. 2)."
    setup_text = ("VGG on CIFAR-10, SGD, batch 128, 15k steps, no augmentation, Glorot init, lr 0.1 and 0.5, with "
                  "and without BN.")
    caveat = ("Fashion-MNIST/MNIST instead of CIFAR-10, 1/8 width and 800 steps instead of 15k. The core stability "
              "parts measure the layer input (after BN and ReLU) on the probe batch in training mode, where BN "
              "normalizes with that batch's own statistics: its per-unit moments before the ReLU are pinned to "
              "(β, γ²), so with BN only γ and β can move them, and a much smaller movement follows by construction; "
              "the pre-normalization outputs (side parts) are the comparison free of that pinning. Which of the two "
              "the paper's Fig. 1 histograms show is not stated in the sources at hand.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}

    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        layers = quarter_layers(n_weight_layers("vgg", s.in_shape, 10, kw))
        out = []
        for lr in s.lrs:
            for norm in ("none", "bn"):
                relus = relus_after("vgg", norm, s.in_shape, 10, kw, layers)
                pre = weight_names("vgg", norm, s.in_shape, 10, kw, layers)
                inst = [PROBE.spec(layers=relus + pre, dataset=self.dataset_of(s), every=s.dist_every),
                        DISTRIBUTIONS.spec(layers=relus, site="output", bins=40, units=[0],
                                           every=max(1, s.steps // 2)),
                        BATCH_ACC.spec(every=s.dist_every)]
                out += [train_run(self.id, NormLR(norm, lr), seed, inst, extra={"layers": relus, "pre": pre}, model="vgg",
                                  norm=norm, dataset=self.dataset_of(s), init="glorot", model_kw=kw, lr=lr,
                                  batch_size=s.batch, steps=s.steps, eval_every=s.eval_every,
                                  eval_samples=s.eval_samples, device=device)
                        for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results, screen=False)   # a diverged plain run is part of "trains faster": chance, not left out
        quarter = max(1, s.steps // 4)
        lr0 = min(s.lrs)
        early = {}
        for lr in s.lrs:
            acc = {}
            for n in ("bn", "none"):
                rs = j.runs(NormLR(n, lr))
                acc[n] = {r.run.seed: (0.1 if math.isnan(a) else a)
                          for r, a in zip(rs, window_mean(rs, BATCH_ACC.hook, "acc", 0, quarter))}
            early[lr] = acc
            j.decide(fast_rule(lr), "BN", acc["bn"], "no BN", acc["none"])
        moves = {}
        for site, which in (("late", -1), ("early", 0)):
            for k, what in enumerate(("mean", "variance")):
                for pre in (False, True):
                    per = {}
                    for n in ("bn", "none"):
                        def one(r, which=which, k=k, pre=pre) -> float:
                            name = r.run.config["extra"]["pre" if pre else "layers"][which]
                            return movement(PROBE.of(r, name), s.steps // 2, s.steps + 1)[k]
                        per[n] = j.per_seed(NormLR(n, lr0), one)
                    moves[(site, what + (" (pre-norm)" if pre else ""))] = per
                    j.decide(stable_rule(site, what, core=(k == 0 and not pre), pre=pre), "BN", per["bn"], "no BN",
                             per["none"])
        panels = [panel("training accuracy (train mode, step's batch)", "training step", "training accuracy",
                        [band(k.name, *curve(j.runs(k), "acc", "diagnostics", BATCH_ACC.where())) for k in j.all]),
                  panel("test accuracy", "training step", "test accuracy",
                        [band(k.name, *curve(j.runs(k), "test_acc")) for k in j.all])]
        for n, lab in (("none", "no BN"), ("bn", "BN")):
            r = j.all[NormLR(n, lr0)][0]
            for which, name in ((0, "early"), (-1, "late")):
                layer = r.run.config["extra"]["layers"][which]
                rows = [row for row in DISTRIBUTIONS.of(r, layer) if row.get("hist")]
                ser = []
                for i, row in enumerate(rows):
                    e, c = row["hist"]["edges"], row["hist"]["counts"]
                    tot = max(1, sum(c))
                    ser.append(series(f"step {row['step']}", [(a + b) / 2 for a, b in zip(e, e[1:])],
                                      [v / tot for v in c], key=f"t{i}"))
                panels.append(panel(f"{lab}, {name} layer (lr {lr0:g}, seed {r.run.seed})", "activation",
                                    "fraction of values", ser))
        figs = [figure("fig1", "Santurkar Fig. 1 (ours): training and test accuracy (mean and [min, max] over "
                               "seeds), and histograms of the activations (after the ReLU) that an early and a late "
                               "layer pass on, at the start, middle and end of training, with and without BN.",
                       panels, ncols=3)]
        table = [{"run": NormLR(n, lr).name, "train acc, first 1/4 (%)": stat_text(list(early[lr][n].values()),
                                                                                ".2f", 100)}
                 for lr in s.lrs for n in ("none", "bn")]
        table += [{"run": NormLR(n, lr0).name, **{f"{site} |Δ {what}| (rel.)": stat_text(list(v[n].values()))
                                                for (site, what), v in moves.items()}} for n in ("none", "bn")]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = SanturkarVGG()
