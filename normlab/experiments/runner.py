"""`normlab reproduce`: expand experiments into runs, run the missing ones (in worker processes), analyze, report.

Layout of DIR:
  runs/<hash>/         run.json (identity), train's records (config.json, metrics.jsonl, diagnostics.jsonl,
                       summary.json, checkpoint.pt), log.txt, and done.json (written last, atomically)
  results/<exp>.json   the experiment's outcome (verdicts, figure specs, our numbers) + metadata
  figures/, report.md, report.html   written by normlab.report from results/ only
A run counts as done exactly when its done.json exists; anything else in its folder is cleared and rerun, so an
interrupted reproduce resumes and loses no finished run.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import records
from ..util import duration
from ..report import write_report
from .base import Experiment, Outcome, Result, Run, Verdict
from .facts import finish
from .registry import ids
from .training import train_run

Echo = Callable[[str], None]


def _echo(msg: str) -> None:
    print(msg, flush=True)


def run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.key


DONE = "done.json"   # written last, atomically: the run is complete exactly when this file exists


def load_result(out: Path, run: Run, echo: Echo | None = None) -> Result | None:
    """The finished run on disk, or None when its done.json is missing or unreadable.

    An unreadable done.json (truncated, not JSON: written by a version without fsync, or damaged) does not block
    the run: it is renamed to done.json.corrupt and the run is done again (resuming from its checkpoint if any)."""
    d = run_dir(out, run)
    path = d / DONE
    if not path.exists():
        return None
    try:
        summary = records.read_json(path)
        if not isinstance(summary, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    except ValueError as e:
        os.replace(path, path.with_name(DONE + ".corrupt"))
        if echo is not None:
            echo(f"  {e}: kept as {DONE}.corrupt, the run will be done again")
        return None
    return Result(run, d, summary, cached=True)


def _write_json(path: Path, obj: object) -> None:
    """Write atomically and durably (unique temp name, fsync, rename): a reader (or a resumed reproduce) sees the
    whole file or none of it, also after a power cut."""
    records.atomic_write_json(path, obj, default=str, indent=1)


def execute(exp: Experiment, run: Run, out: Path, threads: int = 0) -> dict:
    """Execute one run into its folder and write done.json last. Runs in a worker process.

    A folder left by an interrupted attempt is cleared, unless it holds train's checkpoint.pt: then train resumes
    from it (same config, same data order; rows after the checkpoint are dropped and recomputed).
    """
    if threads:
        import torch
        torch.set_num_threads(threads)
    d = run_dir(out, run)
    if d.exists() and not (d / "checkpoint.pt").exists():
        shutil.rmtree(d)   # never trust a partial record
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / "run.json", run.to_json())
    t0 = time.perf_counter()
    with open(d / "log.txt", "a") as log, contextlib.redirect_stderr(log):
        summary = dict((exp.execute(run, d) if exp.execute is not None else train_run(run, d)) or {})
    summary["wall_s"] = time.perf_counter() - t0
    summary["run"] = run.to_json()
    _write_json(d / DONE, summary)
    return summary


def _tune_malloc() -> None:
    """glibc only: keep freed activation buffers in the heap instead of returning them to the OS every step.

    With the defaults, every step's multi-MB activations are mmap'ed and unmapped again; the page faults cost about
    a quarter of the CPU time of a quick reproduction (measured: 517 s system of 2071 s). M_MMAP_THRESHOLD = 32 MiB,
    M_TRIM_THRESHOLD = 1 GiB make it ~1%."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)        # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _init_worker(threads: int) -> None:
    """Worker set-up: torch threads; Ctrl-C is the parent's to handle; die with the parent (Linux)."""
    import torch
    torch.set_num_threads(threads)
    _tune_malloc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - best effort
            pass


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt   # a kill (e.g. a CI time-out) stops like Ctrl-C: finished runs stay, workers end


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (their unfinished runs have no done.json)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def machine() -> str:
    try:
        import torch
        tv = torch.__version__
    except ImportError:  # pragma: no cover
        tv = "?"
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}, " \
           f"torch {tv}"


