"""From finished runs to an Outcome: screen out degenerate runs, collect per-seed numbers, decide each part by its
rule, check the preconditions, and hand the report one Outcome.

    j = Judge(results)                                # collapsed / diverged runs are left out and recorded
    bn = j.per_seed(Norm("bn"), lambda r: at_step(r, "test_acc", 5000))   # groups: the runs' variants
    j.decide(SOONER, "BN", bn, "no BN", j.per_seed(Norm("none"), ...))
    j.require("converged", ok, "train loss fell 12% over the last 10% of steps", decide_at="50k steps")
    return j.outcome(claim, figures, table, notes)

Degenerate run (fixed before the data, SPEC §2): a run that diverged (summary["diverged_at"]), a classifier whose
final test accuracy is within 5 points of chance, or a run whose final training loss is still >= 99% of its loss at
step 0 ("stuck"). Such a run is left out of every statistic, counted and named in the report and figure captions; if
more than a third of a group's seeds are left out, the parts decided on that group's numbers (every part, when a
part's numbers do not say where they came from) are undecidable at this scale.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from .base import Outcome, Result, Verdict, variant_name
from .common import groups
from .verdict import Precondition, Rule, combine, decide, guard, holds, similar_all

CHANCE_MARGIN = 0.05   # a final test accuracy within 5 points of chance counts as collapsed
STUCK = 0.99           # a final training loss >= 99% of the step-0 loss counts as stuck


def degenerate(r: Result) -> str:
    """Why run `r` is degenerate ("" when it is not): diverged, collapsed to chance, or stuck loss."""
    s = r.summary
    if s.get("diverged_at") is not None:
        return f"diverged at step {s['diverged_at']}"
    rows = [row for row in r.metrics if row.get("train_loss") is not None]
    acc = s.get("test_acc")
    classes = _classes(r)
    if acc is not None and classes and acc <= 1.0 / classes + CHANCE_MARGIN:
        return f"collapsed: final test accuracy {100 * acc:.1f}% (chance {100 / classes:.0f}%)"
    if len(rows) >= 2 and rows[-1]["train_loss"] >= STUCK * rows[0]["train_loss"]:
        return (f"stuck: final training loss {rows[-1]['train_loss']:.4g} vs {rows[0]['train_loss']:.4g} at step "
                f"{rows[0]['step']}")
    return ""


def _classes(r: Result) -> int:
    """Number of classes of a classification run (10 for the image sets normlab reads), 0 for regression."""
    return 0 if r.run.config.get("train", {}).get("dataset") == "synthetic-linear" else 10


class Judge:
    """Collects the parts and preconditions of one experiment's verdict (see the module docstring)."""

    def __init__(self, results: Sequence[Result], screen: bool = True, max_left_out: float = 1 / 3) -> None:
        self.all = groups(results)
        self.left_out: list[dict] = []
        self.kept: dict[str, list[Result]] = {}
        for g, rs in self.all.items():
            keep = []
            for r in rs:
                why = degenerate(r) if screen else ""
                if why:
                    self.left_out.append({"group": variant_name(g), "seed": r.run.seed, "why": why})
                else:
                    keep.append(r)
            self.kept[g] = keep
        self.parts: list[Verdict] = []
        self.sources: list[set | None] = []   # per part: the groups (variants) its numbers came from (None: unknown)
        self.pre: list[Precondition] = []
        self.bad = {g: len(rs) - len(self.kept[g]) for g, rs in self.all.items()
                    if len(rs) - len(self.kept[g]) > max_left_out * len(rs)}

    def runs(self, group: Any) -> list[Result]:
        """The kept (non-degenerate) runs of variant `group`, by seed."""
        if group not in self.all:
            raise KeyError(f"group: no runs of variant {group!r}; have {[variant_name(g) for g in self.all]}")
        return self.kept[group]

    def per_seed(self, group: Any, fn: Callable[[Result], float]) -> "SeedValues":
        """{seed: fn(run)} over the kept runs of `group`; it remembers the group, so that a part decided on it is
        made undecidable when too many of that group's seeds were left out."""
        return SeedValues({r.run.seed: fn(r) for r in self.runs(group)}, {group})

    def _add(self, v: Verdict, inputs: Sequence) -> Verdict:
        srcs = [getattr(x, "groups", None) for x in inputs if isinstance(x, Mapping)]
        self.parts.append(v)
        self.sources.append(None if any(g is None for g in srcs) else set().union(*srcs))
        return v

    def decide(self, rule: Rule, a_name: str, a: Mapping[int, float], b_name: str,
               b: Mapping[int, float] | float) -> Verdict:
        return self._add(decide(rule, a_name, a, b_name, b), [a, b])

    def similar(self, rule: Rule, named: Mapping[str, Mapping[int, float]], ref: str) -> Verdict:
        return self._add(similar_all(rule, named, ref), list(named.values()))

    def holds(self, key: str, claim: str, ok: int, total: int, worst: str, core: bool = True) -> Verdict:
        v = holds(key, claim, ok, total, worst, core)
        self.parts.append(v)
        return v

    def require(self, name: str, ok: bool, detail: str, decide_at: str = "", parts: Sequence[str] = ()) -> bool:
        """State a precondition; when it fails, the parts it names (all when none) become undecidable."""
        self.pre.append(Precondition(name, bool(ok), detail, decide_at, tuple(parts)))
        return bool(ok)

    def outcome(self, claim: str, figures: list[dict] | None = None, table: list[dict] | None = None,
                notes: list[str] | None = None) -> Outcome:
        pre = list(self.pre)
        for g, k in self.bad.items():   # guards the parts whose numbers came from g (or whose source is unknown)
            keys = tuple(p.key for p, src in zip(self.parts, self.sources) if src is None or g in src)
            pre.append(Precondition(f"few degenerate seeds in {variant_name(g)}", False, f"{k} of {len(self.all[g])} seeds "
                                    f"collapsed or diverged (at most a third may)", "a setup where these runs train "
                                    "(more steps, or another learning rate)", keys or ("-",)))
        self.pre = pre
        parts = [guard(p, pre) for p in self.parts]
        figures = list(figures or [])
        if self.left_out:
            gone = "; ".join(f"{d['group']} seed {d['seed']} ({d['why']})" for d in self.left_out)
            for f in figures:
                f["caption"] = f"{f['caption']} Left out of the statistics: {gone}."
        return Outcome(combine(claim, parts), parts, figures, list(table or []), list(notes or []),
                       [p.to_json() for p in self.pre], list(self.left_out))


class SeedValues(dict):
    """{seed: value} that remembers which run groups it was computed from (Judge.per_seed)."""

    def __init__(self, values: Mapping[int, float], groups: set) -> None:
        super().__init__(values)
        self.groups = set(groups)


def converged(r: Result, frac: float = 0.1, key: str = "train_loss") -> float:
    """Relative fall of `key` over the last `frac` of the run: (L(0.9 T) - L(T)) / L(0.9 T), from the metrics rows
    nearest to those steps (NaN when the run has fewer than two such rows)."""
    rows = [row for row in r.metrics if row.get(key) is not None]
    if len(rows) < 2:
        return math.nan
    end = rows[-1]
    target = end["step"] * (1 - frac)
    mid = min(rows[:-1], key=lambda row: abs(row["step"] - target))
    return (mid[key] - end[key]) / abs(mid[key]) if mid[key] else math.nan
