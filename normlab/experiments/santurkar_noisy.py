"""santurkar-noisy — Santurkar et al. (2018), Sec. 2.1, Fig. 2: BN with injected distributional instability.

Setup (paper): the VGG of Fig. 1 on CIFAR-10 (SGD, batch 128, no augmentation, Glorot init), three networks:
standard (no BN), BN, and "noisy BN": after each BN layer, time-varying non-zero-mean, non-unit-variance noise
(SPEC §1.3: per step and unit mu ~ U(-0.5, 0.5), sigma ~ U(1, 1.25); per value m ~ U(mu +- 0.1), s ~ N(sigma, 0.1);
a -> s a + m). Plots: training accuracy vs steps; the activation distributions of a layer over time.
Quick: MNIST (CIFAR-10 cannot be had offline), VGG-11 layout at 1/8 width (8 conv layers kept), fewer steps.

Instruments: DistributionsHook on the output of the ReLU after an early and a late weight layer (the activation the
next layer receives, noise included), every `dist_every` steps; dmean/dvar = mean over units of the change of each
unit's mean/variance between consecutive records (Santurkar Fig. 2 right), divided by the layer's std/variance so
that nets whose activations differ in scale compare fairly (the raw numbers are in the table too).
Training accuracy: the "batch-acc" instrument, i.e. what a training loop logs (train mode, the step's own batch, the
noise on), averaged over the last 10% of training; eval-mode accuracy would judge noisy BN without its noise.
Verdict: (1) noisy BN's final training accuracy is within `tol` (2 points, fixed in advance) of BN's; (2) the
late layer's distributions move more from record to record in the noisy-BN net than in the standard net (dmean and
dvar, averaged over records).
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import (band, curve, groups, n_weight_layers, quarter_layers, relative_change,
                     relus_after, stat_text, tail_mean, time_mean, train_run)
from .instruments import spec
from .verdict import all_of, greater, similar
from ..report import figure, panel

NETS = ("none", "bn", "noisy-bn")
LABEL = {"none": "standard", "bn": "BN", "noisy-bn": "noisy BN"}

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, eval_every=500, eval_samples=0, dist_every=100, tol=0.02, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (the 8-conv VGG-11 layout kept), ~1 epoch", width=0.125,
                 steps=500, eval_every=50, eval_samples=2000, dist_every=10))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=6, eval_every=3, eval_samples=64,
                     dist_every=2, seeds=2)


class SanturkarNoisy(Experiment):
    id = "santurkar-noisy"
    title = "Noisy BN: unstable distributions, yet BN-like training"
    source = "Santurkar et al. 2018, Sec. 2.1, Fig. 2"
    claim = ("A network with noisy BN (random time-varying shifts and scales injected after every BN layer) trains "
             "about as well as one with BN, although its layer-input distributions are less stable than those of "
             "the standard network.")
    paper_numbers = "Fig. 2: training accuracy of BN and noisy BN close together, above the standard net (plot only)."
    setup_text = ("VGG on CIFAR-10, SGD, batch 128, no augmentation, Glorot init, lr 0.1; standard vs BN vs noisy "
                  "BN (noise after each BN layer, SPEC §1.3).")
    caveat = ("MNIST instead of CIFAR-10 and ~1 epoch instead of 15k steps; a 1/8-width VGG; the noise parameters "
              "are the paper's, but their effect relative to the activations depends on the dataset and width.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        layers = quarter_layers(n_weight_layers("vgg", s.in_shape, 10, kw))
        out = []
        for net in NETS:
            relus = relus_after("vgg", net, s.in_shape, 10, kw, layers)
            inst = [spec("distributions", layers=relus, site="output", bins=20, units=[0], every=s.dist_every),
                    spec("batch-acc", every=s.dist_every)]
            out += [train_run(self.id, net, seed, inst, extra={"layers": relus}, model="vgg", norm=net,
                              dataset=self.dataset_of(s), init="glorot", model_kw=kw, optimizer="sgd", lr=s.lr,
                              batch_size=s.batch, steps=s.steps, eval_every=s.eval_every,
                              eval_samples=s.eval_samples, device=device)
                    for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        g = groups(results)
        # training accuracy as the training loop sees it (train mode, the step's batch, noise on), last 10% of steps
        acc = {k: tail_mean(v, "batch-acc", "acc") for k, v in g.items()}

        def instability(rs, key: str, which: int, rel: bool = True) -> list[float]:
            out = []
            for r in rs:
                layer = r.run.config["extra"]["layers"][which]
                vals = [relative_change(row, key) if rel else row.get(key) for row in r.diagnostics
                        if row.get("layer") == layer]
                out.append(time_mean([v for v in vals if v is not None]))
            return out

        late = {k: {key: instability(v, key, -1) for key in ("dmean", "dvar")} for k, v in g.items()}
        raw = {k: {key: instability(v, key, -1, rel=False) for key in ("dmean", "dvar")} for k, v in g.items()}
        checks = [
            similar(f"noisy BN's final training accuracy is within {s.tol * 100:g} points of BN's",
                    {"BN": acc["bn"], "noisy BN": acc["noisy-bn"]}, s.tol, fmt=".2f", scale=100, unit="%"),
            greater("late layer: unit means move more per record with noisy BN than in the standard net "
                    "(dmean / layer std)", "noisy BN", late["noisy-bn"]["dmean"], "standard", late["none"]["dmean"]),
            greater("late layer: unit variances move more per record with noisy BN than in the standard net "
                    "(dvar / layer variance)", "noisy BN", late["noisy-bn"]["dvar"], "standard",
                    late["none"]["dvar"]),
        ]
        verdict = all_of(self.claim, checks)
        panels = [panel("training accuracy (train mode, step's batch)", "training step", "training accuracy",
                        [band(LABEL[k], *curve(v, "acc", "diagnostics", lambda row: row.get("hook") == "batch-acc"))
                         for k, v in g.items()])]
        for which, name in ((0, "early"), (-1, "late")):
            for key, what in (("dmean", "|Δ mean| / std"), ("dvar", "|Δ variance| / variance")):
                ser = []
                for k, v in g.items():
                    layer = v[0].run.config["extra"]["layers"][which]
                    sel = lambda row, layer=layer: row.get("layer") == layer  # noqa: E731
                    ser.append(band(LABEL[k], *curve(v, lambda row, key=key: relative_change(row, key),
                                                     "diagnostics", sel)))
                panels.append(panel(f"{name} layer: step-to-step {what}", "training step", f"mean over units, "
                                    f"relative to the layer", ser, ylog=True))
        figs = [figure("fig2", "Santurkar Fig. 2 (ours): training accuracy, and how much each layer-input "
                               "distribution moves between records (mean over units of the change of a unit's mean "
                               "and variance), for an early and a late layer; mean and [min, max] over seeds.",
                       panels, ncols=3)]
        table = [{"net": LABEL[k], "train acc, last 10% (%)": stat_text(acc[k], ".2f", 100),
                  "late dmean / std": stat_text(late[k]["dmean"]), "late dvar / var": stat_text(late[k]["dvar"]),
                  "late dmean (raw)": stat_text(raw[k]["dmean"]), "late dvar (raw)": stat_text(raw[k]["dvar"])}
                 for k in g]
        return Outcome(verdict, checks, figs, table)


EXPERIMENT = SanturkarNoisy()
