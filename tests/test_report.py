"""normlab.report: figure specs, PNG/SVG drawing, report.md and the self-contained report.html (headless Chromium)."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from normlab.experiments import registry, runner
from normlab.report import draw, figure, panel, series, write_report

from test_experiments import Fake

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    runner.reproduce([Fake()], "smoke", out, jobs=1, echo=lambda m: None)
    return out


def test_spec_validation():
    s = series("bn", [0, 1, 2], [0.1, float("inf"), 0.3], lo=[0, 0, 0], hi=[1, 1, 1])
    assert math.isnan(s["y"][1]) and s["key"] == "bn"
    with pytest.raises(ValueError, match="x and y lengths differ"):
        series("bn", [0, 1], [0.1])
    with pytest.raises(ValueError, match="lo has 1 values, x has 2"):
        series("bn", [0, 1], [0.1, 0.2], lo=[0], hi=[1, 1])
    with pytest.raises(ValueError, match="name: expected letters"):
        figure("a b", "c", [panel("t", "x", "y", [s])])
    with pytest.raises(ValueError, match="at least one panel"):
        figure("ab", "c", [])


def test_draw_png_and_svg(tmp_path):
    p1 = panel("acc", "step", "test accuracy", [series("bn", [1, 10, 100], [0.5, 0.9, 0.95], [0.4, 0.8, 0.9],
                                                       [0.6, 0.95, 0.97]),
                                                series("none", [1, 10, 100], [math.nan, math.nan, math.nan])],
               xlog=True, ylog=True, xticks=[1, 10, 100], hline=0.9)
    spec = figure("acc", "caption", [p1, p1, p1, p1])
    paths = draw(spec, tmp_path, "exp-acc")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (w, h) == (round(4.3 * 3 * 110), round(3.3 * 2 * 110))   # 3 columns x 2 rows at 110 dpi
    svg = paths["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "no finite values" in svg


def test_report_markdown_and_html_content(report_dir):
    md = (report_dir / "report.md").read_text()
    html = (report_dir / "report.html").read_text()
    # the verdict table comes first, then the experiment's section
    assert md.index("## Verdicts") < md.index("## fake — fake experiment")
    assert "| [fake](#fake) | tests | **supported** | 1/1 core, 1/1 all | a − b: +10 [+10, +10] | 1 |" in md
    assert ("**Verdict: supported** — 1 of 1 core part(s) supported; 1 of 1 parts in all. Deciding part: a is larger "
            "than b — a − b = +10, 95% CI [+10, +10] (n=2, paired over seeds [0, 1])") in md
    assert "| a is larger than b | core | supported | a − b: +10 [+10, +10] | — | 1 | 2 |" in md
    assert "**Rerun:** `normlab reproduce --scale smoke --only fake --out " in md
    figs = report_dir / "figures"
    assert (figs / "fake-curves.png").exists() and (figs / "fake-curves.svg").exists()
    assert "](figures/fake-curves.png)" in md
    # self-contained: no scripts, no external resources, every image is an embedded PNG
    assert "<script" not in html.lower()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:)?//', html)
    assert html.count("<img") == 1 and "a − b: +10 [+10, +10]" in html


def test_write_report_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results in"):
        write_report(tmp_path)


PROBE = """<script>
var normlabErrors = [];
window.addEventListener('error', function (e) {
  normlabErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
}, true);
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (i) { return i.naturalWidth; });
  var pre = document.createElement('pre');
  pre.id = 'normlab-probe';
  pre.textContent = JSON.stringify({widths: widths, errors: normlabErrors});
  document.body.appendChild(pre);
});
</script>"""


def _probe(html: str, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load a test-only copy of `html` with a probe script (the report itself carries no script) in headless
    Chromium; returns the probe's {"widths": naturalWidth of every <img>, "errors": [...]} and the console lines."""
    page = tmp_path / "probe.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    m = re.search(r'<pre id="normlab-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe did not run; chromium rc={proc.returncode}, stderr tail: {proc.stderr[-800:]}"
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return probe, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    probe, console = _probe((report_dir / "report.html").read_text(), tmp_path)
    assert probe["errors"] == [] and console == []
    assert len(probe["widths"]) == 1 and all(w > 0 for w in probe["widths"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_real_experiments_report_renders_in_chromium(tmp_path):
    # real figures (multi-panel, error bars, log axes, non-ASCII labels) from three experiments at smoke scale
    exps = [registry.get(i) for i in ("ioffe-mnist", "santurkar-landscape", "renorm-ghost")]
    res = runner.reproduce(exps, "smoke", tmp_path / "out", jobs=1, echo=lambda m: None)
    html = Path(res["report"]).read_text()
    n_figs = sum(len(json.loads(p.read_text())["outcome"]["figures"])
                 for p in (tmp_path / "out" / "results").glob("*.json"))
    probe, console = _probe(html, tmp_path)
    assert probe["errors"] == [] and console == []
    assert len(probe["widths"]) == n_figs == 3 and all(w > 400 for w in probe["widths"])
    md = Path(res["report_md"]).read_text()
    assert md.count("**Verdict: ") == 3 and md.count("**Rerun:** `normlab reproduce --scale smoke --only ") == 3


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_chromium_probe_catches_a_broken_image(report_dir, tmp_path):
    # the probe must be able to fail: a page with a broken image reports width 0 and an error
    html = (report_dir / "report.html").read_text()
    broken = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,AAAA"', html, count=1)
    page = tmp_path / "broken.html"
    page.write_text(broken.replace("<head>", "<head>" + PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
    probe = json.loads(re.search(r'<pre id="normlab-probe">(.*?)</pre>', out, re.S).group(1).replace("&quot;", '"'))
    assert probe["widths"] == [0] and len(probe["errors"]) == 1


def _results(out: Path, verdicts: dict[str, tuple[str, dict[str, str]]]) -> Path:
    """Write DIR/results/<id>.json with a headline outcome and {part: outcome} for each experiment id."""
    (out / "results").mkdir(parents=True)
    for eid, (head, parts) in verdicts.items():
        checks = [{"key": k, "outcome": v, "shown": f"{k} shown"} for k, v in parts.items()]
        rec = {"id": eid, "outcome": {"verdict": {"outcome": head, "shown": "h"}, "checks": checks}}
        (out / "results" / f"{eid}.json").write_text(json.dumps(rec))
    return out


def test_compare_counts_agreement_part_by_part(tmp_path):
    from click.testing import CliRunner
    from normlab.cli import main as cli
    from normlab.report import compare, format_compare
    a = _results(tmp_path / "a", {"x": ("supported", {"p": "supported", "q": "inconclusive"}),
                                  "y": ("undecidable", {"r": "undecidable"})})
    b = _results(tmp_path / "b", {"x": ("supported", {"p": "supported", "q": "not supported"}),
                                  "z": ("inconclusive", {})})
    rows = {(r["exp"], r["part"]): r for r in compare(a, b)}
    assert rows["x", "headline"]["same"] and rows["x", "p"]["same"]
    assert not rows["x", "q"]["same"] and (rows["x", "q"]["a"], rows["x", "q"]["b"]) == ("inconclusive",
                                                                                       "not supported")
    # an experiment or part present on one side only never counts as agreeing
    assert rows["y", "headline"]["b"] is None and not rows["y", "r"]["same"] and not rows["z", "headline"]["same"]
    assert format_compare(list(rows.values())).splitlines()[-1] == \
        "headlines agreeing: 1/3; parts agreeing: 1/3"
    assert CliRunner().invoke(cli, ["compare", str(a), str(a)]).exit_code == 0
    res = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    assert res.exit_code == 1 and "DIFF" in res.output
    res = CliRunner().invoke(cli, ["compare", str(a), str(tmp_path)])
    assert res.exit_code == 2 and "no results" in res.output
