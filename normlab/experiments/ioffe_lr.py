"""ioffe-lr — Ioffe & Szegedy (2015), Sec. 3.3 and 4.2.2: BN enables higher learning rates.

Setup (paper): Sec. 3.3 argues that BN makes training resilient to the parameter scale, so larger learning rates do
not blow up; Sec. 4.2.2 trains Inception with the initial learning rate x5 and x30 ("BN-x5", "BN-x30"), while the
plain network "stalls or diverges" at large rates. Here: the MLP of ioffe-mnist (sigmoid, N(0, 0.1^2) init, SGD,
batch 60) with and without BN, learning rate 0.1 (ioffe-mnist's) times 1, 3, 10, 30.
[open] the paper's sweep is on Inception/ImageNet; the MLP keeps the sigmoid saturation that large steps cause.
Quick: 3,000 steps per run (3 epochs).

Instruments: none; a run that diverges (loss non-finite or 1000x its start) stops and counts as chance accuracy:
divergence is the effect measured here, so no run is left out.
Decision rule (fixed before the data): core `x30` — at the largest multiplier (x30), BN's final test accuracy is
higher than the plain net's by at least 5 points (a net that "stalls or diverges" is far below one that trains; 5
points is well above the seed-to-seed spread of a trained MLP); side — the same at every other multiplier.
Seeds: 5 — a run costs well under a minute.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import final, stat_text, train_run
from .judge import Judge
from .variants import NormMult
from .verdict import Rule
from ..report import figure, panel, series

PAPER = Scale("paper", dataset="mnist", steps=50_000, batch=60, lr=0.1, mults=(1, 3, 10, 30), eval_samples=0,
              seeds=5)
QUICK = PAPER.reduce("quick", "a 2-core CPU: 3 epochs per run", steps=3000, eval_samples=5000)
SMOKE = QUICK.reduce("smoke", "tests only", steps=10, mults=(1, 30), eval_samples=100, seeds=2)


def rule(m: int, top: int) -> Rule:
    return Rule(f"x{m}", f"at lr x{m}, BN's final test accuracy is higher than the plain net's", "test accuracy (%)",
                "greater", 0.05, "5 points: a net that stalls or diverges is far below one that trains",
                core=(m == top), scale=100, unit=" pts", fmt=".2f")


class IoffeLR(Experiment):
    id = "ioffe-lr"
    title = "Learning-rate sweep with and without BN"
    source = "Ioffe & Szegedy 2015, Sec. 3.3, 4.2.2"
    claim = "BN trains at learning rates where the plain network diverges or stalls."
    paper_numbers = ("Inception on ImageNet: BN-x5 and BN-x30 (initial LR x5, x30) train, reaching 72.7%/74.8% "
                     "top-1 with fewer steps; the plain net at high LR is not reported as trainable.")
    setup_text = ("Inception (ImageNet) with initial learning rate x1, x5, x30, with BN; plain net trained at its "
                  "own best rate. normlab: the MNIST MLP of ioffe-mnist, lr 0.1 x 1, 3, 10, 30.")
    caveat = ("an MLP on MNIST instead of Inception on ImageNet; 3 epochs per run; a sigmoid MLP may tolerate large "
              "rates differently from a deep conv net.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        return [train_run(self.id, NormMult(norm, m), seed, model="mlp", norm=norm, dataset=self.dataset_of(s),
                          init="ioffe", lr=s.lr * m, batch_size=s.batch, steps=s.steps,
                          eval_every=max(1, s.steps // 10), eval_samples=s.eval_samples, device=device)
                for norm in ("none", "bn") for m in s.mults for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results, screen=False)
        g = j.all
        acc = {k: dict(zip([r.run.seed for r in v], final(v, "test_acc", default=0.1))) for k, v in g.items()}
        diverged = {k: sum(r.summary.get("diverged_at") is not None for r in v) for k, v in g.items()}
        top = max(s.mults)
        for m in sorted(s.mults, reverse=True):
            j.decide(rule(m, top), "BN", acc[NormMult("bn", m)], "no BN", acc[NormMult("none", m)])
        ser = []
        for norm, lab in (("none", "no BN"), ("bn", "BN")):
            ys = [[100 * v for v in acc[NormMult(norm, m)].values()] for m in s.mults]
            ser.append(series(lab, [s.lr * m for m in s.mults], [sum(y) / len(y) for y in ys], [min(y) for y in ys],
                              [max(y) for y in ys], marker="o"))
        figs = [figure("sweep", "Final test accuracy vs learning rate with and without BN (diverged runs count as "
                                "chance, 10%); mean and [min, max] over seeds.",
                       [panel("final test accuracy vs learning rate", "learning rate", "test accuracy (%)", ser,
                              xlog=True, xticks=[s.lr * m for m in s.mults])])]
        table = [{"run": k.name, "lr": f"{s.lr * k.mult:g}",
                  "final test acc (%)": stat_text(list(v.values()), ".2f", 100),
                  "diverged": f"{diverged[k]}/{len(v)}"} for k, v in acc.items()]
        notes = ["Diverged runs are counted at chance accuracy (10%)."] if any(diverged.values()) else []
        return j.outcome(self.claim, figs, table, notes)


EXPERIMENT = IoffeLR()
