"""wuhe-batch — Wu & He (2018), Sec. 4.1, Table 1 and 2 (Fig. 1, 5): error vs batch size per normalization.

Setup (paper): ResNet-50 on ImageNet, 8 GPUs; BN, LN, IN, GN (G = 32) at 32 images per GPU; BN and GN at 32, 16, 8, 4,
2 images per GPU (BN statistics per GPU); SGD momentum 0.9, weight decay 1e-4, lr 0.1 * N / 32 (linear scaling),
the same number of epochs at every batch size; top-1 validation error of the model in eval mode.
Paper scale here: CIFAR-10, ResNet-20 at 4x width, 30 epochs (normlab has no ImageNet reader).
Quick: MNIST (no CIFAR-10 offline) with a small conv net conv16-pool-conv32-pool-conv64-pool-fc whose last norm sees
7x7 positions (the feature small-batch BN suffers from: few values per channel at batch 2); GN with G = 8 (the net
has 16-64 channels; 2-8 channels per group); batch sizes 32, 8, 2 at an equal number of training samples (equal
epochs). The runs are built in smallbatch.py and shared with renorm-ghost, precise-bn and train-eval-gap.

Instruments: none (final test error in eval mode, running statistics from the EMA).
Decision rules (fixed before the data; paired by seed; errors in points):
  * core `gn-flat`: GN's error at each smaller batch is the same as at 32 within 0.5 points (Wu & He: GN varies by
    < 0.3 points across 32..2);
  * core `bn-degrades`: BN's error at the smallest batch is higher than at 32 by at least 0.5 points;
  * core `bn-vs-gn`: BN's increase from 32 to the smallest batch exceeds GN's by at least 0.5 points — needs BN's
    small-batch penalty (precondition: `bn-degrades` supported), else undecidable;
  * side `ln`, `in`: LN and IN have higher error than GN at batch 32, by at least 0.2 points.
Every part needs converged runs (smallbatch.require_converged). Seeds: 5 at the quick scale although a batch-2
run costs over a minute (the suite's rule would allow 3): at 3 seeds two parts flipped between the fast path and
NORMLAB_FAST=0 (float rounding grows over 30,000 batch-2 steps into different trajectories, and a 3-seed
t-interval is 4.3 standard errors wide), so their tests lacked the power the rule asks for. The shared BN runs of
renorm-ghost, precise-bn and train-eval-gap are seeds 0-2 of these.
"""
from __future__ import annotations

import math

from .base import Experiment, Outcome, Scale
from . import smallbatch
from .common import band, final, stat_text
from .judge import Judge
from .variants import NormBatch
from .verdict import Rule
from ..report import figure, panel, series

PAPER, SMOKE = smallbatch.PAPER, smallbatch.SMOKE
QUICK = smallbatch.QUICK.reduce("quick", "5 seeds: at 3, two parts flipped between the fast path and "
                                "NORMLAB_FAST=0, float rounding over 30,000 batch-2 steps", seeds=5)
PTS = dict(scale=100, unit=" pts", fmt=".2f")
GN_FLAT = Rule("gn-flat", "GN's error is flat across batch sizes", "test error (%)", "similar", 0.005,
               "0.5 points (Wu & He: GN within 0.3 points from 32 to 2)", paper="24.1 → 24.1% (32 → 2): 0.0 pts",
               **PTS)
BN_DEGRADES = Rule("bn-degrades", "BN's error is higher at the smallest batch than at 32", "test error (%)",
                   "greater", 0.005, "0.5 points: Wu & He's BN loses 11 points at batch 2",
                   paper="23.6 → 34.7% (32 → 2): +11.1 pts", **PTS)
BN_VS_GN = Rule("bn-vs-gn", "BN degrades more than GN from 32 to the smallest batch", "error increase (points)",
                "greater", 0.005, "0.5 points", paper="+11.1 vs +0.0 pts: +11.1 pts", **PTS)


def worse_than_gn(n: str) -> Rule:
    return Rule(n, f"{n.upper()} is worse than GN at batch 32", "test error (%)", "greater", 0.002,
                "0.2 points (Wu & He: LN +1.2, IN +4.3 at ImageNet's scale)", core=False,
                paper={"ln": "25.3 vs 24.1%: +1.2 pts", "in": "28.4 vs 24.1%: +4.3 pts"}[n], **PTS)


