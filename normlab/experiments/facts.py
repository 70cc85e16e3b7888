"""What the report says about runs, computed from their records only (SPEC §2: "every sentence of the report about a
run is computed from its records"): data, sizes, steps, batch, epochs, samples seen, seeds."""
from __future__ import annotations

from typing import Sequence

from .base import Result


def _n(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}"


def run_facts(results: Sequence[Result]) -> list[str]:
    """One sentence per distinct (dataset, training set, steps, batch) among `results`, naming the groups and seeds."""
    rows: dict[tuple, dict] = {}
    for r in results:
        s, cfg = r.summary, r.run.config.get("train", {})
        if not cfg:
            continue
        steps, batch = int(s.get("steps_done", cfg.get("steps", 0)) or 0), int(cfg.get("batch_size", 0))
        key = (s.get("dataset", cfg.get("dataset")), s.get("train_size"), s.get("test_size"),
               cfg.get("eval_samples"), int(cfg.get("steps", 0)), batch, cfg.get("model"))
        d = rows.setdefault(key, {"groups": [], "seeds": set(), "done": []})
        if r.run.group not in d["groups"]:
            d["groups"].append(r.run.group)
        d["seeds"].add(r.run.seed)
        d["done"].append(steps)
    out = []
    for (ds, ntrain, ntest, ev, steps, batch, model), d in rows.items():
        size = f"{ntrain:,} training images" if ntrain else "training set size not recorded"
        if ds == "synthetic-linear":
            size = f"{ntrain:,} generated samples" if ntrain else "generated samples"
        test = (f", accuracy on {min(ev, ntest or ev):,} of {ntest:,} test images" if ev and ntest else
                f", accuracy on {ev:,} test images" if ev else
                f", accuracy on all {ntest:,} test images" if ntest else "")
        if ds == "synthetic-linear":
            test = ""
        epochs = f" = {_n(steps * batch / ntrain)} epochs" if ntrain else ""
        short = [x for x in d["done"] if x < steps]
        stopped = f" ({len(short)} run(s) stopped early)" if short else ""
        seeds = sorted(d["seeds"])
        out.append(f"{model} on {ds} ({size}{test}): {steps:,} steps of batch {batch}{epochs}, "
                   f"{steps * batch:,} samples seen per run{stopped}; seeds {seeds}; runs: {', '.join(d['groups'])}")
    return out


def finish(exp, scale, results: Sequence[Result], outcome):
    """The report's facts for one analysed experiment: (outcome, extras). When a stand-in dataset replaced the scale's
    and the experiment declares it unfit, every part becomes undecidable; a banner says which data stood in."""
    from .verdict import Precondition, combine, guard
    extras = {"facts": run_facts(results), "banner": ""}
    fb = exp.fallback(scale)
    if fb:
        declared, used = fb
        extras["banner"] = (f"{declared} is not available here: {used} stood in for it (install it, e.g. `apt-get "
                            f"install dataset-fashion-mnist`, and rerun).")
        if used in exp.unfit_fallbacks:
            pre = Precondition("dataset fit for the claim", False, f"{used} stood in for {declared}, and this "
                               f"experiment cannot decide its claim on {used}", f"with {declared} installed")
            outcome.checks = [guard(p, [pre]) for p in outcome.checks]
            outcome.verdict = combine(outcome.verdict.claim, outcome.checks)
            outcome.preconditions = list(outcome.preconditions) + [pre.to_json()]
    return outcome, extras
