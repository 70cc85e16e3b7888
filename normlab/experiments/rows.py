"""The records the analyses read back, declared once: for each instrument, its name (the spec's "name" in a run's
config, and the "hook" of its rows in diagnostics.jsonl) and the row fields the experiments read, with the layout of
the nested ones. An experiment builds its instrument specs and reads its rows through these declarations, so the
name is written once and a row that lacks a declared field is a clear error instead of a KeyError deep in analyze().

    >>> PROBE.spec(layers=["3"], every=10)
    {'name': 'probe', 'layers': ['3'], 'every': 10}
    >>> DISTRIBUTIONS.check({"hook": "distributions", "step": 0, "layer": "9"})
    Traceback (most recent call last):
    ...
    ValueError: records: a 'distributions' row lacks the field(s) ['percentiles', 'hist'] declared in experiments/rows.py
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .base import Result


@dataclass(frozen=True)
class Rows:
    """The rows one instrument writes: `hook` names it; `fields` are the keys every finite row carries (rows with
    "finite": false, a record the instrument could not compute, are kept but not checked)."""

    hook: str
    fields: tuple[str, ...]

    def spec(self, **kw: Any) -> dict:
        """The instrument spec for a run's config (part of its hash)."""
        return {"name": self.hook, **kw}

    def check(self, row: dict) -> dict:
        """`row`, after checking that a finite one carries every declared field."""
        missing = [f for f in self.fields if f not in row]
        if missing and row.get("finite", True):
            raise ValueError(f"records: a {self.hook!r} row lacks the field(s) {missing} declared in "
                             f"experiments/rows.py")
        return row

    def where(self, layer: str | None = None, finite: bool = False) -> Callable[[dict], bool]:
        """The predicate selecting this hook's rows (of one layer; only the finite ones), for common.curve."""
        return lambda row: (row.get("hook") == self.hook and (layer is None or row.get("layer") == layer)
                            and (not finite or row.get("finite", True)))

    def of(self, result: Result, layer: str | None = None, finite: bool = False) -> list[dict]:
        """This hook's diagnostics rows of one run (of one layer; only the finite ones), in step order."""
        keep = self.where(layer, finite)
        return [self.check(row) for row in result.diagnostics if keep(row)]


# normlab.diagnostics.DistributionsHook: percentiles {"15": [value per unit], ...}; hist {"edges": [B + 1],
# "counts": [B]} over the layer's values.
DISTRIBUTIONS = Rows("distributions", ("step", "layer", "percentiles", "hist"))
# experiments/instruments.py: per-unit moments of a module's output on a fixed probe batch: mean, var [C].
PROBE = Rows("probe", ("step", "layer", "mean", "var"))
# experiments/instruments.py: training accuracy and loss on the step's batch, in train mode.
BATCH_ACC = Rows("batch-acc", ("step", "acc", "loss"))
# normlab.diagnostics.ICSHook (Santurkar Definition 2.1): ||G - G'||, ||G - G'|| / ||G||, cos(G, G').
ICS = Rows("ics", ("step", "layer", "l2", "rel_l2", "cos"))
# normlab.diagnostics.LandscapeHook: loss_range [min, max] along the gradient, loss0, ||g||, max ||Δ grad||, β.
LANDSCAPE = Rows("landscape", ("step", "loss0", "loss_range", "grad_norm", "pred_max", "beta_max"))
# normlab.diagnostics.BoundHook (Theorem 4.1), one row per BN layer.
BOUND = Rows("bound", ("step", "layer", "lhs", "rhs_theorem", "identity_err", "identity_holds", "bound_holds",
                       "shrink_mean", "removed_frac", "grad_ratio"))
# normlab.diagnostics.SpectrumHook: top [k] eigenvalues, trace (Hutch++), dim (P parameters), converged (Lanczos).
SPECTRUM = Rows("spectrum", ("step", "top", "trace", "dim", "converged"))
# experiments/instruments.py EvalModes: test accuracy/loss with EMA, PreciseBN and batch statistics.
EVAL_MODES = Rows("eval-modes", ("step", "ema_acc", "precise_acc", "batch_acc", "ema_loss", "precise_loss",
                                 "batch_loss", "batch"))


def percentile(row: dict, q: str, unit: int = 0) -> float:
    """The q-th percentile ("15", "50", "85") of unit `unit` in a DISTRIBUTIONS row."""
    return row["percentiles"][q][unit]
