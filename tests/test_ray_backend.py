"""`normlab reproduce --backend ray`: each run a Ray task, into the same run folders as the local pool.

On a local Ray started here (2 CPUs, no dashboard): the same experiment run by Ray and by the local backend gives the
same records, number for number; a later local reproduce reuses Ray's runs; a run whose Ray worker is killed (SIGKILL)
after its first checkpoint is retried, resumes from that checkpoint, and ends with the numbers of an uninterrupted
run. Without Ray installed, --backend ray is a one-line error naming the extra to install.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import normlab
from normlab.cli import main
from normlab.experiments import backends, runner
from normlab.experiments.base import Experiment, Outcome, Scale, Verdict
from normlab.config import TrainConfig
from normlab.experiments.common import train_run
from normlab.train import train

# one pytest-xdist worker runs this module (make test: --dist loadgroup), so the suite starts one local Ray, not two
pytestmark = pytest.mark.xdist_group("ray")

TIMING = {"time", "wall_s", "wall_time_s", "peak_rss_mb", "elapsed"}   # clocks and memory, never the same twice


def numbers(obj):
    """obj without its clock and memory fields, at any depth: what must be equal between two executions of a run."""
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    return obj


def run_records(out: Path) -> dict[str, dict]:
    """{run key: {file: content}} for every finished run under out/runs (JSONL as lists of rows)."""
    recs = {}
    for d in sorted((out / "runs").iterdir()):
        assert (d / backends.DONE).exists(), f"{d} did not finish"
        recs[d.name] = {f: numbers([json.loads(line) for line in (d / f).read_text().splitlines()])
                        for f in ("metrics.jsonl", "diagnostics.jsonl")}
        recs[d.name].update({f: numbers(json.loads((d / f).read_text()))
                             for f in ("run.json", "config.json", "summary.json", backends.DONE)})
    return recs


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for this module (or the cluster RAY_ADDRESS names, e.g. one from `ray start --head`).

    Its workers must import the normlab (and this test module) that pytest imported: a cluster started here inherits
    PYTHONPATH from this process, set before it starts; an existing one gets it through the job's runtime_env."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'normlab[ray]')")
    here = [str(Path(normlab.__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
    old = os.environ.get("PYTHONPATH")
    path = os.pathsep.join(here + ([old] if old else []))
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, logging_level="ERROR")
    else:
        os.environ["PYTHONPATH"] = path
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()


def test_ray_runs_are_the_local_runs_and_a_local_reproduce_reuses_them(ray_cluster, tmp_path):
    cli = CliRunner()
    args = ["reproduce", "--scale", "smoke", "--only", "ioffe-mnist", "--seeds", "1"]
    # --threads 1 for Ray; the local run happens in this process, which conftest sets to 1 torch thread: float sums
    # depend on the thread count, so both sides use one
    r_ray = cli.invoke(main, args + ["--out", str(tmp_path / "ray"), "--backend", "ray", "--threads", "1"])
    assert r_ray.exit_code == 0, r_ray.output
    assert "Ray tasks of 1 CPU(s)" in r_ray.output and "(0 reused, 2 to run)" in r_ray.output
    r_loc = cli.invoke(main, args + ["--out", str(tmp_path / "local"), "--jobs", "1"])
    assert r_loc.exit_code == 0, r_loc.output

    ray_recs, loc_recs = run_records(tmp_path / "ray"), run_records(tmp_path / "local")
    assert len(ray_recs) == 2 and ray_recs.keys() == loc_recs.keys()
    for key in ray_recs:
        assert len(ray_recs[key]["metrics.jsonl"]) == 5   # evaluations at 0, 10, 20, 30, 40
        assert ray_recs[key] == loc_recs[key], key
    res = [json.loads((tmp_path / o / "results" / "ioffe-mnist.json").read_text()) for o in ("ray", "local")]
    assert res[0]["outcome"] == res[1]["outcome"]
    # the record does not depend on where the runs executed: its rerun command is the same but for --out
    cmds = [r["command"].replace(str(tmp_path / o), "OUT") for r, o in zip(res, ("ray", "local"))]
    assert cmds[0] == cmds[1] and "--backend" not in cmds[0]

    # the cache is shared: a local reproduce into Ray's folder trains nothing
    again = cli.invoke(main, args + ["--out", str(tmp_path / "ray"), "--jobs", "1"])
    assert again.exit_code == 0, again.output
    assert "(2 reused, 0 to run)" in again.output and "2 runs (2 reused)" in again.output


# ---------------------------------------------------------------------------------------- a worker killed mid-run
class KillOnce:
    """A train hook that logs 'pid step' for every step to `trace` and, the first time it reaches `step` in a process
    other than the test's, SIGKILLs that process (a Ray worker): as the OOM killer or a lost node would."""

    def __init__(self, trace: Path, step: int, test_pid: int) -> None:
        self.trace, self.step, self.test_pid = trace, step, test_pid

    def __call__(self, ctx) -> None:
        with open(self.trace, "a") as f:
            f.write(f"{os.getpid()} {ctx.step}\n")
        marker = self.trace.with_suffix(".killed")
        if ctx.step == self.step and not marker.exists():
            assert os.getpid() != self.test_pid, "KillOnce runs in Ray workers only"
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


