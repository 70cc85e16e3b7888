"""ioffe-mnist — Ioffe & Szegedy (2015), Sec. 4.1, Fig. 1(a-c).

Setup (paper): MNIST; an MLP 784-100-100-100-10 with sigmoid nonlinearities, weights initialized to small random
Gaussian values; 50,000 steps of mini-batches of 60 examples; with and without BN on each hidden layer (BN before the
sigmoid). Plots: (a) test accuracy vs training steps; (b, c) the 15th/50th/85th percentiles of the input to one
typical sigmoid of the last hidden layer over training, without (b) and with (c) BN.
[open] optimizer and learning rate: plain SGD, lr 0.1 (no momentum), the same for both nets; init N(0, 0.1^2).

Instruments: DistributionsHook on the last hidden sigmoid's input (site="input"), unit 0, percentiles 15/50/85,
every `dist_every` steps, on the step's own batch (60 values).
Quick = the paper's setup (50,000 steps): the MLP is small enough for a 2-core CPU.
Decision rules (fixed before the data):
  * core `sooner`: BN's test accuracy at step 5,000 (10% of training) is higher by at least 1 point — the claim is
    about *sooner*, so it is tested where the curves are still apart (at the end both nets approach 97-98%);
  * core `drift`: the sigmoid input's percentiles drift more without BN, by at least a factor 1.5 (drift = mean over
    q of |mean of p_q over the last 10% of records - mean over the first 10%|);
  * side `end`: BN's test accuracy at the end (50k steps) is higher by at least 0.2 points (the paper's plot: about
    98+ vs 97%).
Seeds: 3 — a 50,000-step run costs over a minute.
"""
from __future__ import annotations

from .base import Experiment, Outcome, Scale
from .common import at_step, band, curve, final, stat_text, train_run
from .judge import Judge
from .rows import DISTRIBUTIONS, percentile
from .variants import Norm
from .verdict import Rule
from ..report import figure, panel, series

SIGMOID = "9"   # module name of the last hidden layer's sigmoid in models.MLP (Flatten, 3 x [Linear, norm, Sigmoid])
QS = ("15", "50", "85")
BN, NONE = Norm("bn"), Norm("none")

PAPER = Scale("paper", dataset="mnist", steps=50_000, batch=60, lr=0.1, eval_every=1000, eval_samples=0,
              dist_every=500, early=5000, seeds=3)
QUICK = PAPER.reduce("quick", "the paper's setup, except that training accuracy is evaluated on 10,000 training "
                     "images instead of all 60,000 (halves the cost; test accuracy is on the whole test split)",
                     eval_samples=10_000)
SMOKE = QUICK.reduce("smoke", "tests only", steps=40, eval_every=10, eval_samples=200, dist_every=10, early=10,
                     seeds=2)

SOONER = Rule("sooner", "BN's test accuracy is higher sooner (at 10% of training)", "test accuracy (%)", "greater",
              0.01, "1 point: the smallest gap the paper's Fig. 1(a) shows", scale=100, unit=" pts", fmt=".2f",
              paper="BN's curve above throughout (plot)")
DRIFT = Rule("drift", "the sigmoid-input percentiles drift more without BN", "percentile drift (pre-sigmoid units)",
             "greater", 1.5, "a factor 1.5: Fig. 1(b, c) shows drifting vs flat curves", log=True)
END = Rule("end", "BN's test accuracy is higher at the end", "test accuracy (%)", "greater", 0.002,
           "0.2 points: below that MNIST accuracies of one net differ by seed", core=False, scale=100, unit=" pts",
           fmt=".2f", paper="about +1 pt (98+ vs 97% at 50k, read off Fig. 1(a))")


def drift(results, frac: float = 0.1) -> list[float]:
    """Per seed: mean over q of |late mean - early mean| of the unit's q-th percentile (first/last 10% of records)."""
    out = []
    for r in results:
        rows = DISTRIBUTIONS.of(r)
        k = max(1, int(len(rows) * frac))
        d = 0.0
        for q in QS:
            v = [percentile(row, q) for row in rows]
            d += abs(sum(v[-k:]) / k - sum(v[:k]) / k)
        out.append(d / len(QS))
    return out