def rerun_command(exp_id: str, scale: str, out: Path, seeds: int | None, device: str) -> str:
    cmd = f"normlab reproduce --scale {scale} --only {exp_id} --out {out}"
    if seeds is not None:
        cmd += f" --seeds {seeds}"
    if device != "cpu":
        cmd += f" --device {device}"
    return cmd


def reproduce(experiments: list[Experiment], scale: str = "quick", out: str | Path = "out/reproduce",
              seeds: int | None = None, device: str = "cpu", jobs: int = 2, threads: int | None = None,
              echo: Echo = _echo, report: bool = True) -> dict:
    """Run `experiments` at `scale`; returns {"verdicts": {id: outcome}, "report": path, "failed": [...], ...}.

    jobs: worker processes (1 = in this process); threads: torch threads per worker (default cores // jobs).
    """
    if not experiments:
        raise ValueError("experiments: expected at least one experiment")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs: expected a positive int, got {jobs!r}")
    out = Path(out)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    with records.DirLock(out, "normlab reproduce"):   # one reproduction per folder: a second one is refused
        return _reproduce_locked(experiments, scale, out, seeds, device, jobs, threads, echo, report)


def _reproduce_locked(experiments: list[Experiment], scale: str, out: Path, seeds: int | None, device: str,
                      jobs: int, threads: int, echo: Echo, report: bool) -> dict:
    rep = _Reproduction(experiments, scale, out, seeds, device, echo)
    echo(f"normlab reproduce --scale {scale}: {len(rep.plans)} experiment(s), {rep.total} runs "
         f"({rep.n_cached} reused, {len(rep.pending)} to run) with {jobs} worker(s) x {threads} thread(s) -> {out}")
    for eid in rep.plans:
        rep.maybe_analyze(eid)   # experiments whose runs are all cached
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _sigterm) if in_main else None
    try:
        if jobs == 1 or len(rep.pending) <= 1:
            rep.run_here()
        else:
            _run_pool(rep.pending, out, jobs, threads, rep.on_done, echo)
    except KeyboardInterrupt:
        echo(f"\ninterrupted: {rep.n_finished} new run(s) finished and kept; rerun the same command to resume")
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
    result = rep.result()
    if report:
        paths = write_report(out)
        result["report"] = str(paths["html"])
        result["report_md"] = str(paths["md"])
    return result


