"""wuhe-batch — Wu & He (2018), Sec. 4.1, Table 1 and 2 (Fig. 1, 5): error vs batch size per normalization.

Setup (paper): ResNet-50 on ImageNet, 8 GPUs; BN, LN, IN, GN (G = 32) at 32 images per GPU; BN and GN at 32, 16, 8, 4,
2 images per GPU (BN statistics per GPU); SGD momentum 0.9, weight decay 1e-4, lr 0.1 * N / 32 (linear scaling),
the same number of epochs at every batch size; top-1 validation error of the model in eval mode.
Paper scale here: CIFAR-10, ResNet-20 at 4x width, 30 epochs (normlab has no ImageNet reader).
Quick: MNIST (no CIFAR-10 offline) with a small conv net conv16-pool-conv32-pool-conv64-pool-fc whose last norm sees
7x7 positions (the feature small-batch BN suffers from: few values per channel at batch 2); GN with G = 8 (the net
has 16-64 channels; 2-8 channels per group); batch sizes 32, 8, 2 at an equal number of training samples (equal
epochs). The runs are built in smallbatch.py and shared with renorm-ghost, precise-bn and train-eval-gap.

Instruments: none (final test error in eval mode, running statistics from the EMA, over the whole test split).
Verdict: (1) GN is flat: every GN run's error lies within a band of 15% of GN's mean error (rule fixed in advance;
Wu & He's GN varies by <1% relative, BN by 47%); (2) BN's error is higher at the smallest batch than at 32; (3) BN
degrades more than GN from batch 32 to the smallest (per seed, paired); (4, 5) LN and IN have higher error than GN at
batch 32.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from . import smallbatch
from .common import band, final, groups, stat_text
from .verdict import all_of, greater, similar
from ..report import figure, panel, series

PAPER, QUICK, SMOKE = smallbatch.PAPER, smallbatch.QUICK, smallbatch.SMOKE
TOL = 0.15   # GN "flat": all GN runs within 15% of GN's mean error


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
    caveat = ("MNIST is far easier than ImageNet (errors of a few percent, so relative differences are noisier); a "
              "3-conv net instead of ResNet-50; 0.4 epoch instead of 100 epochs, so no run has converged; BN's "
              "small-batch penalty depends on how few values its statistics see, which differs here.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        plan = [(n, b) for n in ("bn", s.gn) for b in s.batches] + [(n, max(s.batches)) for n in ("ln", "in")]
        return [smallbatch.run(self.id, s, norm, b, seed, device) for norm, b in plan for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        g = groups(results)
        err = {k.replace(s.gn, "gn"): [1 - a for a in final(v, "test_acc")] for k, v in g.items()}
        big, small = max(s.batches), min(s.batches)
        gn_all = [e for b in s.batches for e in err[f"gn b={b}"]]
        gn_mean = sum(gn_all) / len(gn_all)
        delta = {n: [a - b for a, b in zip(err[f"{n} b={small}"], err[f"{n} b={big}"])] for n in ("bn", "gn")}
        checks = [
            similar(f"GN is flat across batch sizes (all within {TOL:.0%} of GN's mean error)",
                    {f"b={b}": err[f"gn b={b}"] for b in s.batches}, TOL * gn_mean, fmt=".2f", scale=100, unit="%"),
            greater(f"BN's error is higher at batch {small} than at {big}", f"BN b={small}", err[f"bn b={small}"],
                    f"BN b={big}", err[f"bn b={big}"], fmt=".2f", scale=100, unit="%"),
            greater(f"BN degrades more than GN from batch {big} to {small}", "BN increase", delta["bn"],
                    "GN increase", delta["gn"], fmt=".2f", scale=100, unit=" pts"),
            greater(f"LN is worse than GN at batch {big}", "LN", err[f"ln b={big}"], "GN", err[f"gn b={big}"],
                    fmt=".2f", scale=100, unit="%"),
            greater(f"IN is worse than GN at batch {big}", "IN", err[f"in b={big}"], "GN", err[f"gn b={big}"],
                    fmt=".2f", scale=100, unit="%"),
        ]
        verdict = all_of(self.claim, checks)
        bs = sorted(s.batches)
        ser = [band(n.upper(), bs, [[err[f"{n} b={b}"][i] * 100 for b in bs] for i in range(len(err[f"{n} b={big}"]))],
                    marker="o") for n in ("bn", "gn")]
        for n in ("ln", "in"):
            e = [x * 100 for x in err[f"{n} b={big}"]]
            ser.append(series(f"{n.upper()} (b={big} only)", [big], [sum(e) / len(e)], [min(e)], [max(e)],
                              marker="s", ls="none"))
        figs = [figure("error-vs-batch", "Wu & He Fig. 1 / Table 2 (ours): test error vs batch size per norm, "
                                         "equal training samples at every batch size; mean and [min, max] over "
                                         "seeds.",
                       [panel("test error vs batch size", "images per batch", "test error (%)", ser, xlog=True,
                              xticks=bs)])]
        table = [{"norm": k.split(" ")[0].upper(), "batch": k.split("=")[1], "test error (%)": stat_text(v, ".2f", 100)}
                 for k, v in err.items()]
        notes = []
        gn_trend = greater("", "big", err[f"gn b={big}"], "small", err[f"gn b={small}"])
        if gn_trend.outcome == "supported":   # a diagnostic, shown with the numbers; it changes no verdict
            notes.append(f"GN normalizes each sample on its own, yet its error at batch {big} "
                         f"({100 * sum(err[f'gn b={big}']) / len(err[f'gn b={big}']):.2f}%) is above its error at "
                         f"batch {small} ({100 * sum(err[f'gn b={small}']) / len(err[f'gn b={small}']):.2f}%), "
                         f"ranges separated: at equal epochs the batch-{big} runs took {big // small}x fewer updates "
                         f"({smallbatch.steps(s, big):,} steps) and have not converged, so this scale measures "
                         f"optimization progress more than normalization; it cannot decide the batch-size parts of "
                         f"the claim.")
        return Outcome(verdict, checks, figs, table, notes)


EXPERIMENT = WuHeBatch()
