"""precise-bn — normlab's own, after Wu & Johnson (2021), Sec. 3: PreciseBN vs EMA running statistics.

Question (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3): the EMA of batch statistics lags behind
the weights and mixes statistics from several recent models; recomputing the population statistics with the weights
frozen (PreciseBN, normlab.tools.precise_bn) gives a model that is evaluated more accurately, the more so the
noisier or staler the EMA is.
Runs: the BN runs of wuhe-batch (smallbatch.py) at every batch size; the "eval-modes" instrument evaluates a copy
of the model at the last step with (a) its EMA running statistics and (b) PreciseBN statistics recomputed from a
fixed set of training images at the run's batch size, on the same test images.
Decision rules (fixed before the data; paired by seed): core `small` — PreciseBN's test accuracy is higher than EMA's
at the smallest batch (where the EMA averages the fewest values) by at least 0.2 points; side — the same at every
other batch size. Precondition: converged runs. Seeds: 3 — a batch-2 run costs over a minute.
"""
from __future__ import annotations

from . import smallbatch
from .base import Experiment, Outcome, Scale
from .common import stat_text
from .judge import Judge
from .variants import NormBatch
from .verdict import Rule
from ..report import figure, panel, series


class PreciseBN(Experiment):
    id = "precise-bn"
    title = "PreciseBN vs EMA running statistics"
    source = "normlab's own (Wu & Johnson 2021, Sec. 3)"
    claim = "Population statistics recomputed with frozen weights (PreciseBN) evaluate better than the EMA statistics."
    paper_numbers = ("Wu & Johnson 2021 Fig. 3/Table 1: PreciseBN's validation accuracy is higher and more stable "
                     "than EMA's during training with large learning rates; the gap closes at convergence.")
    setup_text = ("ResNet-50 on ImageNet; EMA (momentum 0.9 in their convention) vs PreciseBN over 10^3-10^4 samples.")
    caveat = ("short runs at a constant LR on MNIST: the EMA lag Wu & Johnson describe depends on how fast the "
              "weights move; on an easy dataset both estimates may give the same accuracy.")
    scales = smallbatch.SCALES
    unfit_fallbacks = smallbatch.UNFIT


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        return [smallbatch.run(self.id, s, NormBatch("bn", b), seed, device) for b in s.batches for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        smallbatch.require_converged(j, list(j.all))
        per = {b: {k: j.per_seed(NormBatch("bn", b), lambda r, k=k: smallbatch.eval_modes(r).get(f"{k}_acc", float("nan")))
                   for k in ("ema", "precise")} for b in s.batches}
        small = min(s.batches)
        for b in sorted(s.batches):
            j.decide(Rule(f"b{b}", f"PreciseBN's test accuracy is higher than EMA's at batch {b}", "test accuracy (%)",
                          "greater", 0.002, "0.2 points", core=(b == small), scale=100, unit=" pts", fmt=".2f"),
                     "PreciseBN", per[b]["precise"], "EMA", per[b]["ema"])
        acc = {b: {k: list(v.values()) or [float("nan")] for k, v in d.items()} for b, d in per.items()}
        bs = sorted(s.batches)
        ser = []
        for k, lab in (("ema", "EMA statistics"), ("precise", "PreciseBN statistics")):
            ys = [[100 * v for v in acc[b][k]] for b in bs]
            ser.append(series(lab, bs, [sum(y) / len(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys],
                              marker="o"))
        figs = [figure("accuracy", "Test accuracy of the final model with EMA vs PreciseBN statistics per training "
                                   "batch size; mean and [min, max] over seeds.",
                       [panel("EMA vs PreciseBN", "training batch size", "test accuracy (%)", ser, xlog=True,
                              xticks=bs)])]
        table = [{"batch": b, "EMA acc (%)": stat_text(acc[b]["ema"], ".2f", 100),
                  "PreciseBN acc (%)": stat_text(acc[b]["precise"], ".2f", 100)} for b in bs]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = PreciseBN()