class _Reproduction:
    """The state of one `reproduce`: each experiment's plan (scale, runs), the finished runs (cached or new), the
    runs still to do (each once, however many experiments consume it), the failures; an experiment is analyzed as
    soon as all its runs are finished or failed."""

    def __init__(self, experiments: list[Experiment], scale: str, out: Path, seeds: int | None, device: str,
                 echo: Echo) -> None:
        self.scale, self.out, self.seeds, self.device, self.echo = scale, out, seeds, device, echo
        self.t_start = time.perf_counter()
        self.plans: dict[str, tuple[Experiment, object, list[Run]]] = {}
        for exp in experiments:
            sc = exp.scale(scale)
            runs = exp.runs(sc, exp.seeds(sc, seeds), device=device)
            keys = [r.key for r in runs]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{exp.id}: two runs share one configuration (hash); runs must differ")
            self.plans[exp.id] = (exp, sc, runs)
        self.done: dict[str, dict[str, Result]] = {eid: {} for eid in self.plans}
        self.pending: dict[str, tuple[Experiment, Run, list[str]]] = {}   # key -> (executing exp, run, consumers)
        for eid, (exp, sc, runs) in self.plans.items():
            for r in runs:
                res = load_result(out, r, echo)
                if res is not None:
                    self.done[eid][r.key] = Result(r, res.dir, res.summary, cached=True)
                elif r.key in self.pending:
                    self.pending[r.key][2].append(eid)   # the same run serves another experiment: run it once
                else:
                    self.pending[r.key] = (exp, r, [eid])
        self.total = len({r.key for p in self.plans.values() for r in p[2]})
        self.n_cached = self.total - len(self.pending)
        self.n_new = len(self.pending)
        self.n_finished = 0
        self.failed: dict[str, list[str]] = {eid: [] for eid in self.plans}
        self.analyzed: set[str] = set()

    def maybe_analyze(self, eid: str) -> None:
        exp, sc, runs = self.plans[eid]
        if eid in self.analyzed or len(self.done[eid]) + len(self.failed[eid]) < len(runs):
            return
        self.analyzed.add(eid)
        _finish_experiment(exp, sc, runs, self.done[eid], self.failed[eid], self.out, self.scale, self.seeds,
                           self.device, self.echo)

    def on_done(self, key: str, summary: dict | None, err: str | None) -> None:
        """Record a finished (err None) or failed run, then analyze the experiments it completes."""
        exp, run, consumers = self.pending[key]
        self.n_finished += 1
        k, n = self.n_finished, self.n_new
        elapsed = time.perf_counter() - self.t_start
        if err is None:
            self.echo(f"  [{k}/{n}] {run.exp} {run.label}: done in {summary.get('wall_s', 0.0):.1f}s "
                      f"(elapsed {duration(elapsed)}, ~{duration(elapsed / k * (n - k))} left)")
        else:
            last = err.strip().splitlines()[-1]
            d = run_dir(self.out, run)
            d.mkdir(parents=True, exist_ok=True)
            _write_text(d / "error.txt", err)
            self.echo(f"  [{k}/{n}] {run.exp} {run.label}: FAILED — {last}")
        for eid in consumers:
            mine = next(r for r in self.plans[eid][2] if r.key == key)
            if err is None:
                self.done[eid][key] = Result(mine, run_dir(self.out, run), summary)
            else:
                self.failed[eid].append(f"{mine.label}: {last}")
            self.maybe_analyze(eid)

    def run_here(self) -> None:
        """Execute the pending runs one after another in this process."""
        _tune_malloc()
        for key, (exp, run, _) in list(self.pending.items()):
            self.echo(f"  → {run.exp} {run.label} …")
            try:
                summary = execute(exp, run, self.out)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                self.on_done(key, None, traceback.format_exc())
            else:
                self.on_done(key, summary, None)

    def result(self) -> dict:
        """{"verdicts", "failed", "out", "wall_s", "runs", "reused"} from results/<id>.json."""
        verdicts = {}
        for eid in self.plans:
            path = self.out / "results" / f"{eid}.json"
            if path.exists():
                verdicts[eid] = _read_result(path)["outcome"]["verdict"]["outcome"]
        return {"verdicts": verdicts, "failed": {k: v for k, v in self.failed.items() if v}, "out": str(self.out),
                "wall_s": time.perf_counter() - self.t_start, "runs": self.total, "reused": self.n_cached}


def _run_pool(pending: dict, out: Path, jobs: int, threads: int, on_done, echo: Echo, restarts: int = 2) -> None:
    """Run the pending runs in `jobs` worker processes. A worker that dies (the OOM killer, a signal) breaks the whole
    pool and every run still in it: the pool is started again for the unfinished runs, at most `restarts` times."""
    todo = dict(pending)
    for attempt in range(restarts + 1):
        ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch thread pools or locks
        pool = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
        futures = {pool.submit(execute, exp, run, out, threads): key for key, (exp, run, _) in todo.items()}
        broken = False
        try:
            for fut in cf.as_completed(futures):
                key = futures[fut]
                try:
                    summary = fut.result()
                except cf.process.BrokenProcessPool:
                    if attempt < restarts:
                        broken = True
                        continue
                    on_done(key, None, traceback.format_exc())
                except Exception:
                    on_done(key, None, traceback.format_exc())
                else:
                    on_done(key, summary, None)
                todo.pop(key)
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown(wait=True)
        if not broken:
            return
        echo(f"  a worker process died: restarting the workers for the {len(todo)} unfinished run(s)")


