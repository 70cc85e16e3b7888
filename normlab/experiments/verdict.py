"""Decision rules (SPEC §2 "Verdicts"), fixed before the data: a `Rule` per part of a claim, decided on per-seed
numbers by an interval for the (paired) difference.

A rule names the quantity measured on every seed, the claimed direction ("greater", "less", or "similar" for a claim
of "about the same"), a minimum effect of interest δ in the quantity's own units (a factor for `log` rules, which
compare log10 of the values, i.e. ratios), the reason for δ, and whether the part is *core* (decides the headline) or a
side part (shown with its own verdict).

Interval: the 95% two-sided Student-t interval of the mean difference d. Runs that share a seed (same init and data
order) are paired, d_i = a_i − b_i over the seeds both have; against a fixed reference value it is a one-sample
interval. With the difference oriented so that positive is the claimed direction:
  * greater / less — *supported* when the interval lies above +δ, *not supported* when it lies below −δ (the
    opposite effect, at least as large), *inconclusive* otherwise (including an interval inside ±δ: no effect of
    interest either way, said as such);
  * similar — *supported* when the interval lies inside ±δ, *not supported* when it lies wholly outside, otherwise
    *inconclusive*;
  * at_most — the claim "a is not larger than b by δ or more" (e.g. "BN does not reduce ICS"): *supported* when the
    interval lies below +δ, *not supported* when it lies above +δ, otherwise *inconclusive*.
Under no true effect the chance of "supported" (or "not supported") is at most 2.5% per part (tests/test_verdict.py
measures it). `combine` makes the headline from the core parts; `Precondition`s that fail make the parts they guard
*undecidable at this scale*, with the reason and the scale that would decide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from .base import Verdict

LEVEL = 0.95
DIRECTIONS = ("greater", "less", "similar", "at_most")


# ------------------------------------------------------------------------------------------------------ t quantiles
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lfront = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(lfront) if lfront > -745 else 0.0
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf; 1e-10 absolute)."""
    if not (0.0 < p < 1.0) or df <= 0:
        raise ValueError(f"t_quantile: expected 0 < p < 1 and df > 0, got p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    """One part of a claim and how it is decided, written before any run.

    key: short id of the part (preconditions name the parts they guard by it).
    claim: the part in words. quantity: what is measured per seed, with its unit.
    direction: "greater" (a > b), "less" (a < b), "similar" (|a − b| within δ) or "at_most" (a − b below δ).
    min_effect: δ in the quantity's units; for `log` rules a factor > 1 (δ = log10 of it).
    why: the reason for δ. core: whether the part decides the headline.
    scale/unit/fmt: how numbers are printed (e.g. 100, "%", ".2f"); they never change a decision.
    paper: the paper's own number for this part, at its scale (shown beside ours; never used to decide).
    """

    key: str
    claim: str
    quantity: str
    direction: str
    min_effect: float
    why: str
    core: bool = True
    log: bool = False
    scale: float = 1.0
    unit: str = ""
    fmt: str = ".3g"
    paper: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {self.direction!r}")
        if not (isinstance(self.min_effect, (int, float)) and math.isfinite(self.min_effect)):
            raise ValueError(f"min_effect: expected a finite number, got {self.min_effect!r}")
        if self.log and self.min_effect <= 1:
            raise ValueError(f"min_effect: a log rule takes a factor > 1, got {self.min_effect!r}")
        if not self.log and self.min_effect < 0:
            raise ValueError(f"min_effect: expected a number >= 0, got {self.min_effect!r}")

    @property
    def delta(self) -> float:
        """δ on the scale the difference is taken on (log10 for log rules)."""
        return math.log10(self.min_effect) if self.log else float(self.min_effect)

    def effect_text(self) -> str:
        if self.log:
            return f"{self.min_effect:g}x"
        return f"{self.min_effect * self.scale:{self.fmt}}{self.unit}"

    def text(self) -> str:
        """The rule in words, as the report prints it."""
        what = {"greater": "greater by at least", "less": "smaller by at least", "similar": "the same within",
                "at_most": "not greater by"}[self.direction]
        kind = "ratio" if self.log else "difference"
        return (f"{self.quantity}: {kind} {what} {self.effect_text()} ({self.why}); paired 95% t interval over "
                f"seeds")


@dataclass(frozen=True)
class Interval:
    """Mean difference d (on the rule's scale) and its 95% t interval over n (paired) seeds."""

    mean: float
    lo: float
    hi: float
    n: int


def interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """t interval of the mean of `diffs` (finite values only); n < 2 gives an infinite interval."""
    d = [float(v) for v in diffs if v is not None and math.isfinite(float(v))]
    n = len(d)
    if n == 0:
        return Interval(math.nan, -math.inf, math.inf, 0)
    m = sum(d) / n
    if n < 2:
        return Interval(m, -math.inf, math.inf, 1)
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def _values(rule: Rule, v: Mapping[int, float]) -> dict[int, float]:
    """Finite values by seed, log10 for log rules (a non-positive value cannot enter a ratio: dropped)."""
    out = {}
    for seed, x in v.items():
        if x is None or not math.isfinite(float(x)):
            continue
        if rule.log:
            if x <= 0:
                continue
            x = math.log10(x)
        out[int(seed)] = float(x)
    return out


def _show(rule: Rule, x: float) -> str:
    if rule.log:
        return f"{10 ** x:.3g}x"
    return f"{x * rule.scale:+{rule.fmt}}{rule.unit}"


def _outcome(rule: Rule, iv: Interval) -> tuple[str, str]:
    sign = -1.0 if rule.direction == "less" else 1.0
    lo, hi = sorted((sign * iv.lo, sign * iv.hi))
    dl = rule.delta
    if iv.n < 2:
        return "inconclusive", f"only {iv.n} usable seed(s); an interval needs 2"
    if rule.direction == "similar":
        if -dl < iv.lo and iv.hi < dl:
            return "supported", f"the interval lies inside ±{rule.effect_text()}"
        if iv.lo > dl or iv.hi < -dl:
            return "not supported", f"the interval lies outside ±{rule.effect_text()}"
        return "inconclusive", f"the interval crosses ±{rule.effect_text()}"
    if rule.direction == "at_most":
        if iv.hi < dl:
            return "supported", f"the interval lies below +{rule.effect_text()}"
        if iv.lo > dl:
            return "not supported", f"the interval lies above +{rule.effect_text()}"
        return "inconclusive", f"the interval crosses +{rule.effect_text()}"
    if lo > dl:
        return "supported", f"the interval clears the minimum effect {rule.effect_text()} in the claimed direction"
    if hi < -dl:
        return "not supported", f"the interval clears the minimum effect {rule.effect_text()} the other way"
    if -dl < lo and hi < dl:
        return "inconclusive", f"the interval lies inside ±{rule.effect_text()}: no effect of interest either way"
    return "inconclusive", f"the interval includes differences smaller than the minimum effect {rule.effect_text()}"


def decide(rule: Rule, a_name: str, a: Mapping[int, float], b_name: str, b: Mapping[int, float] | float) -> Verdict:
    """Decide `rule` on per-seed values a (and b, paired by seed; or a fixed reference number b)."""
    va = _values(rule, a)
    if isinstance(b, Mapping):
        vb = _values(rule, b)
        seeds = sorted(set(va) & set(vb))
        diffs = [va[s] - vb[s] for s in seeds]
        how = f"paired over seeds {seeds}" if seeds else "no seed has both values"
    else:
        ref = math.log10(b) if rule.log else float(b)
        seeds = sorted(va)
        diffs = [va[s] - ref for s in seeds]
        how = f"against the fixed value {b:g}, seeds {seeds}"
    iv = interval(diffs)
    outcome, why = _outcome(rule, iv)
    kind = f"{a_name} / {b_name}" if rule.log else f"{a_name} − {b_name}"
    shown = f"{kind}: {_show(rule, iv.mean)}" if iv.n else f"{kind}: —"
    ci = f"[{_show(rule, iv.lo)}, {_show(rule, iv.hi)}]" if iv.n >= 2 else "[—]"
    text = f"{kind} = {_show(rule, iv.mean) if iv.n else '—'}, 95% CI {ci} (n={iv.n}, {how}); {why}"
    return Verdict(rule.claim, outcome, iv.mean, text, shown=f"{shown} {ci}", key=rule.key, core=rule.core,
                   interval=[iv.lo, iv.hi], n=iv.n, min_effect=rule.effect_text(), rule=rule.text(),
                   paper=rule.paper)


def similar_all(rule: Rule, groups: Mapping[str, Mapping[int, float]], ref: str) -> Verdict:
    """A "similar" rule over several groups: each group against `ref` (paired); supported when every pair is within
    δ, not supported when any pair is wholly outside it, else inconclusive. The widest pair is shown."""
    if rule.direction != "similar":
        raise ValueError(f"rule: similar_all needs a 'similar' rule, got {rule.direction!r}")
    if ref not in groups or len(groups) < 2:
        raise ValueError(f"groups: expected {ref!r} and at least one other group, got {sorted(groups)}")
    parts = [decide(rule, k, v, ref, groups[ref]) for k, v in groups.items() if k != ref]
    outs = {p.outcome for p in parts}
    outcome = ("not supported" if "not supported" in outs else "supported" if outs == {"supported"}
               else "inconclusive")
    worst = max(parts, key=lambda p: -1 if not math.isfinite(p.value) else abs(p.value))
    los = [p.interval[0] for p in parts]
    his = [p.interval[1] for p in parts]
    text = "; ".join(p.deciding.split("; ")[0] for p in parts)
    return Verdict(rule.claim, outcome, worst.value, f"{text}; " + worst.deciding.split("; ")[-1], shown=worst.shown,
                   key=rule.key, core=rule.core, interval=[min(los), max(his)], n=min(p.n for p in parts),
                   min_effect=rule.effect_text(), rule=rule.text(), paper=rule.paper)


# ----------------------------------------------------------------------------------------------------- preconditions
@dataclass(frozen=True)
class Precondition:
    """A stated condition the data must meet for some parts (or all: parts=()) to be decidable at this scale."""

    name: str
    ok: bool
    detail: str
    decide_at: str = ""          # the scale that would decide it
    parts: tuple[str, ...] = ()  # rule keys it guards; () = every part

    def to_json(self) -> dict:
        return {"name": self.name, "ok": bool(self.ok), "detail": self.detail, "decide_at": self.decide_at,
                "parts": list(self.parts)}


def guard(part: Verdict, preconditions: Sequence[Precondition]) -> Verdict:
    """`part` made undecidable when a precondition that guards it failed (its numbers stay in the text)."""
    failed = [p for p in preconditions if not p.ok and (not p.parts or part.key in p.parts)]
    if not failed:
        return part
    names = ", ".join(f"'{p.name}'" for p in failed)
    at = "; ".join(p.decide_at for p in failed if p.decide_at)
    return Verdict(part.claim, "undecidable", part.value, f"precondition {names} failed (see Preconditions). "
                   f"Measured anyway: {part.deciding}", note=(f"would be decided at: {at}" if at else ""),
                   shown=part.shown,
                   key=part.key, core=part.core, interval=part.interval, n=part.n, min_effect=part.min_effect,
                   rule=part.rule, paper=part.paper)


ORDER = ("not supported", "undecidable", "inconclusive", "supported")


def combine(claim: str, parts: Sequence[Verdict]) -> Verdict:
    """The headline from the core parts: not supported if any core part is, else undecidable if any is, else
    inconclusive if any is, else supported. Side parts never decide it; the sentence counts "k of n parts"."""
    if not parts:
        raise ValueError("parts: expected at least one part")
    core = [p for p in parts if p.core] or list(parts)
    outcome = next(o for o in ORDER if any(p.outcome == o for p in core) or o == "supported")
    k = sum(p.outcome == "supported" for p in parts)
    kc = sum(p.outcome == "supported" for p in core)
    lead = next((p for p in core if p.outcome == outcome), core[0])
    counts = f"{kc} of {len(core)} core part(s) supported; {k} of {len(parts)} parts in all"
    return Verdict(claim, outcome, lead.value, f"{counts}. Deciding part: {lead.claim} — {lead.deciding}",
                   note=lead.note, shown=lead.shown, key="headline", core=True, interval=lead.interval, n=lead.n,
                   min_effect=lead.min_effect, rule=lead.rule, parts_supported=[k, len(parts)],
                   core_supported=[kc, len(core)])


def holds(key: str, claim: str, ok: int, total: int, worst: str, core: bool = True) -> Verdict:
    """A statement checked in every record (an identity or a theorem's inequality on each (layer, step, seed)):
    supported when it holds in all of them, not supported when it fails in any; no records is inconclusive."""
    if total == 0:
        return Verdict(claim, "inconclusive", math.nan, "no records (0 checked)", key=key, core=core)
    outcome = "supported" if ok == total else "not supported"
    return Verdict(claim, outcome, ok / total, f"holds in {ok}/{total} records; {worst}", shown=f"{ok}/{total} hold",
                   key=key, core=core, n=total, rule="checked in every record (a mathematical statement: one failure "
                   "refutes it)")
