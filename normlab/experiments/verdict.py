"""Verdict rules (SPEC §2 "Verdicts"): supported / not supported / inconclusive, from per-seed numbers.

The spread of a variant is the range [min, max] of its per-seed values: with 3 seeds this is the plainest honest
reading of "the spreads overlap". Every rule returns a `Verdict` whose `value` is the deciding number and whose
`deciding` sentence shows both means with their ranges.

* `greater(a, b)`: the claim "a is larger than b". Supported when min(a) > max(b), not supported when max(a) < min(b),
  inconclusive when the ranges overlap. The deciding number is mean(a) - mean(b) (or the ratio, `ratio=True`).
* `similar(groups, tol)`: the claim "these are about the same" (within `tol`, stated with the claim before any run).
  Supported when even the worst case max(max) - min(min) is <= tol; not supported when even the best case
  max(min) - min(max) exceeds tol; otherwise inconclusive.
* `all_of(claim, verdicts)`: supported when every part is, not supported when any part is not, else inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .base import Verdict, finite


@dataclass(frozen=True)
class Stat:
    """Mean and range over seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    def text(self, fmt: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
        f = lambda v: format(v * scale, fmt)  # noqa: E731
        return f"{f(self.mean)}{unit} [{f(self.lo)}, {f(self.hi)}]"


def stat(values: Sequence[float]) -> Stat:
    """Mean, min and max of the finite values (NaN/inf, e.g. from a diverged run, are dropped; n counts the rest)."""
    v = finite(values)
    if not v:
        return Stat(math.nan, math.nan, math.nan, 0)
    return Stat(sum(v) / len(v), min(v), max(v), len(v))


def _missing(claim: str, names: Sequence[str], stats: Sequence[Stat]) -> Verdict | None:
    empty = [n for n, s in zip(names, stats) if s.n == 0]
    if empty:
        return Verdict(claim, "inconclusive", math.nan, f"no finite values for {', '.join(empty)}",
                       "every seed diverged or produced no record")
    return None


def greater(claim: str, a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], *, fmt: str = ".3g",
            scale: float = 1.0, unit: str = "", ratio: bool = False) -> Verdict:
    """Claim: a > b over seeds. `scale`/`unit` only change the printed numbers (e.g. 100, "%")."""
    return _compare(claim, a_name, a, b_name, b, +1, fmt, scale, unit, ratio)


def less(claim: str, a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], *, fmt: str = ".3g",
         scale: float = 1.0, unit: str = "", ratio: bool = False) -> Verdict:
    """Claim: a < b over seeds."""
    return _compare(claim, a_name, a, b_name, b, -1, fmt, scale, unit, ratio)


def _compare(claim: str, a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], sign: int, fmt: str,
             scale: float, unit: str, ratio: bool) -> Verdict:
    sa, sb = stat(a), stat(b)
    miss = _missing(claim, [a_name, b_name], [sa, sb])
    if miss:
        return miss
    if sa.lo > sb.hi:
        outcome = "supported" if sign > 0 else "not supported"
    elif sa.hi < sb.lo:
        outcome = "supported" if sign < 0 else "not supported"
    else:
        outcome = "inconclusive"
    if ratio:
        value = sa.mean / sb.mean if sb.mean != 0 else math.inf
        shown = f"ratio {value:.3g}x"
        diff = shown
    else:
        value = sa.mean - sb.mean
        shown = f"{value * scale:+{fmt}}{unit}"
        diff = f"difference {shown}"
    why = "ranges overlap" if outcome == "inconclusive" else "ranges separated"
    text = (f"{a_name} {sa.text(fmt, scale, unit)} vs {b_name} {sb.text(fmt, scale, unit)}: {diff} ({why}; "
            f"n={sa.n}/{sb.n} seeds)")
    return Verdict(claim, outcome, value, text, shown=f"{a_name} − {b_name}: {shown}" if not ratio
                   else f"{a_name} / {b_name}: {shown}")


def similar(claim: str, groups: dict[str, Sequence[float]], tol: float, *, fmt: str = ".3g", scale: float = 1.0,
            unit: str = "") -> Verdict:
    """Claim: the groups' values agree within `tol` (in the values' own units, before `scale`)."""
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    if len(groups) < 2:
        raise ValueError(f"groups: expected at least 2 groups to compare, got {len(groups)}")
    stats = {k: stat(v) for k, v in groups.items()}
    miss = _missing(claim, list(stats), list(stats.values()))
    if miss:
        return miss
    worst = max(s.hi for s in stats.values()) - min(s.lo for s in stats.values())
    best = max(s.lo for s in stats.values()) - min(s.hi for s in stats.values())
    means = [s.mean for s in stats.values()]
    spread = max(means) - min(means)
    if worst <= tol:
        outcome = "supported"
    elif best > tol:
        outcome = "not supported"
    else:
        outcome = "inconclusive"
    parts = "; ".join(f"{k} {s.text(fmt, scale, unit)}" for k, s in stats.items())
    text = (f"{parts}: means differ by {spread * scale:{fmt}}{unit} (tolerance {tol * scale:{fmt}}{unit}; "
            f"worst case {worst * scale:{fmt}}{unit}, best case {max(best, 0) * scale:{fmt}}{unit})")
    return Verdict(claim, outcome, spread, text, shown=f"spread {spread * scale:{fmt}}{unit} "
                                                      f"(tol {tol * scale:{fmt}}{unit})")


def all_of(claim: str, verdicts: Sequence[Verdict]) -> Verdict:
    """Combine the parts of a claim; the deciding part is the first 'not supported', else the first 'inconclusive'."""
    if not verdicts:
        raise ValueError("verdicts: expected at least one part")
    for outcome in ("not supported", "inconclusive"):
        for v in verdicts:
            if v.outcome == outcome:
                return Verdict(claim, outcome, v.value, f"{v.claim} — {v.deciding}", v.note, v.shown)
    first = verdicts[0]
    return Verdict(claim, "supported", first.value, f"all {len(verdicts)} parts supported; e.g. {first.claim} — "
                   f"{first.deciding}", shown=first.shown)


def undecidable(claim: str, why: str) -> Verdict:
    """The quick scale cannot decide this claim (said plainly in the report)."""
    return Verdict(claim, "inconclusive", math.nan, why, "not decidable at this scale")
