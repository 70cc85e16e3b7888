"""santurkar-landscape — Santurkar et al. (2018), Sec. 3.2, Fig. 4 (10, 11): the loss landscape along the gradient.

Setup (paper): the VGG of Fig. 1 (CIFAR-10) and the deep linear net of Fig. 3, with and without BN. At a training step
with gradient g and learning rate eta, probe w - s g for s in [eta/2, 4 eta] (VGG) or [eta/100, 30 eta] (linear):
(a) loss variation: the range of the losses; (b) gradient predictiveness: ||grad L(w) - grad L(w - s g)||;
(c) effective beta-smoothness: max over s of ||grad L(w) - grad L(w - s g)|| / ||s g||.
Quick: MNIST, VGG-11 layout at 1/8 width, 500 steps, lr 0.1; the linear net 3,000 steps (10k in the paper) at the
paper's lr 1e-6 on the summed loss, i.e. 1e-2 on normlab's mean loss (SPEC §2 notes).

Instruments: LandscapeHook every `every` steps, 8 step sizes (linear spacing for VGG, log for the linear net), BN in
training mode (batch statistics of the same batch), the step's own gradient as direction.
Decision rules (fixed before the data), per net, on scale-free measures (the loss range relative to the loss, the
gradient change relative to ||g||, and the effective β-smoothness, whose units are the same loss for both nets),
each averaged over the records of a seed:
  * core: each of the three is smaller with BN by at least a factor 2 ("markedly");
  * core `*-early`: over the first 10% of records, the relative gradient predictiveness is smaller with BN by at
    least a factor 10 (the paper: "about two orders of magnitude early in training"; one order is the least we
    would call that).
Seeds: 3 — a VGG run with the landscape instrument costs over a minute (the linear runs share the seeds).
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import band, curve, offline, stat_text, time_mean, train_run
from .judge import Judge
from .rows import LANDSCAPE
from .variants import Net
from .verdict import Rule
from ..report import figure, panel

MEASURES = (("loss_var", "loss variation (max - min) / loss"), ("pred_max", "gradient predictiveness ||Δ grad|| / "
            "||g||"), ("beta_max", "effective β-smoothness"))

PAPER = Scale("paper", dataset="cifar10", in_shape=(3, 32, 32), vgg="vgg11", width=1.0, steps=15_000, batch=128,
              lr=0.1, every=100, points=8, eval_samples=0, lin_steps=10_000, lin_lr=1e-2, lin_every=100, seeds=3)   # lr 1e-6 on the summed loss
QUICK = (PAPER.reduce("quick", "CIFAR-10 cannot be had offline: MNIST", dataset="mnist", in_shape=(1, 28, 28))
         .reduce("quick", "a 2-core CPU: 1/8 width (8-conv layout kept), ~1 epoch", width=0.125, steps=500,
                 every=25, eval_samples=2000)
         .reduce("quick", "a 2-core CPU: the deep linear net 3,000 steps instead of 10,000, the landscape every 30 "
                 "steps (the ~100 records per run of the paper's cadence)", lin_steps=3_000, lin_every=30))
SMOKE = QUICK.reduce("smoke", "tests only", width=0.0625, batch=16, steps=4, every=2, points=3, eval_samples=64,
                     lin_steps=4, lin_every=2, seeds=2)


def _values(row: dict, key: str) -> float | None:
    """The scale-free measure `key` of one landscape record (None when the record is not finite)."""
    if not row.get("finite", True):
        return None
    if key == "loss_var":
        return (row["loss_range"][1] - row["loss_range"][0]) / max(abs(row["loss0"]), 1e-12)
    if key == "pred_max":
        return row["pred_max"] / max(row["grad_norm"], 1e-12)
    return row[key]


class SanturkarLandscape(Experiment):
    id = "santurkar-landscape"
    title = "Loss landscape along the gradient: loss variation, gradient predictiveness, β-smoothness"
    source = "Santurkar et al. 2018, Sec. 3.2, Fig. 4"
    claim = ("With BN the loss changes less along the gradient, the gradient is more predictive and the effective "
             "β-smoothness is smaller — markedly so (about two orders of magnitude early in training for "
             "predictiveness).")
    paper_numbers = ("Fig. 4 (plots): all three quantities markedly smaller with BN for VGG; Fig. 11 likewise for "
                     "the deep linear net.")
    setup_text = ("VGG on CIFAR-10 and the 25-layer deep linear net, with and without BN; probes at s in "
                  "[η/2, 4η] (VGG) and [η/100, 30η] (linear net) along the training gradient.")
    caveat = ("MNIST and 500 steps instead of CIFAR-10 and 15k steps; 1/8 width; the spacing of the probe points is "
              "not stated by the paper.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}

    def dataset_of(self, s: Scale) -> str:
        return f"{offline(s.dataset)} (VGG); synthetic-linear (linear net)"

    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        kw = {"cfg": s.vgg, "width": s.width}
        out = []
        for norm in ("none", "bn"):
            inst = [LANDSCAPE.spec(span=[0.5, 4.0], points=s.points, spacing="linear", every=s.every)]
            out += [train_run(self.id, Net("vgg", norm), seed, inst, model="vgg", norm=norm,
                              dataset=offline(s.dataset), init="glorot", model_kw=kw, lr=s.lr, batch_size=s.batch,
                              steps=s.steps, eval_every=max(1, s.steps // 10), eval_samples=s.eval_samples,
                              device=device)
                    for seed in seeds]
        for norm in ("none", "bn"):
            inst = [LANDSCAPE.spec(span=[0.01, 30.0], points=s.points, spacing="log", every=s.lin_every)]
            out += [train_run(self.id, Net("linear", norm), seed, inst, model="linear", norm=norm,
                              dataset="synthetic-linear", init="glorot", loss="mse", lr=s.lin_lr, batch_size=1000,
                              steps=s.lin_steps, eval_every=max(1, s.lin_steps // 10), eval_samples=0, device=device)
                    for seed in seeds]
        return out

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        table, panels = [], []
        for net in ("vgg", "linear"):
            bn, none = Net(net, "bn"), Net(net, "none")
            per = {}
            for key, name in MEASURES:
                def avg(r, key=key, k=None):
                    rows = LANDSCAPE.of(r)
                    rows = rows[:max(1, len(rows) // 10)] if k == "early" else rows
                    return time_mean([v for v in (_values(row, key) for row in rows) if v is not None])
                per[key] = {lab: j.per_seed(g, avg) for lab, g in (("BN", bn), ("no BN", none))}
                j.decide(Rule(f"{net}-{key}", f"{net}: {name} is smaller with BN", name, "less", 2.0,
                              "a factor 2: 'markedly'", log=True), "BN", per[key]["BN"], "no BN", per[key]["no BN"])
                ser = [band(lab, *curve(j.runs(g), lambda row, key=key: _values(row, key), "diagnostics",
                                        LANDSCAPE.where()))
                       for lab, g in (("no BN", none), ("BN", bn))]
                panels.append(panel(f"{net}: {name}", "training step", name, ser, ylog=True))
            early = {lab: j.per_seed(g, lambda r: time_mean([
                v for v in (_values(row, "pred_max") for row in LANDSCAPE.of(r)[:max(
                    1, len(LANDSCAPE.of(r)) // 10)]) if v is not None])) for lab, g in (("BN", bn), ("no BN", none))}
            j.decide(Rule(f"{net}-early", f"{net}: early in training (first 10% of records) the gradient "
                          f"predictiveness is far smaller with BN", "||Δ grad|| / ||g||, first 10% of records", "less",
                          10.0, "one order of magnitude: the least we would call the paper's 'about two'", log=True,
                          paper="about 0.01x (two orders, Fig. 4 plot)"),
                     "BN", early["BN"], "no BN", early["no BN"])
            for lab in ("BN", "no BN"):
                row = {"net": net, "norm": lab}
                row.update({name.split(" (")[0]: stat_text(list(per[key][lab].values())) for key, name in MEASURES})
                row["predictiveness, first 10%"] = stat_text(list(early[lab].values()))
                table.append(row)
        figs = [figure("fig4", "Santurkar Fig. 4 (ours): along the training gradient, (a) loss variation, (b) "
                               "gradient predictiveness, (c) effective β-smoothness, for VGG (top) and the deep "
                               "linear net (bottom), with and without BN; mean and [min, max] over seeds, log scale.",
                       panels, ncols=3)]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = SanturkarLandscape()
