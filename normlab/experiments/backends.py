"""Where `reproduce` executes its runs: the local worker pool (the default) or Ray tasks (`--backend ray`).

Both backends call the same function, `execute(exp, run, out, threads)`, which writes one run into its folder
out/runs/<hash> (train's lock and resume, done.json last), and report each run to the same callback,
on_done(key, summary, err), in the process that called them. So a run executed by Ray is the same record as a local
one, and either backend reuses the other's finished runs.

    run(backend, pending, out, on_done, echo, jobs, threads, device)
      pending: {run key: (experiment, run, consumers)} -- the runs to execute, each once
      on_done(key, summary | None, traceback text | None) -- called once per run, finished or failed

Ray is an optional dependency (`pip install 'normlab[ray]'`), imported only by `check` and `_run_ray`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .. import records
from .base import Experiment, Run
from .training import train_run

Echo = Callable[[str], None]
OnDone = Callable[[str, "dict | None", "str | None"], None]
BACKENDS = ("local", "ray")
RAY_MISSING = "backend 'ray' needs Ray: pip install 'normlab[ray]' (or leave --backend at local)"

DONE = "done.json"   # written last, atomically: the run is complete exactly when this file exists


def run_dir(out: Path, run: Run) -> Path:
    return out / "runs" / run.key


def execute(exp: Experiment, run: Run, out: Path, threads: int = 0) -> dict:
    """Execute one run into its folder and write done.json last. Runs in a worker process or a Ray task.

    A folder left by an interrupted attempt is cleared, unless it holds train's checkpoint.pt: then train resumes
    from it (same config, same data order; rows after the checkpoint are dropped and recomputed). train holds the
    run folder's DirLock (an flock: the kernel drops it when a killed worker's process ends, so a retry can take it).
    """
    if threads:
        import torch
        torch.set_num_threads(threads)
    d = run_dir(out, run)
    if d.exists() and not (d / "checkpoint.pt").exists():
        shutil.rmtree(d)   # never trust a partial record
    d.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(d / "run.json", run.to_json(), default=str, indent=1)
    t0 = time.perf_counter()
    with open(d / "log.txt", "a") as log, contextlib.redirect_stderr(log):
        summary = dict((exp.execute(run, d) if exp.execute is not None else train_run(run, d)) or {})
    summary["wall_s"] = time.perf_counter() - t0
    summary["run"] = run.to_json()
    records.atomic_write_json(d / DONE, summary, default=str, indent=1)
    return summary


def check(backend: str, device: str) -> None:
    """Refuse an unknown backend, Ray when it is not installed, and cuda:N on Ray (which gives each run one GPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ray":
        try:
            import ray  # noqa: F401  (optional extra)
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        if device.startswith("cuda:"):
            raise ValueError(f"device: with backend 'ray' give 'cuda', not {device!r}: Ray gives each run one GPU "
                             f"of its own (CUDA_VISIBLE_DEVICES), which the run sees as cuda:0")


def run(backend: str, pending: dict, out: Path, on_done: OnDone, echo: Echo, jobs: int, threads: int,
        device: str) -> None:
    """Execute every pending run with `backend`; jobs (local only): worker processes, 1 = in this process;
    threads: torch threads per run (Ray: the CPUs each task reserves)."""
    if backend == "ray":
        _run_ray(pending, out, on_done, echo, threads, device)
    elif jobs == 1 or len(pending) <= 1:
        _run_here(pending, out, on_done, echo)
    else:
        _run_pool(pending, out, on_done, echo, jobs, threads)


def describe(backend: str, jobs: int, threads: int, device: str) -> str:
    """'2 worker(s) x 1 thread(s)' or 'Ray tasks of 1 CPU(s) + 1 GPU': for reproduce's first line."""
    if backend == "ray":
        return f"Ray tasks of {threads} CPU(s)" + (" + 1 GPU" if _gpus(device) else "")
    return f"{jobs} worker(s) x {threads} thread(s)"


# ------------------------------------------------------------------------------------------------ the local backend
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


def _run_here(pending: dict, out: Path, on_done: OnDone, echo: Echo) -> None:
    """Execute the pending runs one after another in this process."""
    _tune_malloc()
    for key, (exp, run, _) in list(pending.items()):
        echo(f"  → {run.exp} {run.label} …")
        try:
            summary = execute(exp, run, out)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            on_done(key, None, traceback.format_exc())
        else:
            on_done(key, summary, None)


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


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (their unfinished runs have no done.json)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def _run_pool(pending: dict, out: Path, on_done: OnDone, echo: Echo, jobs: int, threads: int,
              restarts: int = 2) -> None:
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


# -------------------------------------------------------------------------------------------------- the Ray backend
def _gpus(device: str) -> int:
    return 1 if device.startswith("cuda") else 0


def _ray_execute(exp: Experiment, run: Run, out: Path, threads: int) -> dict:
    """One run as a Ray task: the local worker's allocator set-up, then the shared `execute`."""
    _tune_malloc()
    return execute(exp, run, out, threads)


def _run_ray(pending: dict, out: Path, on_done: OnDone, echo: Echo, threads: int, device: str,
             retries: int = 2) -> None:
    """Run each pending run as a Ray task reserving `threads` CPUs (+ 1 GPU on cuda), on the cluster this process is
    connected to, else the one named by RAY_ADDRESS, else a local one started here (and shut down at the end).

    A task whose worker dies (killed, out of memory, node lost) is retried up to `retries` times; the retry resumes
    the run from its checkpoint through `execute`. An exception raised by the run itself is not retried: the run
    fails, as in the local pool."""
    import ray  # optional extra: check() has said it is there
    started = not ray.is_initialized()
    if started:
        ray.init()
    refs: dict[Any, str] = {}
    try:
        _check_fits(ray, threads, _gpus(device), started, echo)
        task = ray.remote(_ray_execute).options(num_cpus=threads, num_gpus=_gpus(device), max_retries=retries,
                                                retry_exceptions=False)
        out = out.resolve()   # the workers' working directory is not ours
        refs = {task.remote(exp, run, out, threads): key for key, (exp, run, _) in pending.items()}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            key = refs.pop(ready[0])
            try:
                summary = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:   # the run raised: its traceback, as the local pool reports it
                on_done(key, None, str(e))
            except ray.exceptions.RayError as e:       # its worker died on every attempt, or the cluster failed
                on_done(key, None, f"{type(e).__name__} after {retries} retries: {e}")
            else:
                on_done(key, summary, None)
    finally:
        for ref in refs:   # interrupted (Ctrl-C, SIGTERM, an error in on_done): stop what is still running
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _check_fits(ray: Any, cpus: int, gpus: int, started: bool, echo: Echo) -> None:
    """A task that no node can hold waits forever: refuse it on a cluster started here (it cannot grow), warn on one
    that may add nodes."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    most = max((r.get("CPU", 0) for r in nodes), default=0), max((r.get("GPU", 0) for r in nodes), default=0)
    need = f"{cpus} CPU(s)" + (f" and {gpus} GPU" if gpus else "")
    msg = f"each run needs {need} and no Ray node has that (at most {most[0]:g} CPUs, {most[1]:g} GPUs)"
    if started:
        raise ValueError(f"threads: {msg}; lower --threads or run on a cluster that has such a node")
    echo(f"  warning: {msg}; the runs wait until the cluster adds one")
