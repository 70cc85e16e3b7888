"""hessian — normlab's own: the Hessian spectrum over training, with and without BN.

Question: Santurkar et al. (2018, Sec. 3-4) argue that BN makes the landscape smoother (smaller effective
β-smoothness along the gradient); the largest Hessian eigenvalue is the worst-case curvature (Ghorbani et al. 2019
relate BN to the disappearance of large outlier eigenvalues). Does BN lower it along training?
Setup: the VGG of santurkar-landscape (MNIST, VGG-11 layout at 1/8 width, Glorot init, SGD lr 0.1, batch 128),
with and without BN; Lanczos on Hessian-vector products of the step's batch loss (BN in training mode).

Instruments: SpectrumHook every `every` steps on the step's batch (BN in training mode): the top-3 eigenvalues by
Lanczos with full reorthogonalization, stopped at a residual tolerance of 1e-3 (at most `max_iter` products), and
the Hutch++ trace (5% tolerance); every record says whether Lanczos converged.
Quantity: BN makes the loss invariant to the scale of the weights before it, so the raw eigenvalues of a BN net
scale with 1/||w||² and are not comparable with a plain net's. The comparison is made on a scale-free quantity: the
top eigenvalue relative to the mean eigenvalue, |λ_max| / (tr H / P) (P parameters) — how far the sharpest direction
stands out of the spectrum, which is what Ghorbani et al. report BN removes.
Decision rules (fixed before the data): core `outlier` — |λ_max| / (tr H / P), averaged over the records, is smaller
with BN by at least a factor 2; side `raw` — the raw |λ_max| likewise (shown, but not comparable, as said above).
Precondition: Lanczos converged (residual <= 1e-3) in at least 90% of the records of every run; otherwise the
eigenvalues are not yet measured and the claim is undecidable.
Seeds: 3 — a VGG run with the Hessian instrument costs over a minute.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, stat_text, time_mean, train_run
from .judge import Judge
from .rows import SPECTRUM
from .variants import Norm
from .verdict import Rule
from ..report import figure, panel

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, every=500, max_iter=100, eval_samples=0, seeds=3)
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width, 400 steps, a spectrum every 80 steps, at most 60 Lanczos steps",
                 width=0.125, steps=400, every=80, max_iter=60, eval_samples=1000))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, every=2, max_iter=6, eval_samples=64,
                     seeds=2)
OUTLIER = Rule("outlier", "the top eigenvalue stands out less from the spectrum with BN (|λ_max| / mean eigenvalue)",
               "|λ_max| / (tr H / P)", "less", 2.0, "a factor 2: outliers 'removed', not trimmed", log=True)
RAW = Rule("raw", "the raw |λ_max| is lower with BN (not scale-free)", "|λ_max|", "less", 2.0, "a factor 2",
           core=False, log=True)


def _outlier(row: dict) -> float | None:
    """|λ_max| / (tr H / P) of one spectrum record (None when not finite or the trace is 0)."""
    if not row.get("finite", True) or not row.get("trace"):
        return None
    return abs(row["top"][0]) / abs(row["trace"] / row["dim"])


class Hessian(Experiment):
    id = "hessian"
    title = "Top Hessian eigenvalue over training, with and without BN"
    source = "normlab's own (after Santurkar et al. 2018, Sec. 3; Ghorbani et al. 2019)"
    claim = "BN lowers the top eigenvalue of the loss Hessian (the sharpest curvature) along training."
    paper_numbers = ("Ghorbani et al. 2019 (ResNet-32, CIFAR-10): without BN large isolated eigenvalues appear; "
                     "with BN they do not (plots).")
    setup_text = ("VGG with and without BN; the top-3 Hessian eigenvalues (Lanczos to a residual tolerance) and the "
                  "Hutch++ trace of the batch loss over training.")
    caveat = ("the trace is a stochastic estimate (Hutch++, 5% tolerance); on MNIST with a short run the curvature may "
              "still be dominated by the initialization.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        inst = [SPECTRUM.spec(k=3, which="top", tol=1e-3, max_iter=s.max_iter, trace=True, trace_tol=0.05,
                     every=s.every)]
        return [train_run(self.id, Norm(norm), seed, inst, model="vgg",
                          norm=norm, dataset=self.dataset_of(s), init="glorot", model_kw=kw, lr=s.lr,
                          batch_size=s.batch, steps=s.steps, eval_every=max(1, s.steps // 5),
                          eval_samples=s.eval_samples, device=device)
                for norm in ("none", "bn") for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        g = {k: j.runs(k) for k in j.all}
        rows = lambda r: SPECTRUM.of(r, finite=True)  # noqa: E731
        conv = [sum(bool(row.get("converged")) for row in rows(r)) / max(1, len(rows(r)))
                for rs in g.values() for r in rs]
        j.require("Lanczos converged", bool(conv) and min(conv) >= 0.9,
                  f"share of records whose top eigenvalues reached the residual tolerance: worst run "
                  f"{100 * min(conv, default=0):.0f}% (needs 90%)", "more Lanczos steps (`max_iter`)")
        ratio = {k: j.per_seed(k, lambda r: time_mean([_outlier(row) for row in rows(r)
                                                       if _outlier(row) is not None])) for k in g}
        lam = {k: j.per_seed(k, lambda r: time_mean([abs(row["top"][0]) for row in rows(r)])) for k in g}
        bn, none = Norm("bn"), Norm("none")
        j.decide(OUTLIER, "BN", ratio[bn], "no BN", ratio[none])
        j.decide(RAW, "BN", lam[bn], "no BN", lam[none])
        label = {bn: "BN", none: "no BN"}
        sel = SPECTRUM.where(finite=True)
        ser = [band(label[k], *curve(v, lambda row: abs(row["top"][0]), "diagnostics", sel)) for k, v in g.items()]
        ser_ratio = [band(label[k], *curve(v, _outlier, "diagnostics", sel)) for k, v in g.items()]
        figs = [figure("eigenvalue", "Top Hessian eigenvalue of the batch loss over training (Lanczos), and how far "
                                     "it stands out of the spectrum (|λ_max| over the mean eigenvalue tr H / P), "
                                     "with and without BN; mean and [min, max] over seeds.",
                       [panel("top Hessian eigenvalue", "training step", "|λ_max|", ser, ylog=True),
                        panel("top eigenvalue / mean eigenvalue", "training step", "|λ_max| / (tr H / P)", ser_ratio,
                              ylog=True)])]
        table = [{"net": label[k], "|λ| (mean over records)": stat_text(list(v.values())),
                  "|λ| / (tr H / P)": stat_text(list(ratio[k].values()))} for k, v in lam.items()]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = Hessian()
