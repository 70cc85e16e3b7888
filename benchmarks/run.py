"""The benchmark harness (`make bench`): runs every benchmarks/bench_*.py and prints one table per bench.

    python benchmarks/run.py [--quick] [--only NAME ...]

Each module exposes `run(quick: bool = False) -> list[dict]`. Row keys: "bench", "case", "normlab_ms", "torch_ms",
"ratio" (normlab / torch, computed when missing), "target" (a number: the ratio must be <= it; or a string shown as is),
"ok" (True / False / None); any other key becomes an extra column. Missing keys print as "-". A missed target prints
MISSED and is listed at the end; the exit code is 0 unless a bench module crashed.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))     # run as a script: make `benchmarks` and `normlab` importable from the checkout

import torch  # noqa: E402

STANDARD = ["case", "normlab_ms", "torch_ms", "ratio", "target", "ok"]
HEADERS = {"case": "case", "normlab_ms": "normlab ms", "torch_ms": "torch ms", "ratio": "ratio", "target": "target",
           "ok": "ok"}


def discover(only: list[str] | None) -> list[str]:
    """Module names benchmarks.bench_*, sorted; `only` filters by NAME or bench_NAME."""
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    if only:
        wanted = {o if o.startswith("bench_") else f"bench_{o}" for o in only}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"--only: no benchmark named {', '.join(sorted(unknown))}; "
                             f"have {', '.join(n[6:] for n in names)}")
        names = [n for n in names if n in wanted]
    return names


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "ok":
        return "ok" if value is True else "MISSED" if value is False else str(value)
    if key == "target" and isinstance(value, (int, float)):
        return f"<= {value:g}x"
    if key == "ratio" and isinstance(value, (int, float)):
        return f"{value:.2f}x"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def normalize_row(row: dict) -> dict:
    """Fill what can be derived (ratio, ok) and leave the rest missing."""
    row = dict(row)
    nl, tt = row.get("normlab_ms"), row.get("torch_ms")
    if row.get("ratio") is None and isinstance(nl, (int, float)) and isinstance(tt, (int, float)) and tt > 0:
        row["ratio"] = nl / tt
    target, ratio = row.get("target"), row.get("ratio")
    if row.get("ok") is None and isinstance(target, (int, float)) and isinstance(ratio, (int, float)):
        row["ok"] = ratio <= target
    return row


def table(rows: list[dict]) -> str:
    """One aligned text table: the standard columns, then every other key in order of first appearance."""
    extra: list[str] = []
    for r in rows:
        extra += [k for k in r if k not in STANDARD and k != "bench" and k not in extra]
    cols = STANDARD + extra
    cells = [[HEADERS.get(c, c) for c in cols]] + [[_fmt(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _allocator() -> str:
    try:
        from normlab.fast.alloc import tcmalloc_loaded
    except ImportError:
        return "unknown"
    return "tcmalloc" if tcmalloc_loaded() else "glibc malloc"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (5 instead of >= 20): a smoke run")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only bench_NAME.py (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(f"normlab benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'quick' if args.quick else 'full'} run, allocator {_allocator()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (times are medians; other load inflates them)")
    missed: list[str] = []
    crashed: list[str] = []
    for name in discover(args.only):
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            rows = [normalize_row(r) for r in module.run(quick=args.quick)]
        except Exception:   # one broken bench must not hide the others
            traceback.print_exc()
            crashed.append(name)
            print(f"\n== {name}: CRASHED (traceback above)")
            continue
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r.get("bench", name[6:])), []).append(r)
        for bench, group in groups.items():
            print(f"\n== {bench} ({name}.py, {time.perf_counter() - t0:.0f} s)")
            print(table(group))
            missed += [f"{bench}: {r.get('case', '?')}: ratio {_fmt('ratio', r.get('ratio'))}, target "
                       f"{_fmt('target', r.get('target'))}" for r in group if r.get("ok") is False]
    print()
    if missed:
        print(f"MISSED {len(missed)} target(s):")
        for m in missed:
            print(f"  MISSED  {m}")
    else:
        print("all targets met" if not crashed else "no target missed among the benches that ran")
    if crashed:
        print(f"CRASHED: {', '.join(crashed)}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
