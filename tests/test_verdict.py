"""The decision rules on synthetic per-seed numbers whose truth is known (SPEC §2 "Verdicts")."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from normlab.experiments import base
from normlab.experiments.base import Result, Run
from normlab.experiments.judge import Judge, converged, degenerate
from normlab.experiments.verdict import Rule, combine, decide, guard, Precondition, similar_all, t_quantile

GREATER = Rule("g", "a is larger", "value", "greater", 0.5, "half a unit matters")
SIMILAR = Rule("s", "a and b agree", "value", "similar", 1.0, "one unit is noise")


@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantiles_match_the_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)


def _trial(rng: random.Random, rule: Rule, effect: float, n: int = 5, sd: float = 1.0) -> str:
    """One experiment: n paired seeds; the seed effect is shared by a and b (that is what pairing removes)."""
    a, b = {}, {}
    for s in range(n):
        shared = rng.gauss(0, 3)
        a[s], b[s] = shared + effect + rng.gauss(0, sd), shared + rng.gauss(0, sd)
    return decide(rule, "a", a, "b", b).outcome


def _rates(rule: Rule, effect: float, trials: int = 2000, **kw) -> dict[str, float]:
    rng = random.Random(1234)
    out = [_trial(rng, rule, effect, **kw) for _ in range(trials)]
    return {o: out.count(o) / trials for o in ("supported", "not supported", "inconclusive")}


def test_no_effect_is_inconclusive_at_the_stated_rate():
    # a claimed effect that is absent: "supported" and "not supported" each at most 2.5% (the t interval's tail;
    # with delta > 0 far less), "inconclusive" at least 95%
    r = _rates(GREATER, 0.0)
    assert r["supported"] <= 0.025 and r["not supported"] <= 0.025 and r["inconclusive"] >= 0.95
    # with delta = 0 the rule is a plain two-sided 5% test: about 2.5% each way (binomial sd 0.35% at 2000 trials)
    r0 = _rates(Rule("z", "c", "q", "greater", 0.0, "any"), 0.0)
    assert 0.012 <= r0["supported"] <= 0.04 and 0.012 <= r0["not supported"] <= 0.04


def test_a_large_effect_is_supported_and_its_mirror_not_supported():
    assert _rates(GREATER, 5.0)["supported"] >= 0.95   # 3.5 sd of a paired difference
    assert _rates(GREATER, -5.0)["not supported"] >= 0.95
    less = Rule("l", "a is smaller", "value", "less", 0.5, "x")
    assert _rates(less, -5.0)["supported"] >= 0.95


def test_pairing_removes_the_shared_seed_effect():
    # the seed effect (sd 3) swamps the true difference (1.0) between groups, but not within pairs
    a = {s: 10.0 * s + 1.0 for s in range(5)}
    b = {s: 10.0 * s for s in range(5)}
    v = decide(GREATER, "a", a, "b", b)
    assert v.outcome == "supported" and v.value == pytest.approx(1.0) and v.interval == pytest.approx([1.0, 1.0])
    assert v.n == 5 and "paired over seeds [0, 1, 2, 3, 4]" in v.deciding and "0.5" in v.min_effect


def test_interval_matches_a_hand_computation():
    d = [0.9, 1.4, 0.6, 1.1]             # mean 1.0, sd 0.3367
    v = decide(GREATER, "a", {i: x for i, x in enumerate(d)}, "b", 0.0)
    half = 3.1824 * 0.336650 / 2.0
    assert v.interval == pytest.approx([1.0 - half, 1.0 + half], abs=1e-3)
    assert v.outcome == "inconclusive"   # the interval reaches below the minimum effect 0.5


def test_similar_rule_and_its_groups():
    assert _rates(SIMILAR, 0.0, sd=0.2)["supported"] >= 0.95
    assert _rates(SIMILAR, 5.0, sd=0.3)["not supported"] >= 0.95
    g = {"ref": {0: 1.0, 1: 2.0, 2: 3.0}, "x": {0: 1.1, 1: 2.0, 2: 3.1}, "y": {0: 9.0, 1: 9.5, 2: 10.0}}
    assert similar_all(SIMILAR, {k: g[k] for k in ("ref", "x")}, "ref").outcome == "supported"
    assert similar_all(SIMILAR, g, "ref").outcome == "not supported"


def test_log_rule_compares_ratios():
    rule = Rule("r", "a is smaller", "beta", "less", 2.0, "a factor of 2", log=True)
    v = decide(rule, "BN", {0: 1.0, 1: 1.1, 2: 0.9}, "none", {0: 100.0, 1: 120.0, 2: 90.0})
    assert v.outcome == "supported" and 10 ** v.value == pytest.approx((1 / 100 * 1.1 / 120 * 0.9 / 90) ** (1 / 3)) and "x" in v.shown
    with pytest.raises(ValueError, match="min_effect: a log rule takes a factor > 1"):
        Rule("r", "c", "q", "less", 0.5, "x", log=True)
    with pytest.raises(ValueError, match="direction: expected one of"):
        Rule("r", "c", "q", "bigger", 0.5, "x")


def test_too_few_seeds_and_nonfinite_values():
    v = decide(GREATER, "a", {0: 5.0, 1: math.nan}, "b", {0: 1.0, 1: 1.0})
    assert v.outcome == "inconclusive" and v.n == 1 and "an interval needs 2" in v.deciding


def test_failed_precondition_makes_its_parts_undecidable():
    p = decide(GREATER, "a", {0: 5.0, 1: 6.0, 2: 5.5}, "b", {0: 1.0, 1: 1.0, 2: 1.2})
    assert p.outcome == "supported"
    pre = Precondition("converged", False, "loss still falling 20%", "5x the steps", parts=("g",))
    g = guard(p, [pre])
    assert g.outcome == "undecidable" and "'converged' failed" in g.deciding and "5x the steps" in g.note
    assert guard(p, [Precondition("other", False, "x", parts=("zzz",))]).outcome == "supported"
    assert combine("claim", [g]).outcome == "undecidable"


def test_headline_comes_from_core_parts_only():
    core = decide(GREATER, "a", {0: 5.0, 1: 6.0, 2: 5.5}, "b", {0: 1.0, 1: 1.0, 2: 1.2})
    side_rule = Rule("side", "a side part", "v", "greater", 0.5, "x", core=False)
    side = decide(side_rule, "a", {0: 0.0, 1: 0.1, 2: 0.0}, "b", {0: 5.0, 1: 5.0, 2: 5.1})
    assert side.outcome == "not supported"
    h = combine("claim", [core, side])
    assert h.outcome == "supported" and h.core_supported == [1, 1] and h.parts_supported == [1, 2]
    assert "1 of 1 core part(s) supported; 1 of 2 parts in all" in h.deciding
    inc = decide(GREATER, "a", {0: 1.0, 1: 3.0, 2: 0.0}, "b", {0: 1.0, 1: 1.0, 2: 1.0})
    assert combine("c", [core, inc]).outcome == "inconclusive"
    assert combine("c", [inc, decide(GREATER, "a", {0: 0, 1: 0, 2: 0.1}, "b", {0: 5, 1: 5, 2: 5})]).outcome \
        == "not supported"


def _run(tmp: Path, group: str, seed: int, acc: float, losses: list[float], diverged=None) -> Result:
    d = tmp / f"{group}-{seed}"
    d.mkdir(parents=True)
    rows = [{"step": 100 * i, "train_loss": v, "test_acc": acc} for i, v in enumerate(losses)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"procedure": "train", "train": {"dataset": "mnist"}}
    return Result(Run("t", group, seed, cfg), d, {"diverged_at": diverged, "test_acc": acc})


def test_collapsed_seed_is_left_out_and_reported(tmp_path):
    runs = [_run(tmp_path, "bn", s, 0.97 + 0.001 * s, [2.3, 0.5, 0.2]) for s in range(4)]
    runs.append(_run(tmp_path, "bn", 4, 0.098, [2.3, 2.3, 2.3]))          # collapsed to chance
    runs += [_run(tmp_path, "none", s, 0.90 + 0.001 * s, [2.3, 0.9, 0.5]) for s in range(5)]
    assert degenerate(runs[4]).startswith("collapsed: final test accuracy 9.8%")
    assert degenerate(_run(tmp_path, "x", 0, 0.5, [1.0, 1.2])).startswith("stuck")
    assert degenerate(_run(tmp_path, "y", 0, 0.5, [1.0, 0.5], diverged=7)) == "diverged at step 7"
    j = Judge(runs)
    acc = {g: j.per_seed(g, lambda r: r.summary["test_acc"]) for g in ("bn", "none")}
    assert sorted(acc["bn"]) == [0, 1, 2, 3]
    j.decide(Rule("acc", "BN is more accurate", "test acc", "greater", 0.01, "1 point"), "bn", acc["bn"], "none",
             acc["none"])
    out = j.outcome("claim", [{"caption": "Fig."}])
    assert out.verdict.outcome == "supported"
    assert out.excluded == [{"group": "bn", "seed": 4, "why": degenerate(runs[4])}]
    assert "Left out of the statistics: bn seed 4 (collapsed" in out.figures[0]["caption"]


def test_too_many_degenerate_seeds_is_undecidable(tmp_path):
    runs = [_run(tmp_path, "bn", s, 0.1, [2.3, 2.3]) for s in range(2)] + [_run(tmp_path, "bn", 2, 0.9, [2.3, 1])]
    runs += [_run(tmp_path, "none", s, 0.9, [2.3, 1.0]) for s in range(3)]
    j = Judge(runs)
    j.decide(GREATER, "bn", j.per_seed("bn", lambda r: 1.0), "none", j.per_seed("none", lambda r: 0.0))
    out = j.outcome("claim")
    assert out.verdict.outcome == "undecidable" and out.preconditions[0]["ok"] is False
    assert out.preconditions[0]["name"] == "few degenerate seeds in bn"
    assert out.preconditions[0]["detail"].startswith("2 of 3 seeds collapsed or diverged")


def test_degenerate_group_guards_only_the_parts_it_feeds(tmp_path):
    runs = [_run(tmp_path, "bad", s, 0.1, [2.3, 2.3]) for s in range(3)]
    for g in ("x", "y"):
        runs += [_run(tmp_path, g, s, 0.9, [2.3, 1.0]) for s in range(3)]
    j = Judge(runs)
    xs, ys = j.per_seed("x", lambda r: 5.0 + r.run.seed), j.per_seed("y", lambda r: 1.0 + r.run.seed)
    j.decide(GREATER, "x", xs, "y", ys)
    j.decide(Rule("b", "bad vs y", "v", "greater", 0.5, "x"), "bad", j.per_seed("bad", lambda r: 9.0), "y", ys)
    j.decide(Rule("u", "unknown source", "v", "greater", 0.5, "x"), "d", {0: 5.0, 1: 6.0, 2: 5.5}, "y", ys)
    out = j.outcome("claim")
    assert [c.outcome for c in out.checks] == ["supported", "undecidable", "undecidable"]
    assert out.preconditions[0]["parts"] == ["b", "u"]


def test_converged_reads_the_last_tenth(tmp_path):
    r = _run(tmp_path, "a", 0, 0.9, [2.0, 1.0, 0.8, 0.7, 0.6, 0.5, 0.45, 0.42, 0.41, 0.40, 0.36])
    assert converged(r) == pytest.approx((0.40 - 0.36) / 0.40)


def test_verdict_outcomes_are_validated():
    with pytest.raises(ValueError, match="outcome: expected one of"):
        base.Verdict("c", "maybe", 0.0, "x")


def test_at_most_rule():
    rule = Rule("ics", "BN does not reduce ICS", "cos", "at_most", 0.05, "x")
    assert decide(rule, "BN", {0: 0.60, 1: 0.62, 2: 0.61}, "none", {0: 0.63, 1: 0.64, 2: 0.66}).outcome == "supported"
    assert decide(rule, "BN", {0: 0.90, 1: 0.92, 2: 0.91}, "none", {0: 0.63, 1: 0.64, 2: 0.66}).outcome \
        == "not supported"
    assert decide(rule, "BN", {0: 0.60, 1: 0.75, 2: 0.61}, "none", {0: 0.63, 1: 0.64, 2: 0.62}).outcome \
        == "inconclusive"
