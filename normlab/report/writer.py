"""report.md and a self-contained report.html (figures embedded as base64 PNG, inline CSS, no scripts) from
DIR/results/*.json. Reads records only; never runs a model."""
from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from ..records import atomic_write_text
from ..util import duration as _duration
from .figures import draw

VERDICT_RULE = ("Each part of a claim is decided by a rule written in its experiment module before any run: the "
                "quantity, the claimed direction, a minimum effect of interest, and the 95% Student-t interval of the "
                "difference over seeds (paired where runs share a seed). *supported*: the interval clears the "
                "minimum effect in the claimed direction (for 'about the same': lies inside the tolerance); *not "
                "supported*: it clears it the other way (lies outside the tolerance); *inconclusive*: neither; "
                "*undecidable*: a stated precondition failed (runs not converged, the effect the claim depends on "
                "absent in its control, too many collapsed seeds, unfit stand-in data), with the scale that would "
                "decide. The headline comes from the core parts; side parts keep their own verdicts. Runs that "
                "diverged, collapsed to chance or got stuck are left out of the statistics and listed.")
COLORS = {"supported": "#1a7f37", "not supported": "#cf222e", "inconclusive": "#9a6700", "undecidable": "#6e7781"}


def load_results(out: Path) -> list[dict]:
    """Every DIR/results/*.json, in the order of their `order` field, then id."""
    recs = [json.loads(p.read_text()) for p in sorted(Path(out, "results").glob("*.json"))]
    return sorted(recs, key=lambda r: (r.get("order", 999), r["id"]))


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.3g}"


def _shown(v: dict) -> str:
    """The deciding number as the rule printed it (with unit), else the raw value."""
    return v.get("shown") or _num(v["value"])


def _cell(v: object) -> str:
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _parts(v: dict) -> str:
    """'k/n core, k/n all' for a headline verdict ('' for records written before parts existed)."""
    c, a = v.get("core_supported") or [], v.get("parts_supported") or []
    return f"{c[0]}/{c[1]} core, {a[0]}/{a[1]} all" if c and a else ""


def _part_rows(rec: dict) -> list[tuple[str, ...]]:
    """(part, core/side, verdict, estimate [95% CI], paper, min effect, n, evidence) per part of an experiment."""
    return [(c["claim"], "core" if c.get("core", True) else "side", c["outcome"], _shown(c), c.get("paper") or "—",
             c.get("min_effect", ""), str(c.get("n", "")), c["deciding"] + (f" ({c['note']})" if c.get("note") else "")
             + (f" Rule: {c['rule']}" if c.get("rule") else "")) for c in rec["outcome"]["checks"]]


def _preconditions(rec: dict) -> list[str]:
    out = []
    for p in rec["outcome"].get("preconditions", []):
        state = "met" if p["ok"] else "FAILED"
        at = f" Would be decided at: {p['decide_at']}." if not p["ok"] and p.get("decide_at") else ""
        scope = f" (guards: {', '.join(p['parts'])})" if p.get("parts") else " (guards every part)"
        out.append(f"{p['name']}: {state} — {p['detail']}{scope}.{at}")
    return out


def _left_out(rec: dict) -> list[str]:
    return [f"{d['group']} seed {d['seed']}: {d['why']}" for d in rec["outcome"].get("excluded", [])]


def _draw_all(out: Path, recs: list[dict]) -> dict[str, list[tuple[dict, dict]]]:
    figs: dict[str, list[tuple[dict, dict]]] = {}
    for rec in recs:
        figs[rec["id"]] = []
        for spec in rec["outcome"]["figures"]:
            paths = draw(spec, out / "figures", f"{rec['id']}-{spec['name']}")
            figs[rec["id"]].append((spec, paths))
    return figs


def _header(recs: list[dict]) -> dict:
    scales = sorted({r["scale"] for r in recs})
    machines = sorted({r["machine"] for r in recs})
    total = sum(r["compute_s"] for r in recs)
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "scales": ", ".join(scales),
            "machine": "; ".join(machines), "compute": _duration(total), "n": len(recs)}