class IoffeMnist(Experiment):
    id = "ioffe-mnist"
    title = "BN on the MNIST MLP: accuracy and sigmoid-input distributions"
    source = "Ioffe & Szegedy 2015, Sec. 4.1, Fig. 1"
    claim = ("The BN network reaches higher test accuracy sooner; without BN the 15/50/85th percentiles of a "
             "sigmoid's input drift over training, with BN they are stable.")
    paper_numbers = ("Fig. 1(a): the BN net's test accuracy is higher throughout 50k steps (read off the plot: about "
                     "0.98+ vs 0.97 at the end); Fig. 1(b, c): drifting vs stable percentiles.")
    setup_text = ("MNIST, MLP 784-100-100-100-10 (sigmoid), small Gaussian init, 50,000 steps of batch 60, with and "
                  "without BN on each hidden layer; optimizer and LR not stated (normlab: SGD, lr 0.1).")
    caveat = ("fewer steps than the paper (the curves may not have separated or converged); the LR is normlab's "
              "choice; percentiles come from the 60 values of each training batch, so they are noisy.")
    scales = {"paper": PAPER, "quick": QUICK, "smoke": SMOKE}


    def runs(self, s: Scale, seeds: list[int], device: str = "cpu"):
        inst = [DISTRIBUTIONS.spec(layers=[SIGMOID], site="input", units=[0], bins=10, every=s.dist_every)]
        return [train_run(self.id, v, seed, inst, model="mlp", norm=v.norm, dataset=self.dataset_of(s),
                          init="ioffe", optimizer="sgd", lr=s.lr, batch_size=s.batch, steps=s.steps,
                          eval_every=s.eval_every, eval_samples=s.eval_samples, device=device)
                for v in (NONE, BN) for seed in seeds]

    def analyze(self, results, s: Scale) -> Outcome:
        j = Judge(results)
        early = s.early
        acc_early = {k: j.per_seed(k, lambda r: at_step(r, "test_acc", early)) for k in (BN, NONE)}
        acc_final = {k: j.per_seed(k, lambda r: final([r], "test_acc")[0]) for k in (BN, NONE)}
        drifts = {k: dict(zip([r.run.seed for r in j.runs(k)], drift(j.runs(k)))) for k in (BN, NONE)}
        j.decide(SOONER, "BN", acc_early[BN], "no BN", acc_early[NONE])
        j.decide(DRIFT, "no BN", drifts[NONE], "BN", drifts[BN])
        j.decide(END, "BN", acc_final[BN], "no BN", acc_final[NONE])
        g = j.all
        acc_panel = panel("(a) test accuracy", "training step", "test accuracy",
                          [band(k.name, *curve(v, "test_acc")) for k, v in g.items()])
        pct_panels = []
        for k, letter in ((NONE, "b"), (BN, "c")):
            r = g[k][0]   # one typical unit of one net, as in the paper (each seed's unit 0 is a different unit)
            rows = DISTRIBUTIONS.of(r)
            ser = [series(f"{q}th percentile", [row["step"] for row in rows],
                          [percentile(row, q) for row in rows], key=q) for q in QS]
            pct_panels.append(panel(f"({letter}) {'without' if k == NONE else 'with'} BN: sigmoid input "
                                    f"(unit 0, seed {r.run.seed})", "training step", "pre-sigmoid value", ser))
        figs = [figure("fig1", "Ioffe Fig. 1 (ours): (a) test accuracy, mean and [min, max] over seeds; (b, c) "
                               "15/50/85th percentiles of one last-hidden-layer sigmoid's input over training, "
                               "measured on each step's batch of 60 (one unit of one seed; the drift numbers "
                               "use every seed).", [acc_panel] + pct_panels)]
        first = {k: [at_step(r, "test_acc", s.eval_every) for r in j.runs(k)] for k in (BN, NONE)}
        table = [{"net": k.name, f"test acc @ {s.eval_every:,} (no rule)": stat_text(first[k], ".2f", 100),
                  f"test acc @ {early:,}": stat_text(list(acc_early[k].values()), ".2f", 100),
                  "final test acc": stat_text(list(acc_final[k].values()), ".2f", 100),
                  "percentile drift": stat_text(list(drifts[k].values()))} for k in (NONE, BN)]
        return j.outcome(self.claim, figs, table)


EXPERIMENT = IoffeMnist()
