"""renorm-ghost — normlab's own: Batch Renorm and Ghost BN at small batches, next to BN and GN.

Questions from the literature, on the small-batch runs of wuhe-batch (smallbatch.py: same net, data, optimizer and
equal training samples per run; the BN and GN runs are shared with wuhe-batch):
  * Batch Renorm (Ioffe 2017, Sec. 4.3): at a small batch, BRN trains a better model than BN (it corrects the batch
    statistics towards the running ones, so training and inference agree). normlab runs "brn:1.5:0.5", the clip
    values Wu & He used for their BRN baseline, from the first step (the 5k-step warm-up is longer than a quick run).
  * Group Norm (Wu & He 2018, Table 2): at a small batch, GN is better than BN.
  * Ghost BN (Hoffer et al. 2017): normalizing over small virtual batches inside a large batch. ghost-bn:V at batch
    32 has BN's small-sample statistics (V values per channel and position) but a 32-sample gradient; reported beside
    BN at batch V and at 32 as an observation (no claim of the papers is tested by it).
Decision rules (fixed before the data; paired by seed): core `brn`, `gn` — at the smallest batch, BRN's (GN's) test
error is lower than BN's by at least 0.5 points. Preconditions: converged runs, and BN's small-batch penalty present
(BN's error at the smallest batch above its error at 32 by at least 0.5 points, interval clear): with no penalty there
is nothing for BRN or GN to recover. Seeds: 3 — a batch-2 run costs over a minute.
"""
from __future__ import annotations

from . import smallbatch
from .base import Experiment, Outcome, Scale
from .common import final, stat_text
from .judge import Judge
from .variants import NormBatch
from .verdict import Rule, decide
from .wuhe_batch import BN_DEGRADES
from ..report import figure, panel, series

BRN = "brn:1.5:0.5"


PAPER_NUMBERS = {"brn": "Ioffe 2017, 4 img/batch: top-1 acc 76.5 vs 74.2%: −2.3 pts error",
                 "gn": "Wu & He, 2 img/GPU: 24.1 vs 34.7% error: −10.6 pts"}


def lower_than_bn(key: str, name: str) -> Rule:
    return Rule(key, f"{name}'s test error is lower than BN's at the smallest batch", "test error (%)", "less",
                0.005, "0.5 points", scale=100, unit=" pts", fmt=".2f", paper=PAPER_NUMBERS[key])


class RenormGhost(Experiment):
    id = "renorm-ghost"
    title = "Batch Renorm and Ghost BN at small batches, next to BN and GN"
    source = "normlab's own (Ioffe 2017; Wu & He 2018; Hoffer et al. 2017)"
    claim = ("At a small batch, Batch Renorm and Group Norm both give lower test error than BN; Ghost BN's small "
             "virtual batches are shown beside them.")
    paper_numbers = ("Ioffe 2017: at 4 img/batch (Inception, ImageNet) BRN 76.5% vs BN 74.2% top-1 accuracy; Wu & He "
                     "2018: at 2 img/GPU GN 24.1% vs BN 34.7% error (BRN 26.3%... at 4 img/GPU per their Sec. 4.1).")
    setup_text = "As wuhe-batch, with BRN (r_max 1.5, d_max 0.5) and Ghost BN added."
    caveat = ("Fashion-MNIST, a 3-conv net and 1 epoch: BN's small-batch penalty may be small here, leaving little "
              "for BRN or GN to recover; BRN runs without the paper's warm-up schedule.")
    scales = smallbatch.SCALES
    unfit_fallbacks = smallbatch.UNFIT


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        return [smallbatch.run(self.id, s, v, seed, device) for v in self.variants(s) for seed in seeds]

    def variants(self, s: Scale) -> dict[NormBatch, str]:
        """The variants, in run order, with the names the verdicts and the table give them."""
        big, small = max(s.batches), min(s.batches)
        return {NormBatch("bn", big): f"BN b={big}", NormBatch("bn", small): f"BN b={small}",
                NormBatch(s.gn, small): f"GN b={small}", NormBatch(BRN, small): f"BRN b={small}",
                NormBatch(f"ghost-bn:{small}", big): f"Ghost BN V={small} b={big}"}

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        big, small = max(s.batches), min(s.batches)
        name = self.variants(s)
        per = {k: j.per_seed(k, lambda r: 1 - final([r], "test_acc")[0]) for k in j.all}
        bn_small, bn_big = NormBatch("bn", small), NormBatch("bn", big)
        smallbatch.require_converged(j, list(j.all))
        penalty = decide(BN_DEGRADES, name[bn_small], per[bn_small], name[bn_big], per[bn_big])
        j.require("BN's small-batch penalty present", penalty.outcome == "supported",
                  f"BN at batch {small} vs {big}: {penalty.shown} ({penalty.outcome})",
                  "harder data or a deeper net (medium or paper scale)")
        j.decide(lower_than_bn("brn", "BRN"), "BRN", per[NormBatch(BRN, small)], "BN", per[bn_small])
        j.decide(lower_than_bn("gn", "GN"), "GN", per[NormBatch(s.gn, small)], "BN", per[bn_small])
        err = {name[k]: list(v.values()) or [float("nan")] for k, v in per.items()}
        ser = [series(k, [i], [100 * sum(v) / len(v)], [100 * min(v)], [100 * max(v)], marker="o", ls="none")
               for i, (k, v) in enumerate(err.items())]
        figs = [figure("errors", "Test error per normalization and batch size: mean over seeds, bars = [min, max].",
                       [panel("test error at equal training samples", "", "test error (%)", ser,
                              xticks=list(range(len(err))), xticklabels=list(err), legend=False)])]
        table = [{"variant": k, "test error (%)": stat_text(v, ".2f", 100)} for k, v in err.items()]
        notes = [f"Ghost BN observation: V={small} virtual batches at batch {big} vs BN at batch {small} and {big} — "
                 f"see the table (no verdict)."]
        return j.outcome(self.claim, figs, table, notes)


EXPERIMENT = RenormGhost()
