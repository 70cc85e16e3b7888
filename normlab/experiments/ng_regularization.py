"""ng-regularization — Ioffe & Szegedy (2015), Sec. 3.4, and seed 003 (Ng): BN's mini-batch noise regularizes.

Setup: Ioffe Sec. 3.4: "a training example is seen in conjunction with other examples in the mini-batch, and the
training network no longer produces deterministic values for a given example" — a regularizing effect that lets
them drop Dropout; Ng's lecture adds that the noise, and so the effect, shrinks as the batch grows. No paper gives a
protocol, so normlab chooses one: the Ioffe MLP (784-100-100-100-10, sigmoid) with BN, no dropout, trained to a
small training set at batch sizes 16, 64, 256 for the same number of epochs (lr 0.1 * b / 32, so every batch size
makes comparable progress per epoch); Ghost BN with 16-sample virtual batches at batch 256 (the normalization noise of
batch 16 with the gradient of batch 256); the plain MLP at 16 and 256 as a control for the gradient noise alone.
Quick: a fixed 4,000-image subset of MNIST's training split (so that the nets fit it and a gap exists), evaluated on
the whole 10,000-image test split, 40 epochs.

Gap = final training accuracy - test accuracy, both in eval mode on the whole splits.
Decision rules (fixed before the data; paired by seed): core `batch` — the BN net's gap is larger at batch 256 than at
16 by at least 0.5 points; core `ghost` — at batch 256, Ghost BN (V = 16) has a smaller gap than BN by at least 0.5
points. Precondition: converged runs (training loss fell by at most 10% over the last tenth of training).
Seeds: 5 — a run costs under a minute.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, final, stat_text, train_run
from .judge import Judge, converged
from .variants import NormBatch
from .verdict import Rule
from ..report import figure, panel, series

PAPER = Scale("paper", dataset="mnist", epochs=50, train_size=60_000, batches=(16, 64, 256), ghost=16, lr32=0.1,
              eval_samples=0, seeds=5)
QUICK = PAPER.reduce("quick", "a training set small enough to be fit within CPU time, so that there is a "
                     "generalization gap to compare: 4,000 MNIST training images, 40 epochs", epochs=40,
                     train_size=4000)
SMOKE = QUICK.reduce("smoke", "tests only", epochs=1, batches=(64, 256), eval_samples=100, seeds=2)


class NgRegularization(Experiment):
    id = "ng-regularization"
    title = "BN's mini-batch noise as a regularizer"
    source = "Ioffe & Szegedy 2015, Sec. 3.4; seed 003 (Ng)"
    claim = ("Mini-batch statistics add noise that regularizes: the generalization gap of a BN net grows with the "
             "batch size, and normalizing over smaller (ghost) batches shrinks it.")
    paper_numbers = ("No numbers: Ioffe Sec. 3.4 reports that Dropout can be removed from BN-Inception; Ng: the "
                     "regularization is slight and decreases with the batch size.")
    setup_text = "Not specified by the sources; normlab's protocol is stated in the module docstring and below."
    caveat = ("a small MLP on 4,000 MNIST images; the gap also depends on how far each batch size has fit the "
              "training set after 40 epochs, and on the LR scaling rule chosen here.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        big, small = max(s.batches), min(s.batches)
        plan = [NormBatch("bn", b) for b in s.batches]
        plan += [NormBatch(f"ghost-bn:{s.ghost}", big), NormBatch("none", small), NormBatch("none", big)]
        out = []
        for v in plan:
            norm, b = v
            steps = max(1, s.epochs * s.train_size // b)
            out += [train_run(self.id, v, seed, model="mlp", norm=norm, dataset=self.dataset_of(s),
                              train_samples=s.train_size, init="ioffe", lr=s.lr32 * b / 32, batch_size=b, steps=steps,
                              eval_every=max(1, steps // 10), eval_samples=s.eval_samples, device=device)
                    for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        falls = [converged(r) for g in j.all for r in j.runs(g)]
        j.require("runs converged", all(f <= 0.10 for f in falls), f"worst fall of the training loss over the last "
                  f"tenth of training: {100 * max((f for f in falls if f == f), default=float('nan')):.0f}% "
                  f"(needs <= 10%)", "more epochs")
        gap = {k: j.per_seed(k, lambda r: final([r], "train_acc")[0] - final([r], "test_acc")[0]) for k in j.all}
        big, small = max(s.batches), min(s.batches)
        ghost, bn_big, bn_small = NormBatch(f"ghost-bn:{s.ghost}", big), NormBatch("bn", big), NormBatch("bn", small)
        pts = dict(scale=100, unit=" pts", fmt=".2f")
        j.decide(Rule("batch", f"BN's generalization gap is larger at batch {big} than at {small}",
                      "train - test accuracy (points)", "greater", 0.005, "0.5 points", **pts),
                 f"b={big}", gap[bn_big], f"b={small}", gap[bn_small])
        j.decide(Rule("ghost", f"at batch {big}, Ghost BN (V={s.ghost}) has a smaller gap than BN",
                      "train - test accuracy (points)", "less", 0.005, "0.5 points", **pts),
                 "Ghost BN", gap[ghost], "BN", gap[bn_big])
        g = {k: j.runs(k) for k in j.all}
        gap = {k: list(v.values()) or [float("nan")] for k, v in gap.items()}
        bs = sorted(s.batches)
        ys = [[100 * v for v in gap[NormBatch("bn", b)]] for b in bs]
        ser = [series("BN", bs, [sum(y) / len(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys],
                      marker="o")]
        for k, lab in ((ghost, f"Ghost BN V={s.ghost}"), (NormBatch("none", small), "no BN"),
                       (NormBatch("none", big), "no BN")):
            v = [100 * x for x in gap[k]]
            ser.append(series(lab, [k.batch], [sum(v) / len(v)], [min(v)], [max(v)], marker="s", ls="none"))
        figs = [figure("gap", "Generalization gap (train - test accuracy, eval mode) vs batch size at equal "
                              "epochs; mean and [min, max] over seeds.",
                       [panel("generalization gap vs batch size", "batch size", "train - test accuracy (points)",
                              ser, xlog=True, xticks=bs),
                        panel("test accuracy", "training step", "test accuracy",
                              [band(k.name, *curve(v, "test_acc")) for k, v in g.items() if k.norm == "bn"])])]
        table = [{"run": k.name, "gap (pts)": stat_text(v, ".2f", 100),
                  "train acc (%)": stat_text(final(g[k], "train_acc"), ".2f", 100),
                  "test acc (%)": stat_text(final(g[k], "test_acc"), ".2f", 100)} for k, v in gap.items()]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = NgRegularization()
