"""Verdicts of two reproductions side by side, part by part (issue 14, item 9: the fast path against
NORMLAB_FAST=0, or any two runs of the suite). Reads DIR/results/*.json only."""
from __future__ import annotations

from pathlib import Path

from .writer import load_results


def compare(a: str | Path, b: str | Path) -> list[dict]:
    """One row per experiment headline and per part of either reproduction:
    {"exp", "part" ("headline" or the part's key), "a", "b" (outcomes, None where absent), "shown_a", "shown_b",
    "same"}. Raises FileNotFoundError naming the folder that has no results."""
    recs = []
    for d in (a, b):
        r = {x["id"]: x["outcome"] for x in load_results(Path(d))}
        if not r:
            raise FileNotFoundError(f"{d}: no results/*.json; run `normlab reproduce --out {d}` first")
        recs.append(r)
    rows = []
    for exp in list(recs[0]) + [e for e in recs[1] if e not in recs[0]]:
        oa, ob = recs[0].get(exp), recs[1].get(exp)
        parts = {"headline": ((oa or {}).get("verdict"), (ob or {}).get("verdict"))}
        for side, o in enumerate((oa, ob)):
            for c in (o or {}).get("checks", []):
                pair = list(parts.get(c["key"], (None, None)))
                pair[side] = c
                parts[c["key"]] = tuple(pair)
        for key, (x, y) in parts.items():
            out = [None if v is None else v["outcome"] for v in (x, y)]
            rows.append({"exp": exp, "part": key, "a": out[0], "b": out[1],
                         "same": out[0] is not None and out[0] == out[1],
                         "shown_a": (x or {}).get("shown", ""), "shown_b": (y or {}).get("shown", "")})
    return rows


def format_compare(rows: list[dict]) -> str:
    """A plain-text table of compare()'s rows and a last line counting the agreeing headlines and parts."""
    lines = [f"{'experiment':20s} {'part':22s} {'A':14s} {'B':14s}      A | B"]
    for r in rows:
        mark = "ok  " if r["same"] else "DIFF"
        lines.append(f"{r['exp']:20s} {r['part']:22s} {r['a'] or '-':14s} {r['b'] or '-':14s} {mark} "
                     f"{r['shown_a']} | {r['shown_b']}")
    heads = [r for r in rows if r["part"] == "headline"]
    parts = [r for r in rows if r["part"] != "headline"]
    lines.append(f"headlines agreeing: {sum(r['same'] for r in heads)}/{len(heads)}; "
                 f"parts agreeing: {sum(r['same'] for r in parts)}/{len(parts)}")
    return "\n".join(lines)
