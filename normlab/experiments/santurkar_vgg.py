"""santurkar-vgg — Santurkar et al. (2018), Sec. 2, Fig. 1: BN trains faster; distributions differ only marginally.

Setup (paper): a VGG network on CIFAR-10, SGD, batch 128, 15k steps, no augmentation, Glorot init, learning rates
0.1 and 0.5, with and without BN. Plots: training and test accuracy vs steps; the distribution (histograms over time)
of activations at an early and a late layer.
Quick: Fashion-MNIST when installed (closest offline stand-in for CIFAR-10's difficulty), else MNIST; VGG-11 layout at
1/8 width (8 conv layers kept); 500 steps.

Instruments: DistributionsHook on the output of the ReLU after an early and a late weight layer (1/4 and 3/4 of the
depth: the activation the next layer receives), every `dist_every` steps: histograms, and per record the change of
each unit's mean and variance.
Training accuracy: the "batch-acc" instrument (train mode, the step's batch, as a training loop logs it).
Verdict: (1, 2) BN's mean training accuracy over the first quarter of training is higher than the plain net's, at
lr 0.1 and at lr 0.5 (a diverged run counts as chance);
(3, 4) stability differs only marginally: the late layer's relative step-to-step change of unit means
(dmean / layer std) and of unit variances (dvar / layer variance), averaged over records at lr 0.1, agree within a
factor of 2 between BN and no BN (|log2 ratio| <= 1, tolerance fixed in advance).
"""
from __future__ import annotations

import math

from .base import Experiment, Outcome, Scale
from .common import (at_step, band, curve, groups, n_weight_layers, quarter_layers, relus_after,
                     relative_change, stat_text, time_mean, train_run, window_mean)
from .instruments import spec
from .verdict import all_of, greater, similar
from ..report import figure, panel, series

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lrs=(0.1, 0.5), eval_every=500, eval_samples=0, dist_every=100, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: Fashion-MNIST (MNIST when it is not installed)",
                      dataset="fashion-mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (the 8-conv VGG-11 layout kept), 500 steps", width=0.125,
                 steps=500, eval_every=50, eval_samples=2000, dist_every=10))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=6, eval_every=3, eval_samples=64,
                     dist_every=2, seeds=2)


