"""santurkar-noisy — Santurkar et al. (2018), Sec. 2.1, Fig. 2: BN with injected distributional instability.

Setup (paper): the VGG of Fig. 1 on CIFAR-10 (SGD, batch 128, no augmentation, Glorot init), three networks:
standard (no BN), BN, and "noisy BN": after each BN layer, time-varying non-zero-mean, non-unit-variance noise
(SPEC §1.3: per step and unit mu ~ U(-0.5, 0.5), sigma ~ U(1, 1.25); per value m ~ U(mu +- 0.1), s ~ N(sigma, 0.1);
a -> s a + m). Plots: training accuracy vs steps; the activation distributions of a layer over time.
Quick: MNIST (CIFAR-10 cannot be had offline), VGG-11 layout at 1/8 width (8 conv layers kept), fewer steps.

Instruments: "probe" — every `dist_every` steps, the per-unit mean and variance, on one fixed probe batch, of the
activation an early and a late layer pass on (the ReLU output after norm and noise: the next layer's input) and of
their pre-normalization output (the conv); "batch-acc" — training accuracy as the loop logs it (train mode, the step's
batch, noise on). A fixed probe batch removes the sampling noise a fresh batch adds to every record.
Decision rules (fixed before the data; the window is the second half of training, after the initial plateau in which
the plain net's activations grow from near zero, which would otherwise dominate its movement):
  * core `acc`: noisy BN's training accuracy over the last 10% of steps is the same as BN's within 2 points;
  * core `late`, `early`: the layer input's step-to-step movement of unit means (|Δ mean| / layer std) is larger with
    noisy BN than in the standard net by at least a factor 1.25 (smaller changes are within what a 1/8-width net's
    run-to-run spread shows);
  * side: the same for unit variances, and for the pre-normalization (conv) outputs.
Seeds: 3 — a VGG run with its instruments costs over a minute on one core.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, n_weight_layers, quarter_layers, relus_after, stat_text, tail_mean, train_run, \
    weight_names
from .instruments import movement
from .judge import Judge
from .rows import BATCH_ACC, PROBE
from .variants import Norm
from .verdict import Rule
from ..report import figure, panel

NONE, BN, NOISY = Norm("none"), Norm("bn"), Norm("noisy-bn")
NETS = (NONE, BN, NOISY)
LABEL = {NONE: "standard", BN: "BN", NOISY: "noisy BN"}
SITES = (("late", -1), ("early", 0))

ACC = Rule("acc", "noisy BN trains about as well as BN (training accuracy over the last 10% of steps)",
           "training accuracy (%)", "similar", 0.02, "2 points: the paper's 'about as well'", scale=100, unit=" pts",
           fmt=".2f")


def _move_rule(site: str, what: str, core: bool, pre: bool = False) -> Rule:
    where = "pre-normalization output" if pre else "input"
    return Rule(f"{site}-{what}{'-pre' if pre else ''}", f"{site} layer {where}: unit {what}s move more per record "
                f"with noisy BN than in the standard net", f"step-to-step |Δ {what}| relative to the layer (second "
                f"half of training, probe batch)", "greater", 1.25,
                "a factor 1.25: smaller differences are within a 1/8-width net's seed-to-seed spread", core=core,
                log=True)


PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, eval_every=500, eval_samples=0, dist_every=100, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (the 8-conv VGG-11 layout kept), 800 steps", width=0.125,
                 steps=800, eval_every=100, eval_samples=2000, dist_every=20))
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
    caveat = ("MNIST instead of CIFAR-10 and 800 steps instead of 15k; a 1/8-width VGG; the noise parameters are the "
              "paper's, but their effect relative to the activations depends on the dataset and width.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}

    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        layers = quarter_layers(n_weight_layers("vgg", s.in_shape, 10, kw))
        out = []
        for net in NETS:
            post = relus_after("vgg", net.norm, s.in_shape, 10, kw, layers)
            pre = weight_names("vgg", net.norm, s.in_shape, 10, kw, layers)
            inst = [PROBE.spec(layers=post + pre, dataset=self.dataset_of(s), every=s.dist_every),
                    BATCH_ACC.spec(every=s.dist_every)]
            out += [train_run(self.id, net, seed, inst, extra={"layers": post, "pre": pre}, model="vgg",
                              norm=net.norm,
                              dataset=self.dataset_of(s), init="glorot", model_kw=kw, optimizer="sgd", lr=s.lr,
                              batch_size=s.batch, steps=s.steps, eval_every=s.eval_every,
                              eval_samples=s.eval_samples, device=device)
                    for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        acc = {k: j.per_seed(k, lambda r: tail_mean([r], BATCH_ACC.hook, "acc")[0]) for k in NETS}
        j.similar(ACC, {"noisy BN": acc[NOISY], "BN": acc[BN]}, "BN")

        def move(net: Norm, which: int, pre: bool, k: int) -> dict[int, float]:
            def one(r) -> float:
                name = r.run.config["extra"]["pre" if pre else "layers"][which]
                return movement(PROBE.of(r, name), s.steps // 2, s.steps + 1)[k]
            return j.per_seed(net, one)

        table_moves = {}
        for site, which in SITES:
            for k, what in enumerate(("mean", "variance")):
                for pre in (False, True):
                    a, b = move(NOISY, which, pre, k), move(NONE, which, pre, k)
                    table_moves[(site, what, pre)] = {"noisy BN": a, "standard": b, "BN": move(BN, which, pre, k)}
                    j.decide(_move_rule(site, what, core=(k == 0 and not pre), pre=pre), "noisy BN", a,
                             "standard", b)
        panels = [panel("training accuracy (train mode, step's batch)", "training step", "training accuracy",
                        [band(LABEL[k], *curve(j.runs(k), "acc", "diagnostics", BATCH_ACC.where())) for k in NETS])]
        figs = [figure("fig2", "Santurkar Fig. 2 (ours): training accuracy (mean and [min, max] over seeds); the "
                               "movement of the layer inputs is in the table (probe batch, second half of training).",
                       panels)]
        table = [{"net": LABEL[k], "train acc, last 10% (%)": stat_text(list(acc[k].values()), ".2f", 100),
                  **{f"{site} {what}{' (pre-norm)' if pre else ''}": stat_text(list(v[LABEL[k]].values()))
                     for (site, what, pre), v in table_moves.items() if what == "mean"}}
                 for k in NETS]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = SanturkarNoisy()