class Checkpointed(Experiment):
    """One BN-MLP run on MNIST, 30 steps, checkpoints every 10; with `trace`, its worker is killed at step 15."""

    id = "ray-kill"
    title = source = claim = "tests"
    scales = {"smoke": Scale("smoke", seeds=1)}

    def __init__(self, trace: Path | None = None) -> None:
        self.trace, self.test_pid = trace, os.getpid()   # built here, in the test; its hooks are built in the worker

    def runs(self, scale, seeds, device="cpu"):
        return [train_run(self.id, "bn", 0, model="mlp", norm="bn", dataset="mnist", init="ioffe", lr=0.1,
                          batch_size=60, steps=30, eval_every=10, eval_samples=200, checkpoint_every=10,
                          device=device)]

    def execute(self, run, out_dir):
        """Train as runner does, with KillOnce as the one hook (built in the worker, from this pickled experiment)."""
        hooks = [KillOnce(self.trace, 15, self.test_pid)] if self.trace else []
        return train(TrainConfig.from_dict(run.config["train"]), out_dir, hooks=hooks, resume=True)

    def analyze(self, results, scale):
        return Outcome(Verdict(self.claim, "supported", results[0].summary["test_acc"], "final test accuracy"))


def test_a_killed_ray_worker_is_retried_and_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    trace = tmp_path / "trace.txt"
    msgs = []
    res = runner.reproduce([Checkpointed(trace)], "smoke", tmp_path / "ray", backend="ray", threads=1,
                           echo=msgs.append, report=False)
    assert not res["failed"] and res["runs"] == 1, msgs
    rows = [tuple(map(int, line.split())) for line in trace.read_text().splitlines()]
    killed = int(trace.with_suffix(".killed").read_text())
    first = [step for pid, step in rows if pid == killed]
    retry = [(pid, step) for pid, step in rows if pid != killed]
    assert first == list(range(16))                 # the first attempt died at step 15...
    assert {pid for pid, _ in retry} and retry[0][1] == 10 and retry[-1][1] == 29   # ...the retry resumed at 10

    runner.reproduce([Checkpointed()], "smoke", tmp_path / "local", jobs=1, echo=lambda m: None, report=False)
    killed_recs, whole_recs = run_records(tmp_path / "ray"), run_records(tmp_path / "local")
    assert killed_recs == whole_recs
    (rec,) = killed_recs.values()
    assert [row["step"] for row in rec["metrics.jsonl"]] == [0, 10, 20, 30]
    assert math.isfinite(rec["summary.json"]["test_acc"]) and rec["summary.json"]["test_acc"] > 0.3


# ------------------------------------------------------------------------------------------------------ errors
def test_backend_ray_without_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["reproduce", "--scale", "smoke", "--only", "ioffe-mnist", "--out", str(out),
                                  "--backend", "ray"])
    assert r.exit_code == 2 and "pip install 'normlab[ray]'" in r.output, r.output
    assert not out.exists()   # refused before anything was written
    with pytest.raises(ValueError, match="backend: expected one of local, ray, got 'dask'"):
        backends.check("dask", "cpu")


def test_ray_refuses_a_numbered_gpu_and_a_task_no_node_can_hold():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'normlab[ray]')")
    with pytest.raises(ValueError, match="device: with backend 'ray' give 'cuda', not 'cuda:1'"):
        backends.check("ray", "cuda:1")
    backends.check("ray", "cuda")
    two_cpus = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                              {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    backends._check_fits(two_cpus, 2, 0, started=True, echo=print)   # fits: nothing said
    with pytest.raises(ValueError, match=r"threads: each run needs 3 CPU\(s\) and no Ray node has that"):
        backends._check_fits(two_cpus, 3, 0, started=True, echo=print)
    said = []
    backends._check_fits(two_cpus, 1, 1, started=False, echo=said.append)   # a cluster that may grow: a warning
    assert len(said) == 1 and "needs 1 CPU(s) and 1 GPU" in said[0] and "at most 2 CPUs, 0 GPUs" in said[0]