class WuHeBatch(Experiment):
    id = "wuhe-batch"
    title = "Error vs batch size: BN, GN, LN, IN"
    source = "Wu & He 2018, Table 1, 2"
    claim = ("GN's error is flat across batch sizes while BN's degrades sharply at 2-4 images per batch; LN and IN "
             "are worse than GN at large batch.")
    paper_numbers = ("ResNet-50 ImageNet top-1 error at 32 img/GPU: BN 23.6, LN 25.3, IN 28.4, GN 24.1 %; batch "
                     "32/16/8/4/2: BN 23.6/23.7/24.8/27.3/34.7, GN 24.1/24.2/24.0/24.2/24.1 %.")
    setup_text = ("ResNet-50 on ImageNet, SGD momentum 0.9, wd 1e-4, lr 0.1·N/32, equal epochs at every batch size; "
                  "BN/LN/IN/GN (G=32) at 32 img/GPU, BN and GN at 32, 16, 8, 4, 2.")
    caveat = ("Fashion-MNIST is far easier than ImageNet; a 3-conv net instead of ResNet-50; 1 epoch instead of 100; "
              "BN's small-batch penalty depends on how few values its statistics see, which differs here.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}
    unfit_fallbacks = smallbatch.UNFIT


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        plan = [NormBatch(n, b) for n in ("bn", s.gn) for b in s.batches]
        plan += [NormBatch(n, max(s.batches)) for n in ("ln", "in")]
        return [smallbatch.run(self.id, s, v, seed, device) for v in plan for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        # keyed by (norm, batch) with the GN spec ("gn:8") read as "gn"
        err = {("gn" if k.norm == s.gn else k.norm, k.batch): j.per_seed(k, lambda r: 1 - final([r], "test_acc")[0])
               for k in j.all}
        big, small = max(s.batches), min(s.batches)
        smallbatch.require_converged(j, list(j.all))
        j.similar(GN_FLAT, {f"GN b={b}": err["gn", b] for b in s.batches}, f"GN b={big}")
        penalty = j.decide(BN_DEGRADES, f"BN b={small}", err["bn", small], f"BN b={big}", err["bn", big])
        delta = {n: {sd: err[n, small][sd] - err[n, big][sd]
                     for sd in set(err[n, small]) & set(err[n, big])} for n in ("bn", "gn")}
        j.require("BN's small-batch penalty present", penalty.outcome == "supported",
                  f"BN at batch {small} vs {big}: {penalty.shown} ({penalty.outcome})",
                  "harder data or a deeper net, where BN's statistics at small batch hurt (medium or paper scale)",
                  parts=("bn-vs-gn",))
        j.decide(BN_VS_GN, "BN increase", delta["bn"], "GN increase", delta["gn"])
        for n in ("ln", "in"):
            j.decide(worse_than_gn(n), n.upper(), err[n, big], "GN", err["gn", big])
        by_seed = err
        err = {k: list(v.values()) for k, v in err.items()}
        bs = sorted(s.batches)
        ser = []
        for n in ("bn", "gn"):
            seeds = sorted(set.intersection(*(set(by_seed[n, b]) for b in bs)))
            if seeds:
                ser.append(band(n.upper(), bs, [[by_seed[n, b][sd] * 100 for b in bs] for sd in seeds],
                                marker="o"))
        for n in ("ln", "in"):
            e = [x * 100 for x in err[n, big]] or [math.nan]
            ser.append(series(f"{n.upper()} (b={big} only)", [big], [sum(e) / len(e)], [min(e)], [max(e)],
                              marker="s", ls="none"))
        figs = [figure("error-vs-batch", "Wu & He Fig. 1 / Table 2 (ours): test error vs batch size per norm, "
                                         "equal training samples at every batch size; mean and [min, max] over "
                                         "seeds.",
                       [panel("test error vs batch size", "images per batch", "test error (%)", ser, xlog=True,
                              xticks=bs)])]
        table = [{"norm": n.upper(), "batch": str(b), "test error (%)": stat_text(v, ".2f", 100)}
                 for (n, b), v in err.items()]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = WuHeBatch()
