"""santurkar-ics — Santurkar et al. (2018), Sec. 2.2, Definition 2.1, Fig. 3: does BN reduce internal covariate shift?

Setup (paper): (a) the VGG of Fig. 1 on CIFAR-10 at lr 0.1 and 0.01; (b) a deep linear net: 25 layers of 10x10, no
bias, target y = A x with A a 10x10 Gaussian, 1000 Gaussian samples, full batch, lr 1e-6 and 1e-7, 10k steps.
Each with and without BN. ICS of layer i at step t (Def. 2.1): G = grad of the loss w.r.t. W_i, G' = the same
after every earlier layer took this step's update; plotted ||G - G'||_2 and cos(G, G') for two layers vs steps.
Loss of the linear net (SPEC §2 notes): the paper's rates 1e-6 and 1e-7 fit a loss summed over the 1000 x 10
entries; normlab's "mse" is their mean, so the same steps take rates 10^4 times larger: lr 1e-2 and 1e-3 here.
Quick: MNIST, VGG-11 layout at 1/8 width, lr 0.1 and 0.01, 600 steps; the linear net as the paper but 3,000 steps (10k in the paper; a 2-core CPU).

Instruments: ICSHook on the weight layers at 1/4 and 3/4 of the depth, every `ics_every` steps.
Decision rules (fixed before the data; per seed, each quantity is a time-average over the records and both layers;
scale-free measures so that nets with different gradient scales compare fairly):
  * core `vgg-<lr>`: BN does not reduce ICS — cos(G, G') with BN is not higher than without by 0.05 or more (a
    smaller gain in alignment would not be a reduction of ICS anyone could use);
  * core `linear-<lr>`: in the deep linear net BN's ICS is much higher — cos(G, G') with BN is lower by at least
    0.3 (the paper: near 1 without BN, near 0 with it); precondition: the plain net's cos is >= 0.9 (the paper's
    baseline; without it the comparison is not the paper's);
  * side `*-rel`: ||G - G'|| / ||G|| is at least 1.25x higher with BN.
Seeds: 3 — a VGG run with the ICS instrument costs over a minute (the linear runs cost seconds; they share the seeds).
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, n_weight_layers, offline, quarter_layers, stat_text, time_mean, train_run
from .judge import Judge
from .rows import ICS
from .variants import Net
from .verdict import Rule
from ..report import figure, panel

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lrs=(0.1, 0.01), ics_every=100, eval_samples=0, lin_steps=10_000, lin_lrs=(1e-2, 1e-3), lin_every=100,
              seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (8-conv layout kept), 600 steps", width=0.125,
                 steps=600, ics_every=30, eval_samples=2000)
         .reduce("quick", "a 2-core CPU: the deep linear net 3,000 steps instead of 10,000, ICS every 30 "
                 "steps (the ~100 records per run of the paper's cadence)", lin_steps=3_000, lin_every=30))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, ics_every=2, eval_samples=64, lin_steps=4,
                     lin_every=2,
                     seeds=2)


class SanturkarICS(Experiment):
    id = "santurkar-ics"
    title = "Internal covariate shift (Definition 2.1) with and without BN"
    source = "Santurkar et al. 2018, Sec. 2.2, Fig. 3"
    claim = ("BN does not reduce internal covariate shift: with BN, the gradient of a layer changes as much or more "
             "when the earlier layers update; in the deep linear net BN's ICS is much higher (cosine near 0).")
    paper_numbers = ("Fig. 3 (plots): VGG — similar or larger ||G - G'|| and similar or lower cos(G, G') with BN; "
                     "linear net — cos(G, G') near 1 without BN, near 0 with BN.")
    setup_text = ("VGG on CIFAR-10 (lr 0.1, 0.01); deep linear net 25 x (10x10), 1000 Gaussian samples, full batch, "
                  "lr 1e-6, 1e-7 (summed squared error; 1e-2, 1e-3 on normlab's mean loss), 10k steps; ICS of two "
                  "layers vs steps, with and without BN.")
    caveat = ("MNIST and 600 steps instead of CIFAR-10 and 15k steps for the VGG; the linear net's init is not "
              "stated by the paper (normlab: Glorot).")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}

    def dataset_of(self, s: Scale) -> str:
        return f"{offline(s.dataset)} (VGG); synthetic-linear (linear net)"

    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        vgg_layers = quarter_layers(n_weight_layers("vgg", s.in_shape, 10, kw))
        lin_layers = quarter_layers(25)
        ds = offline(s.dataset)
        out = []
        for lr in s.lrs:
            for norm in ("none", "bn"):
                inst = [ICS.spec(layers=vgg_layers, every=s.ics_every)]
                out += [train_run(self.id, Net("vgg", norm, lr), seed, inst, model="vgg", norm=norm, dataset=ds,
                                  init="glorot", model_kw=kw, lr=lr, batch_size=s.batch,
                                  steps=s.steps, eval_every=max(1, s.steps // 10), eval_samples=s.eval_samples,
                                  device=device)
                        for seed in seeds]
        for lr in s.lin_lrs:
            for norm in ("none", "bn"):
                inst = [ICS.spec(layers=lin_layers, every=s.lin_every)]
                out += [train_run(self.id, Net("linear", norm, lr), seed, inst, model="linear", norm=norm,
                                  dataset="synthetic-linear", init="glorot", loss="mse", lr=lr, batch_size=1000,
                                  steps=s.lin_steps, eval_every=max(1, s.lin_steps // 10), eval_samples=0,
                                  device=device)
                        for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)

        def avg(group: Net, key: str) -> dict[int, float]:
            return j.per_seed(group, lambda r: time_mean([row[key] for row in ICS.of(r, finite=True)]))

        table, panels = [], []
        for net, lrs in (("vgg", s.lrs), ("linear", s.lin_lrs)):
            for lr in lrs:
                bn, none = Net(net, "bn", lr), Net(net, "none", lr)
                cos = {"BN": avg(bn, "cos"), "no BN": avg(none, "cos")}
                rel = {"BN": avg(bn, "rel_l2"), "no BN": avg(none, "rel_l2")}
                key = f"{net}-{lr:g}"
                if net == "vgg":
                    rule = Rule(key, f"VGG (lr {lr:g}): BN does not reduce ICS (cos(G, G') not higher with BN)",
                                "cos(G, G')", "at_most", 0.05, "a smaller gain in gradient alignment is no reduction "
                                "of ICS", fmt=".3f")
                else:
                    rule = Rule(key, f"linear net (lr {lr:g}): BN's ICS is much higher (cos(G, G') lower with BN)",
                                "cos(G, G')", "less", 0.3, "the paper: near 1 without BN, near 0 with it", fmt=".3f",
                                paper="about −1 (near 0 vs near 1, Fig. 3 plot)")
                    base = list(cos["no BN"].values())
                    ok = bool(base) and sum(base) / len(base) >= 0.9
                    j.require(f"{key}: the plain net's baseline", ok, f"mean cos(G, G') without BN "
                              f"{sum(base) / max(1, len(base)):.3f} (needs >= 0.9, the paper's 'near 1')",
                              "the paper's learning rate for this loss", parts=(key,))
                j.decide(rule, "BN", cos["BN"], "no BN", cos["no BN"])
                j.decide(Rule(f"{key}-rel", f"{net} (lr {lr:g}): ||G - G'|| / ||G|| is higher with BN",
                              "||G - G'|| / ||G||", "greater", 1.25, "a factor 1.25", core=False, log=True),
                         "BN", rel["BN"], "no BN", rel["no BN"])
                for name, g in (("BN", bn), ("no BN", none)):
                    table.append({"net": f"{net} lr {lr:g}", "norm": name,
                                  "cos(G,G')": stat_text(list(cos[name].values())),
                                  "||G-G'||": stat_text(list(avg(g, "l2").values())),
                                  "||G-G'||/||G||": stat_text(list(rel[name].values()))})
                layers = sorted({row["layer"] for row in ICS.of(j.all[bn][0], finite=True)})
                for layer in layers:
                    for k, ylabel, ylog in (("l2", "||G - G'||", True), ("cos", "cos(G, G')", False)):
                        ser = [band(name, *curve(j.runs(g), k, "diagnostics", ICS.where(layer, finite=True)))
                               for name, g in (("no BN", none), ("BN", bn))]
                        panels.append(panel(f"{net} lr {lr:g}, layer {layer}: {ylabel}", "training step", ylabel,
                                            ser, ylog=ylog))
        figs = [figure("fig3", "Santurkar Fig. 3 (ours): ICS (Definition 2.1) of an early and a late layer, "
                               "||G - G'|| and cos(G, G'), with and without BN; mean and [min, max] over seeds.",
                       panels, ncols=4)]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = SanturkarICS()