def _finish_experiment(exp: Experiment, sc, runs: list[Run], done: dict[str, Result], failed: list[str], out: Path,
                       scale: str, seeds: int | None, device: str, echo: Echo) -> None:
    """Analyze one experiment whose runs are all finished (or failed) and write results/<id>.json."""
    results = [done[r.key] for r in runs if r.key in done]
    t0 = time.perf_counter()
    if failed:
        outcome = Outcome(Verdict(exp.claim, "inconclusive", float("nan"),
                                  f"{len(failed)} of {len(runs)} runs failed", "; ".join(failed[:3])))
    else:
        try:
            outcome = exp.analyze(results, sc)
        except Exception:
            err = traceback.format_exc()
            echo(f"  {exp.id}: analysis FAILED\n{err}")
            outcome = Outcome(Verdict(exp.claim, "inconclusive", float("nan"), "analysis failed",
                                      err.strip().splitlines()[-1]))
            failed.append(f"analysis: {err.strip().splitlines()[-1]}")
    outcome, extras = finish(exp, sc, results, outcome)
    compute_s = sum(r.wall_s for r in results)
    sources = sorted({str(r.summary.get("dataset_source") or r.summary.get("source") or "") for r in results} - {""})
    record = {
        "id": exp.id, "order": _order(exp.id), "title": exp.title, "source": exp.source, "claim": exp.claim,
        "paper_numbers": exp.paper_numbers, "setup": exp.setup_text, "caveat": exp.caveat,
        "scale": scale, "scale_params": sc.params, "reductions": sc.describe(),
        "dataset": exp.dataset_of(sc), "dataset_source": sources,
        "seeds": sorted({r.seed for r in runs}), "n_runs": len(runs),
        "reused": sum(1 for r in results if r.cached), "compute_s": compute_s,
        "analysis_s": time.perf_counter() - t0,
        "command": rerun_command(exp.id, scale, out, seeds, device),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "outcome": asdict(outcome), "failed": failed, **extras,
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    _write_json(out / "results" / f"{exp.id}.json", record)
    v = outcome.verdict
    echo(f"  ■ {exp.id}: {v.outcome.upper()} — {v.deciding[:160]}")


def _write_text(path: Path, text: str) -> None:
    records.atomic_write_text(path, text)


def _read_result(path: Path) -> dict:
    """results/<id>.json; a damaged one is a ValueError naming the file and the way to remake it."""
    try:
        rec = records.read_json(path)
        rec["outcome"]["verdict"]["outcome"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable experiment result ({e}); delete it and rerun the same reproduce "
                         f"command: it is remade from the finished runs without training again") from None
    return rec


def _order(exp_id: str) -> int:
    return ids().index(exp_id) if exp_id in ids() else 999


def verdict_table(out: str | Path) -> str:
    """Plain-text table of the verdicts in DIR/results (what `reproduce` prints at the end)."""
    rows = []
    recs = [_read_result(p) for p in Path(out, "results").glob("*.json")]
    for rec in sorted(recs, key=lambda r: (r.get("order", 999), r["id"])):
        v = rec["outcome"]["verdict"]
        num = v["value"]
        num_s = v.get("shown") or ("—" if num is None or num != num else f"{num:.3g}")
        core = v.get("core_supported") or ["?", "?"]
        rows.append((rec["id"], rec["scale"], v["outcome"], f"{core[0]}/{core[1]}", num_s, duration(rec["compute_s"])))
    head = ("experiment", "scale", "verdict", "core parts", "deciding: estimate [95% CI]", "compute")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `normlab reproduce`")