class SanturkarVGG(Experiment):
    id = "santurkar-vgg"
    title = "VGG with and without BN: training speed and layer distributions"
    source = "Santurkar et al. 2018, Sec. 2, Fig. 1"
    claim = ("BN trains faster (and at larger learning rates), while the stability of layer-input distributions "
             "differs only marginally between the networks with and without BN.")
    paper_numbers = "VGG on CIFAR-10: test accuracy 83% with BN vs 80% without (Fig. 1 / Sec. 2)."
    setup_text = ("VGG on CIFAR-10, SGD, batch 128, 15k steps, no augmentation, Glorot init, lr 0.1 and 0.5, with "
                  "and without BN.")
    caveat = ("Fashion-MNIST/MNIST instead of CIFAR-10, 1/8 width and 500 steps instead of 15k; the step-to-step "
              "change of the distributions is measured on the step's own batch, so sampling noise adds to it.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        layers = quarter_layers(n_weight_layers("vgg", s.in_shape, 10, kw))
        out = []
        for lr in s.lrs:
            for norm in ("none", "bn"):
                relus = relus_after("vgg", norm, s.in_shape, 10, kw, layers)
                inst = [spec("distributions", layers=relus, site="output", bins=40, units=[0], every=s.dist_every),
                        spec("batch-acc", every=s.dist_every)]
                out += [train_run(self.id, f"{norm} lr={lr:g}", seed, inst, extra={"layers": relus}, model="vgg",
                                  norm=norm, dataset=self.dataset_of(s), init="glorot", model_kw=kw, lr=lr,
                                  batch_size=s.batch, steps=s.steps, eval_every=s.eval_every,
                                  eval_samples=s.eval_samples, device=device)
                        for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        g = groups(results)
        quarter = max(1, s.steps // 4)
        lr0 = min(s.lrs)
        checks = []
        early = {}
        for lr in s.lrs:
            acc = {n: [0.1 if math.isnan(a) else a   # a diverged run trained no better than chance
                       for a in window_mean(g[f"{n} lr={lr:g}"], "batch-acc", "acc", 0, quarter)]
                   for n in ("bn", "none")}
            early[lr] = acc
            checks.append(greater(f"lr {lr:g}: BN's mean training accuracy over the first {quarter} steps is higher",
                                  "BN", acc["bn"], "no BN", acc["none"], fmt=".2f", scale=100, unit="%"))

        def instab(rs, key: str) -> list[float]:
            out = []
            for r in rs:
                late = r.run.config["extra"]["layers"][-1]
                vals = [relative_change(row, key) for row in r.diagnostics if row.get("layer") == late]
                m = time_mean([v for v in vals if v is not None])
                out.append(math.log2(m) if m > 0 else math.nan)
            return out

        stab = {n: {k: instab(g[f"{n} lr={lr0:g}"], k) for k in ("dmean", "dvar")} for n in ("bn", "none")}
        for k, what in (("dmean", "unit means"), ("dvar", "unit variances")):
            checks.append(similar(f"lr {lr0:g}, late layer: relative step-to-step change of {what} agrees within a "
                                  f"factor of 2 (log2 shown)", {"BN": stab["bn"][k], "no BN": stab["none"][k]}, 1.0))
        verdict = all_of(self.claim, checks)
        panels = []
        panels.append(panel("training accuracy (train mode, step's batch)", "training step", "training accuracy",
                            [band(k, *curve(v, "acc", "diagnostics", lambda row: row.get("hook") == "batch-acc"))
                             for k, v in g.items()]))
        panels.append(panel("test accuracy", "training step", "test accuracy",
                            [band(k, *curve(v, "test_acc")) for k, v in g.items()]))
        for n, lab in (("none", "no BN"), ("bn", "BN")):
            r = g[f"{n} lr={lr0:g}"][0]
            for which, name in ((0, "early"), (-1, "late")):
                layer = r.run.config["extra"]["layers"][which]
                rows = [row for row in r.diagnostics if row.get("layer") == layer and row.get("hist")]
                picks = sorted({0, len(rows) // 2, len(rows) - 1}) if rows else []
                ser = []
                for i in picks:
                    h = rows[i]["hist"]
                    e, c = h["edges"], h["counts"]
                    tot = max(1, sum(c))
                    ser.append(series(f"step {rows[i]['step']}", [(a + b) / 2 for a, b in zip(e, e[1:])],
                                      [v / tot for v in c], key=f"t{picks.index(i)}"))
                panels.append(panel(f"{lab}, {name} layer (lr {lr0:g}, seed {r.run.seed})", "activation",
                                    "fraction of values", ser))
        figs = [figure("fig1", "Santurkar Fig. 1 (ours): training and test accuracy (mean and [min, max] over "
                               "seeds), and histograms of the activations (after the ReLU) that an early and a late "
                               "layer pass on, at the start, middle and end of training, with and without BN.",
                       panels, ncols=3)]
        table = []
        for k, v in g.items():
            lr = float(k.split("=")[1])
            table.append({"run": k, "train acc, first 1/4 (%)": stat_text(early[lr][k.split(" ")[0]], ".2f", 100),
                          "final test acc": stat_text([at_step(r, "test_acc", s.steps) for r in v], ".2f", 100)})
        for n in ("bn", "none"):
            table.append({"run": f"{n} lr={lr0:g} (late layer)",
                          "log2 rel. dmean": stat_text(stab[n]["dmean"]), "log2 rel. dvar": stat_text(stab[n]["dvar"])})
        return Outcome(verdict, checks, figs, table)


EXPERIMENT = SanturkarVGG()
