"""hessian — normlab's own: the top Hessian eigenvalue over training, with and without BN.

Question: Santurkar et al. (2018, Sec. 3-4) argue that BN makes the landscape smoother (smaller effective
β-smoothness along the gradient); the largest Hessian eigenvalue is the worst-case curvature (Ghorbani et al. 2019
relate BN to the disappearance of large outlier eigenvalues). Does BN lower it along training?
Setup: the VGG of santurkar-landscape (MNIST, VGG-11 layout at 1/8 width, Glorot init, SGD lr 0.1, batch 128),
with and without BN; power iteration on Hessian-vector products of the step's batch loss (BN in training mode).

Instruments: HessianHook (20 power iterations at paper scale, 10 at quick) every `every` steps.
Power iteration converges to the eigenvalue of largest magnitude; its absolute value |λ| is what is compared (early
in training it can be a negative-curvature direction).
Verdict: |λ|, averaged over the records, is lower with BN than without.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, groups, rows_of, stat_text, time_mean, train_run
from .instruments import spec
from .verdict import less
from ..report import figure, panel

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, every=500, iters=20, eval_samples=0, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width, 400 steps, 10 power iterations", width=0.125, steps=400,
                 every=40, iters=10, eval_samples=1000))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, every=2, iters=3, eval_samples=64,
                     seeds=2)


class Hessian(Experiment):
    id = "hessian"
    title = "Top Hessian eigenvalue over training, with and without BN"
    source = "normlab's own (after Santurkar et al. 2018, Sec. 3; Ghorbani et al. 2019)"
    claim = "BN lowers the top eigenvalue of the loss Hessian (the sharpest curvature) along training."
    paper_numbers = ("Ghorbani et al. 2019 (ResNet-32, CIFAR-10): without BN large isolated eigenvalues appear; "
                     "with BN they do not (plots).")
    setup_text = "VGG with and without BN; top Hessian eigenvalue by power iteration on the batch loss over training."
    caveat = ("the top eigenvalue of a BN net depends on its weight norms (scale invariance), and on MNIST with a "
              "short run the curvature may still be dominated by the initialization.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        return [train_run(self.id, norm, seed, [spec("hessian", iters=s.iters, every=s.every)], model="vgg",
                          norm=norm, dataset=self.dataset_of(s), init="glorot", model_kw=kw, lr=s.lr,
                          batch_size=s.batch, steps=s.steps, eval_every=max(1, s.steps // 5),
                          eval_samples=s.eval_samples, device=device)
                for norm in ("none", "bn") for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        g = groups(results)
        lam = {k: [time_mean([abs(row["eigenvalue"]) for row in rows_of(r, "hessian") if row.get("finite", True)])
                   for r in v] for k, v in g.items()}
        check = less("the dominant Hessian eigenvalue |λ| (mean over records) is lower with BN", "BN", lam["bn"],
                     "no BN", lam["none"], ratio=True)
        ser = [band({"bn": "BN", "none": "no BN"}[k], *curve(v, lambda row: abs(row["eigenvalue"]), "diagnostics",
                                                             lambda row: row.get("hook") == "hessian"))
               for k, v in g.items()]
        figs = [figure("eigenvalue", "Top Hessian eigenvalue of the batch loss over training (power iteration), "
                                     "with and without BN; mean and [min, max] over seeds.",
                       [panel("dominant Hessian eigenvalue", "training step", "|λ|", ser, ylog=True)])]
        table = [{"net": {"bn": "BN", "none": "no BN"}[k], "|λ| (mean over records)": stat_text(v)}
                 for k, v in lam.items()]
        return Outcome(check, [check], figs, table)


EXPERIMENT = Hessian()
