"""train-eval-gap — normlab's own, after Wu & Johnson (2021), Sec. 5: train/eval discrepancy vs batch size.

Question (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 5, train-test inconsistency): in training, BN
normalizes with the statistics of the current batch; in evaluation, with population statistics. The smaller the
batch, the more the two differ, so the model evaluated with population statistics behaves less like the model that
was trained. Measured on the BN runs of wuhe-batch (smallbatch.py): at the last step, the test accuracy of a copy of
the model with batch statistics over test batches of the training batch size ("train mode") and with PreciseBN
population statistics ("eval mode", the EMA's lag removed so that only the train/eval difference remains).
Decision rule (fixed before the data; paired by seed): core `gap` — |accuracy(train mode) - accuracy(eval mode)| is
larger at the smallest batch than at the largest by at least 0.5 points. Precondition: converged runs.
Seeds: 3 — a batch-2 run costs over a minute.
"""
from __future__ import annotations

from . import smallbatch
from .base import Experiment, Outcome, Scale
from .common import stat_text
from .judge import Judge
from .variants import NormBatch
from .verdict import Rule
from ..report import figure, panel, series


class TrainEvalGap(Experiment):
    id = "train-eval-gap"
    title = "Train/eval discrepancy of BN vs batch size"
    source = "normlab's own (Wu & Johnson 2021, Sec. 5)"
    claim = ("The gap between BN's behaviour with batch statistics (training) and with population statistics "
             "(inference) grows as the batch shrinks.")
    paper_numbers = ("Wu & Johnson 2021 Sec. 5 (plots): with small per-GPU batches the model evaluated with "
                     "population statistics departs from its training-mode behaviour; using mini-batch statistics at "
                     "test time narrows the gap.")
    setup_text = "ResNet-50 on ImageNet at several per-GPU batch sizes; train-mode vs eval-mode evaluation."
    caveat = ("Fashion-MNIST, a 3-conv net and 1 epoch; on an easy task both modes may reach near-identical "
              "accuracy, which leaves the gap within seed noise.")
    scales = smallbatch.SCALES
    unfit_fallbacks = smallbatch.UNFIT


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        return [smallbatch.run(self.id, s, NormBatch("bn", b), seed, device) for b in s.batches for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        smallbatch.require_converged(j, list(j.all))
        rows = {b: [smallbatch.eval_modes(r) for r in j.runs(NormBatch("bn", b))] for b in s.batches}
        per = {b: j.per_seed(NormBatch("bn", b), lambda r: abs(smallbatch.eval_modes(r)["batch_acc"] -
                                                          smallbatch.eval_modes(r)["precise_acc"])
                             if smallbatch.eval_modes(r) else float("nan")) for b in s.batches}
        small, big = min(s.batches), max(s.batches)
        j.decide(Rule("gap", f"the train/eval accuracy gap is larger at batch {small} than at {big}",
                      "|train-mode − eval-mode accuracy| (points)", "greater", 0.005, "0.5 points", scale=100,
                      unit=" pts", fmt=".2f"), f"b={small}", per[small], f"b={big}", per[big])
        gap = {b: list(v.values()) or [float("nan")] for b, v in per.items()}
        bs = sorted(s.batches)
        ser = []
        for key, lab in (("batch_acc", "train mode (batch statistics)"), ("precise_acc", "eval mode (population)"),
                         ("ema_acc", "eval mode (EMA)")):
            ys = [[100 * r[key] for r in rows[b] if r] or [float("nan")] for b in bs]
            ser.append(series(lab, bs, [sum(y) / len(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys],
                              marker="o"))
        gs = [[100 * v for v in gap[b]] for b in bs]
        figs = [figure("gap", "Test accuracy of the final BN model with batch statistics (test batches of the "
                              "training batch size) vs population statistics, and their gap, per training batch "
                              "size; mean and [min, max] over seeds.",
                       [panel("accuracy by statistics used", "training batch size", "test accuracy (%)", ser,
                              xlog=True, xticks=bs),
                        panel("|train mode - eval mode|", "training batch size", "accuracy gap (points)",
                              [series("gap", bs, [sum(y) / len(y) for y in gs], [min(y) for y in gs],
                                      [max(y) for y in gs], marker="o")], xlog=True, xticks=bs)])]
        table = [{"batch": b, "gap (pts)": stat_text(gap[b], ".2f", 100),
                  "train-mode acc (%)": stat_text([r["batch_acc"] for r in rows[b] if r], ".2f", 100),
                  "eval-mode acc (%)": stat_text([r["precise_acc"] for r in rows[b] if r], ".2f", 100)} for b in bs]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = TrainEvalGap()