# ------------------------------------------------------------------------------------------------------------ markdown
def _markdown(recs: list[dict], figs: dict, out: Path) -> str:
    h = _header(recs)
    lines = ["# normlab reproduction report", "",
             f"Generated {h['date']} on {h['machine']}. Scale: {h['scales']}. {h['n']} experiment(s), "
             f"{h['compute']} of run compute in all.", "", "## Verdicts", "",
             "| experiment | source | verdict | parts supported | deciding part: estimate [95% CI] | min effect | "
             "dataset | scale | compute |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        v = r["outcome"]["verdict"]
        lines.append(f"| [{r['id']}](#{r['id']}) | {_md_escape(r['source'])} | **{v['outcome']}** | {_parts(v)} | "
                     f"{_md_escape(_shown(v))} | {_md_escape(v.get('min_effect', ''))} | "
                     f"{_md_escape(r['dataset'])}{' (stand-in)' if r.get('banner') else ''} | {r['scale']} | "
                     f"{_duration(r['compute_s'])} |")
    lines += ["", VERDICT_RULE, ""]
    for r in recs:
        v = r["outcome"]["verdict"]
        lines += [f"<a id=\"{r['id']}\"></a>", f"## {r['id']} — {r['title']}", ""]
        if r.get("banner"):
            lines += [f"> **Data stand-in:** {r['banner']}", ""]
        lines += [f"**Source:** {r['source']}  ", f"**Paper's claim:** {r['claim']}  ",
                  f"**Paper's numbers:** {r['paper_numbers'] or '—'}", "",
                  f"**Verdict: {v['outcome']}** — {v['deciding']}" + (f" ({v['note']})" if v.get("note") else ""),
                  ""]
        rows = _part_rows(r)
        if rows:
            lines += ["| part of the claim | core/side | verdict | ours: estimate [95% CI] | paper | min effect | n | "
                      "evidence |", "|---|---|---|---|---|---|---|---|"]
            lines += ["| " + " | ".join(_md_escape(x) for x in row) + " |" for row in rows]
            lines.append("")
        for title, items in (("Preconditions", _preconditions(r)), ("Left out of the statistics", _left_out(r))):
            if items:
                lines += [f"**{title}:**", ""] + [f"- {x}" for x in items] + [""]
        table = r["outcome"]["table"]
        if table:
            cols = list(dict.fromkeys(k for row in table for k in row))
            lines += ["**Our numbers** (mean [min, max] over seeds):", "", "| " + " | ".join(cols) + " |",
                      "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_md_escape(_cell(row.get(c, ""))) for c in cols) + " |" for row in table]
            lines.append("")
        for spec, paths in figs[r["id"]]:
            rel = paths["png"].relative_to(out)
            lines += [f"![{_md_escape(spec['caption'])}]({rel.as_posix()})", "",
                      f"*{spec['caption']}* ([SVG]({paths['svg'].relative_to(out).as_posix()}))", ""]
        notes = list(r["outcome"]["notes"])
        if v["outcome"] != "supported" and r.get("caveat"):
            notes.append("Where this differs from the paper, the likely reasons: " + r["caveat"])
        if r.get("failed"):
            notes.append("Failed: " + "; ".join(r["failed"]))
        if notes:
            lines += ["**Notes:**", ""] + [f"- {n}" for n in notes] + [""]
        lines += [f"**Paper's setup:** {r['setup']}  ",
                  f"**Dataset used:** {r['dataset']}" + (f" ({'; '.join(r['dataset_source'])})"
                                                          if r['dataset_source'] else "") + "  ",
                  f"**Scale:** {r['scale']}, seeds {r['seeds']}, {r['n_runs']} runs"]
        if r.get("facts"):
            lines += ["", "The runs, from their records:", ""] + [f"- {x}" for x in r["facts"]]
        if r["reductions"]:
            lines += ["", "Reductions from the paper's setup:", ""] + [f"- {x}" for x in r["reductions"]]
        lines += ["", f"**Runtime:** {_duration(r['compute_s'])} of run compute ({r['n_runs']} runs, "
                      f"{r['reused']} reused from earlier); analysed {r['date']}  ",
                  f"**Rerun:** `{r['command']}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------- html
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #d0d7de;padding:.3em .6em;
vertical-align:top}th{background:#f6f8fa;text-align:left}
.v{font-weight:600;white-space:nowrap}img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px}section{border-top:2px solid #d0d7de;margin-top:2em}
.meta{color:#57606a;font-size:.9em}figcaption{font-size:.9em;color:#57606a}
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.5em .8em;border-radius:6px}
"""


def _e(s: object) -> str:
    return html.escape(str(s))


def _badge(outcome: str) -> str:
    return f'<span class="v" style="color:{COLORS.get(outcome, "#000")}">{_e(outcome)}</span>'


def _html(recs: list[dict], figs: dict) -> str:
    h = _header(recs)
    p = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         "<title>normlab reproduction report</title>", f"<style>{CSS}</style></head><body>",
         "<h1>normlab reproduction report</h1>",
         f"<p class=meta>Generated {_e(h['date'])} on {_e(h['machine'])}. Scale: {_e(h['scales'])}. "
         f"{h['n']} experiment(s), {_e(h['compute'])} of run compute in all.</p>",
         "<h2>Verdicts</h2><table><tr><th>experiment</th><th>source</th><th>verdict</th><th>parts supported</th>"
         "<th>deciding part: estimate [95% CI]</th><th>min effect</th><th>dataset</th><th>scale</th>"
         "<th>compute</th></tr>"]
    for r in recs:
        v = r["outcome"]["verdict"]
        p.append(f"<tr><td><a href=\"#{_e(r['id'])}\">{_e(r['id'])}</a></td><td>{_e(r['source'])}</td>"
                 f"<td>{_badge(v['outcome'])}</td><td>{_e(_parts(v))}</td><td>{_e(_shown(v))}</td>"
                 f"<td>{_e(v.get('min_effect', ''))}</td>"
                 f"<td>{_e(r['dataset'])}{' (stand-in)' if r.get('banner') else ''}</td>"
                 f"<td>{_e(r['scale'])}</td><td>{_e(_duration(r['compute_s']))}</td></tr>")
    p += ["</table>", f"<p class=meta>{_e(VERDICT_RULE).replace('*', '')}</p>"]
    for r in recs:
        v = r["outcome"]["verdict"]
        p += [f"<section id=\"{_e(r['id'])}\"><h2>{_e(r['id'])} — {_e(r['title'])}</h2>",
              f"<p class=banner><b>Data stand-in:</b> {_e(r['banner'])}</p>" if r.get("banner") else "",
              f"<p><b>Source:</b> {_e(r['source'])}<br><b>Paper's claim:</b> {_e(r['claim'])}<br>"
              f"<b>Paper's numbers:</b> {_e(r['paper_numbers'] or '—')}</p>",
              f"<p><b>Verdict:</b> {_badge(v['outcome'])} — {_e(v['deciding'])}"
              + (f" <i>({_e(v['note'])})</i>" if v.get("note") else "") + "</p>"]
        rows = _part_rows(r)
        if rows:
            p.append("<table><tr><th>part of the claim</th><th>core/side</th><th>verdict</th>"
                     "<th>ours: estimate [95% CI]</th><th>paper</th><th>min effect</th><th>n</th><th>evidence</th>"
                     "</tr>")
            p += ["<tr>" + "".join(f"<td>{_badge(x) if i == 2 else _e(x)}</td>" for i, x in enumerate(row)) + "</tr>"
                  for row in rows]
            p.append("</table>")
        for title, items in (("Preconditions", _preconditions(r)), ("Left out of the statistics", _left_out(r))):
            if items:
                p.append(f"<p><b>{title}:</b></p><ul>" + "".join(f"<li>{_e(x)}</li>" for x in items) + "</ul>")
        table = r["outcome"]["table"]
        if table:
            cols = list(dict.fromkeys(k for row in table for k in row))
            p.append("<p><b>Our numbers</b> (mean [min, max] over seeds):</p><table><tr>"
                     + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>")
            p += ["<tr>" + "".join(f"<td>{_e(_cell(row.get(c, '')))}</td>" for c in cols) + "</tr>" for row in table]
            p.append("</table>")
        for spec, paths in figs[r["id"]]:
            b64 = base64.b64encode(paths["png"].read_bytes()).decode()
            p.append(f"<figure><img alt=\"{_e(spec['caption'])}\" src=\"data:image/png;base64,{b64}\">"
                     f"<figcaption>{_e(spec['caption'])}</figcaption></figure>")
        notes = list(r["outcome"]["notes"])
        if v["outcome"] != "supported" and r.get("caveat"):
            notes.append("Where this differs from the paper, the likely reasons: " + r["caveat"])
        if r.get("failed"):
            notes.append("Failed: " + "; ".join(r["failed"]))
        if notes:
            p.append("<p><b>Notes:</b></p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
        src = f" ({_e('; '.join(r['dataset_source']))})" if r["dataset_source"] else ""
        p.append(f"<p><b>Paper's setup:</b> {_e(r['setup'])}<br><b>Dataset used:</b> {_e(r['dataset'])}{src}<br>"
                 f"<b>Scale:</b> {_e(r['scale'])}, seeds {_e(r['seeds'])}, {r['n_runs']} runs</p>")
        if r.get("facts"):
            p.append("<p>The runs, from their records:</p><ul>" + "".join(f"<li>{_e(x)}</li>" for x in r["facts"])
                     + "</ul>")
        if r["reductions"]:
            p.append("<p>Reductions from the paper's setup:</p><ul>"
                     + "".join(f"<li>{_e(x)}</li>" for x in r["reductions"]) + "</ul>")
        p.append(f"<p class=meta><b>Runtime:</b> {_e(_duration(r['compute_s']))} of run compute ({r['n_runs']} runs, "
                 f"{r['reused']} reused from earlier); analysed {_e(r['date'])}<br>"
                 f"<b>Rerun:</b> <code>{_e(r['command'])}</code></p></section>")
    p.append("</body></html>")
    return "\n".join(p)


def write_report(out: str | Path) -> dict[str, Path]:
    """Draw every figure and write DIR/report.md and DIR/report.html; returns {"md": path, "html": path}."""
    out = Path(out)
    recs = load_results(out)
    if not recs:
        raise FileNotFoundError(f"out: no results in {out / 'results'}; run `normlab reproduce` first")
    figs = _draw_all(out, recs)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["md"], _markdown(recs, figs, out))
    atomic_write_text(paths["html"], _html(recs, figs))
    return paths
