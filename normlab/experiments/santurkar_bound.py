"""santurkar-bound — Santurkar et al. (2018), Sec. 4, Theorem 4.1: BN's effect on the gradient, on real batches.

Setup (paper): "any BN net during training". For one BN layer with input y (batch std sigma_j, standardized yhat_j)
and output z, Theorem 4.1 bounds ||grad_y L||^2 by gamma^2/sigma^2 (||g||^2 - <1,g>^2/m - <g,yhat>^2/m), g = dL/dz
(SPEC §1.4: the right side holds with equality under that reading, up to eps). normlab checks it on every BN layer of
a VGG during training (diagnostics.theorem41: the left side from autograd, both right sides in closed form) and
reports the shrink factors gamma^2/sigma^2 and the fraction of ||g||^2 the two projections remove; the plain net's
whole-network gradient norm is recorded beside the BN net's.
Quick: MNIST, VGG-11 layout at 1/8 width, 300 steps, lr 0.1.

Instruments: BoundHook (every BN layer) and a one-point LandscapeHook (for ||grad L||) every `every` steps.
Decision rules (fixed before the data): the theorem is judged on what it states (SPEC §2 notes): core `identity` —
the closed-form right side matches autograd in every record (identity_err <= 1e-4); core `bound` — the inequality
holds in every record. Whether BN shrinks the gradient in this net (γ²/σ² below 1 or not) is not a claim of the
theorem: it is reported as a measurement (table and figure), with the gradient norms with and without BN.
Seeds: 3 — a VGG run with the bound instrument costs about a minute.
"""
from __future__ import annotations

import math

from .base import Experiment, Outcome, Scale
from .common import band, curve, stat_text, time_mean, train_run
from .judge import Judge
from .rows import BOUND, LANDSCAPE
from .variants import Norm
from ..report import figure, panel

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, every=500, eval_samples=0, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width, 300 steps", width=0.125, steps=300, every=20, eval_samples=1000))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, every=2, eval_samples=64, seeds=2)


def _bound_ratio(r: dict) -> float:
    """lhs / rhs of the theorem (<= 1 when it holds); 0/0 counts as 0."""
    if r["rhs_theorem"] > 0:
        return r["lhs"] / r["rhs_theorem"]
    return 0.0 if r["lhs"] == 0 else math.inf


class SanturkarBound(Experiment):
    id = "santurkar-bound"
    title = "Theorem 4.1 on real batches: BN shrinks the gradient"
    source = "Santurkar et al. 2018, Sec. 4, Theorem 4.1"
    claim = ("The inequality of Theorem 4.1 holds for every BN layer during training (an identity when the gradient "
             "is read w.r.t. the BN output); the factors it names (γ²/σ², the two projections) are measured.")
    paper_numbers = "A theorem: no numbers; the bound is an identity when read with g = dL/dz (SPEC §1.4)."
    setup_text = "Any BN network during training (normlab: the VGG of santurkar-vgg with BN)."
    caveat = ("both parts are mathematical statements, so a failure would point at the BN backward or the "
              "instrument; whether γ²/σ² < 1 in this net is a measurement (with Glorot init on MNIST the pre-BN "
              "activations can have σ < 1, and then the factor exceeds 1).")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        out = []
        for norm in ("bn", "none"):
            inst = [LANDSCAPE.spec(span=[0.5, 0.5], points=1, every=s.every)]
            if norm == "bn":
                inst.insert(0, BOUND.spec(every=s.every))
            out += [train_run(self.id, Norm(norm), seed, inst, model="vgg", norm=norm, dataset=self.dataset_of(s),
                              init="glorot", model_kw=kw, lr=s.lr, batch_size=s.batch, steps=s.steps,
                              eval_every=max(1, s.steps // 5), eval_samples=s.eval_samples, device=device)
                    for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        g = {k: j.runs(k) for k in j.all}
        bn = g[Norm("bn")]
        rows = [row for r in bn for row in BOUND.of(r, finite=True)]
        ratio = [time_mean([row["grad_ratio"] for row in BOUND.of(r)]) for r in bn]
        worst_err = max((r["identity_err"] for r in rows), default=0.0)
        worst_ratio = max((_bound_ratio(r) for r in rows), default=0.0)
        j.holds("identity", "the closed-form right side matches autograd (identity_err <= 1e-4)",
                sum(bool(r["identity_holds"]) for r in rows), len(rows), f"worst identity_err {worst_err:.3g}")
        j.holds("bound", "Theorem 4.1's inequality holds", sum(bool(r["bound_holds"]) for r in rows), len(rows),
                f"worst lhs / rhs {worst_ratio:.6g}")
        layers = sorted({row["layer"] for row in rows}, key=lambda n: [int(p) if p.isdigit() else p
                                                                      for p in n.split(".")])
        pick = [layers[0], layers[-1]] if len(layers) > 1 else layers
        panels = []
        for key, lab, ylog in (("shrink_mean", "γ²/σ² (mean over units)", True),
                               ("removed_frac", "fraction of ||g||² removed", False),
                               ("grad_ratio", "||dL/dy||² / ||dL/dz||²", True)):
            panels.append(panel(lab, "training step", lab,
                                [band(f"layer {n}", *curve(bn, key, "diagnostics", BOUND.where(n))) for n in pick],
                                ylog=ylog))
        panels.append(panel("whole-network gradient norm", "training step", "||∇L||",
                            [band({"bn": "BN", "none": "no BN"}[k.norm], *curve(v, "grad_norm", "diagnostics",
                                                                                LANDSCAPE.where()))
                             for k, v in g.items()], ylog=True))
        figs = [figure("bound", "Theorem 4.1 on real batches (ours): shrink factor γ²/σ², the part of ||dL/dz||² "
                                "removed by the two projections, and the resulting gradient ratio for the first and "
                                "last BN layer; the whole-network gradient norm with and without BN. Mean and "
                                "[min, max] over seeds.", panels, ncols=2)]
        table = [{"quantity": "max identity_err", "value": f"{max((r['identity_err'] for r in rows), default=0):.3g}"},
                 {"quantity": "records (layer x step x seed)", "value": str(len(rows))},
                 {"quantity": "γ²/σ² (mean)", "value": stat_text([time_mean([row["shrink_mean"] for row in
                                                                             BOUND.of(r)]) for r in bn])},
                 {"quantity": "fraction removed", "value": stat_text([time_mean([row["removed_frac"] for row in
                                                                                 BOUND.of(r)]) for r in bn])},
                 {"quantity": "||dL/dy||²/||dL/dz||²", "value": stat_text(ratio)}]
        for k, v in g.items():
            table.append({"quantity": f"||∇L|| ({'BN' if k.norm == 'bn' else 'no BN'})",
                          "value": stat_text([time_mean([row["grad_norm"] for row in LANDSCAPE.of(r)])
                                              for r in v])})
        return j.outcome(self.claim, figs, table, [f"Measured, not judged: ||dL/dy||² / ||dL/dz||² = "
                                                   f"{stat_text(ratio)} over seeds (below 1 means BN shrank the "
                                                   f"gradient in this net)."])


EXPERIMENT = SanturkarBound()
