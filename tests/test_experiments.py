"""normlab.experiments: run hashing, the runner (cache, resume, workers), verdict rules, and every registered
experiment end-to-end at smoke scale."""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from normlab.experiments import base, registry, runner, verdict
from normlab.experiments.base import Experiment, Outcome, Run, Scale
from normlab.experiments.variants import Norm
from normlab.report import draw, figure, panel, series


# ------------------------------------------------------------------------------------------------ a fake experiment
class Fake(Experiment):
    """Two variants whose value is known in closed form: a = 10 + seed, b = seed (a > b by 10 on every seed)."""

    id = "fake"
    title = "fake experiment"
    source = "tests"
    claim = "a is larger than b"
    procedure = "fake"
    scales = {"quick": Scale("quick", seeds=3, offset=10.0), "smoke": Scale("smoke", seeds=2, offset=10.0)}

    def runs(self, scale, seeds, device="cpu"):
        return [Run(self.id, g, s, {"procedure": self.procedure, "group": g, "seed": s,
                                    "offset": scale.offset if g == "a" else 0.0})
                for g in ("a", "b") for s in seeds]

    def execute(self, run, out_dir):
        log = Path(out_dir).parent.parent / "executions.txt"
        with open(log, "a") as f:
            f.write(run.label + "\n")
        (Path(out_dir) / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": t, "v": run.config["offset"] + run.seed + t}) + "\n" for t in range(3)))
        if os.environ.get("NORMLAB_TEST_INTERRUPT") == run.label:
            raise KeyboardInterrupt           # as if Ctrl-C arrived while this run trained
        crash = os.environ.get("NORMLAB_TEST_CRASH", "")
        if crash.split(":")[0] == run.label:  # the worker dies: once (":once"), or every time
            marker = Path(out_dir).parent.parent / "crashed"
            if not (crash.endswith(":once") and marker.exists()):
                marker.touch()
                os._exit(1)
        if os.environ.get("NORMLAB_TEST_SLOW") == run.label:
            time.sleep(600)                   # a run that hangs until the test kills reproduce
        return {"value": run.config["offset"] + run.seed}

    def analyze(self, results, scale):
        vals = {g: {r.run.seed: r.summary["value"] for r in results if r.run.group == g} for g in ("a", "b")}
        rule = verdict.Rule("ab", self.claim, "value", "greater", 1.0, "one unit")
        v = verdict.combine(self.claim, [verdict.decide(rule, "a", vals["a"], "b", vals["b"])])
        curves = [series(g, [0, 1, 2], [row["v"] for row in results[i].metrics])
                  for i, g in ((0, "a"), (len(results) - 1, "b"))]
        return Outcome(v, [v], [figure("curves", "v vs step", [panel("v", "step", "v", curves)])],
                       [{"variant": g, "value": sum(x.values()) / len(x)} for g, x in vals.items()])


def executions(out: Path) -> list[str]:
    p = out / "executions.txt"
    return p.read_text().splitlines() if p.exists() else []


# ---------------------------------------------------------------------------------------------------------- hashing
def test_run_hash_is_the_full_config():
    cfg = {"procedure": "train", "lr": 0.1, "model": {"width": 2, "depth": 3}}
    a = Run("x", "g", 0, cfg)
    same = Run("y", "other label", 0, {"model": {"depth": 3, "width": 2}, "lr": 0.1, "procedure": "train"})
    assert a.key == same.key and len(a.key) == 16   # key order, label and experiment do not matter: runs are shared
    assert Run("x", "g", 0, {**cfg, "model": {"width": 2, "depth": 4}}).key != a.key   # nested change
    assert Run("x", "g", 0, {**cfg, "lr": 0.1000001}).key != a.key
    assert Run("x", "g", 0, {**cfg, "procedure": "precise-bn"}).key != a.key
    with pytest.raises(TypeError, match="not JSON-serializable"):
        base.run_hash({"procedure": "x", "f": object()})
    with pytest.raises(ValueError, match="expected a 'procedure' key"):
        base.run_hash({"lr": 0.1})


def test_scale_reduce_records_the_reductions():
    paper = Scale("paper", steps=50_000, width=100, seeds=3)
    quick = paper.reduce("quick", "2-core CPU", steps=2000)
    assert (quick.steps, quick.width, paper.steps) == (2000, 100, 50_000)
    assert quick.describe() == ["steps 50,000 → 2000 (2-core CPU)"]
    both = quick.reduce("q2", "narrower", width=50, steps=1000)
    assert both.describe() == ["steps 50,000 → 2000 (2-core CPU)", "width 100 → 50, steps 2000 → 1000 (narrower)"]
    with pytest.raises(ValueError, match="unknown parameter"):
        paper.reduce("q", "why", stepz=1)
    with pytest.raises(AttributeError, match="no parameter 'lr'"):
        quick.lr


# ---------------------------------------------------------------------------------------------------------- verdicts
def test_runner_caches_and_resumes_after_interrupt(tmp_path, monkeypatch):
    fake = Fake()
    monkeypatch.setenv("NORMLAB_TEST_INTERRUPT", "a seed=2")   # not part of the config: the rerun is the same run
    with pytest.raises(KeyboardInterrupt):
        runner.reproduce([fake], "quick", tmp_path, jobs=1, echo=lambda m: None, report=False)
    assert executions(tmp_path) == ["a seed=0", "a seed=1", "a seed=2"]
    runs = fake.runs(Fake.scales["quick"], [0, 1, 2])
    assert [runner.load_result(tmp_path, r) is not None for r in runs] == [True, True, False, False, False, False]
    # the interrupted run left a partial record behind; it must be cleared and redone, not trusted
    assert (runner.run_dir(tmp_path, runs[2]) / "metrics.jsonl").exists()

    monkeypatch.delenv("NORMLAB_TEST_INTERRUPT")
    msgs: list[str] = []
    res = runner.reproduce([fake], "quick", tmp_path, jobs=1, echo=msgs.append, report=False)
    assert executions(tmp_path)[3:] == ["a seed=2", "b seed=0", "b seed=1", "b seed=2"]   # 0 and 1 not redone
    assert "2 reused, 4 to run" in msgs[0]
    assert res["verdicts"] == {"fake": "supported"} and res["reused"] == 2
    rec = json.loads((tmp_path / "results" / "fake.json").read_text())
    assert rec["outcome"]["verdict"]["value"] == pytest.approx(10.0)
    assert rec["n_runs"] == 6 and rec["reused"] == 2 and rec["seeds"] == [0, 1, 2]
    # a third call runs nothing
    res = runner.reproduce([fake], "quick", tmp_path, jobs=1, echo=msgs.append, report=False)
    assert len(executions(tmp_path)) == 7 and res["reused"] == 6


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_experiments import Fake
from normlab.experiments import runner
runner.reproduce([Fake()], "quick", {out!r}, jobs=2, report=False)
"""


def test_killed_reproduce_keeps_finished_runs_and_resumes(tmp_path):
    # a real kill (SIGTERM) of `reproduce` with 2 worker processes while one run hangs
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "out"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "NORMLAB_TEST_SLOW": "b seed=2"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    def settled() -> bool:   # 5 runs done and the hung one started (under load a worker may pick it up late)
        return len(list(out.glob("runs/*/done.json"))) == 5 and len(executions(out)) == 6
    while not settled() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert settled(), proc.communicate(timeout=5)[0].decode()[-2000:]
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0 and "rerun the same command to resume" in text
    assert len(executions(out)) == 6 and len(list(out.glob("runs/*/done.json"))) == 5   # the hung run is not done
    res = runner.reproduce([Fake()], "quick", out, jobs=1, echo=lambda m: None, report=False)
    assert res["reused"] == 5 and executions(out)[6:] == ["b seed=2"]   # only the killed run is redone


def test_a_dead_worker_restarts_the_pool(tmp_path, monkeypatch):
    # the worker running "a seed=1" exits abruptly, as if killed: the pool restarts and every run still finishes
    monkeypatch.setenv("NORMLAB_TEST_CRASH", "a seed=1:once")
    msgs = []
    res = runner.reproduce([Fake()], "smoke", tmp_path / "once", jobs=2, echo=msgs.append, report=False)
    assert res["verdicts"] == {"fake": "supported"} and not res["failed"]
    assert len(list((tmp_path / "once").glob("runs/*/done.json"))) == 4
    assert any("a worker process died" in m for m in msgs)
    # a run that kills its worker every time fails after the restarts; the others finish
    monkeypatch.setenv("NORMLAB_TEST_CRASH", "a seed=1")
    res = runner.reproduce([Fake()], "smoke", tmp_path / "always", jobs=2, echo=lambda m: None, report=False)
    assert res["failed"] and res["verdicts"] == {"fake": "inconclusive"}
    assert (tmp_path / "always" / "runs").exists() and executions(tmp_path / "always").count("a seed=1") == 3
    done = [json.loads(p.read_text())["run"] for p in (tmp_path / "always").glob("runs/*/done.json")]
    assert ("a", 1) not in [(r["group"], r["seed"]) for r in done] and len(done) >= 1


def test_runner_parallel_workers_and_failures(tmp_path):
    res = runner.reproduce([Fake()], "smoke", tmp_path, jobs=2, echo=lambda m: None, report=False)
    assert res["verdicts"] == {"fake": "supported"} and not res["failed"]
    assert sorted(executions(tmp_path)) == ["a seed=0", "a seed=1", "b seed=0", "b seed=1"]
    with pytest.raises(ValueError, match="jobs: expected a positive int"):
        runner.reproduce([Fake()], "smoke", tmp_path, jobs=0)
    with pytest.raises(ValueError, match="scale: expected one of"):
        runner.reproduce([Fake()], "paper", tmp_path)


class Broken(Fake):
    id = "broken"
    procedure = "broken"   # its own runs, not Fake's

    def execute(self, run, out_dir):
        if run.group == "b":
            raise RuntimeError("boom in run b")
        return super().execute(run, out_dir)


class Fake2(Fake):
    id = "fake2"   # needs exactly the runs of Fake


def test_experiments_share_identical_runs(tmp_path):
    res = runner.reproduce([Fake(), Fake2()], "smoke", tmp_path, jobs=1, echo=lambda m: None, report=False)
    assert res["verdicts"] == {"fake": "supported", "fake2": "supported"}
    assert len(executions(tmp_path)) == 4 and res["runs"] == 4   # run once, analysed by both


def test_runner_reports_a_failed_run_and_goes_on(tmp_path):
    res = runner.reproduce([Broken(), Fake()], "smoke", tmp_path, jobs=1, echo=lambda m: None, report=False)
    assert res["failed"] == {"broken": ["b seed=0: RuntimeError: boom in run b",
                                        "b seed=1: RuntimeError: boom in run b"]}
    assert res["verdicts"] == {"broken": "inconclusive", "fake": "supported"}
    run = Broken().runs(Broken.scales["smoke"], [0])[1]
    assert "boom in run b" in (runner.run_dir(tmp_path, run) / "error.txt").read_text()


def test_registry_resolves_ids_and_rejects_unknown():
    assert registry.ids()[:2] == ["ioffe-mnist", "ioffe-lr"] and len(registry.ids()) == 14
    assert set(registry.DEMO) <= set(registry.ids())
    with pytest.raises(ValueError, match="unknown experiment id"):
        registry.resolve(["ioffe-mnist,nope"])


# ------------------------------------------------------------------------------------ every experiment, end to end
@pytest.mark.parametrize("exp_id", registry.ids())
def test_experiment_runs_end_to_end_at_smoke_scale(exp_id, tmp_path):
    exp = registry.get(exp_id)
    res = runner.reproduce([exp], "smoke", tmp_path, jobs=1, echo=lambda m: None, report=False)
    assert res["failed"] == {}
    rec = json.loads((tmp_path / "results" / f"{exp_id}.json").read_text())
    out = rec["outcome"]
    assert out["verdict"]["outcome"] in base.OUTCOMES and out["checks"] and out["table"] and out["figures"]
    for c in out["checks"]:
        assert c["outcome"] in base.OUTCOMES and re.search(r"\d", c["deciding"]), c
    assert rec["seeds"] == [0, 1] and rec["n_runs"] == len(exp.runs(exp.scale("smoke"), [0, 1]))
    assert rec["dataset"] and rec["reductions"] and rec["command"].endswith(f"--only {exp_id} --out {tmp_path}")
    for spec in out["figures"]:
        paths = draw(spec, tmp_path / "figures", f"{exp_id}-{spec['name']}")
        assert paths["png"].stat().st_size > 1000


@pytest.mark.parametrize("exp_id", registry.ids())
def test_quick_and_paper_configs_are_valid(exp_id):
    # every run of the quick and paper scales builds a valid TrainConfig (checked when the config is made) and
    # the runs are distinct; quick has >= 3 seeds
    exp = registry.get(exp_id)
    for scale in ("quick", "paper"):
        s = exp.scale(scale)
        seeds = exp.seeds(s, None)
        runs = exp.runs(s, seeds)
        assert len({r.key for r in runs}) == len(runs) and {r.seed for r in runs} == set(seeds)
    assert len(exp.seeds(exp.scale("quick"), None)) >= 3
    quick, paper = exp.scale("quick"), exp.scale("paper")
    assert quick.describe() or quick.params == paper.params, "quick must state its reductions from the paper"


def _result(tmp: Path, group: str, seed: int, metrics: list[dict], diagnostics: list[dict]) -> base.Result:
    d = tmp / f"{group}-{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (d / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diagnostics))
    return base.Result(Run("ioffe-mnist", Norm(group), seed, {"procedure": "train"}), d, {"diverged_at": None})


def _ioffe_records(tmp: Path, acc: dict[str, float], drift: dict[str, float]) -> list[base.Result]:
    out = []
    for g in ("none", "bn"):
        for seed in range(3):
            metrics = [{"step": t, "test_acc": acc[g] * t / 100 + 0.001 * seed} for t in (0, 10, 50, 100)]
            diag = [{"step": t, "hook": "distributions", "layer": "1", "hist": {"edges": [0.0, 1.0], "counts": [1]},
                     "percentiles": {q: [drift[g] * t / 100 + 0.01 * seed] for q in ("15", "50", "85")}}
                    for t in range(0, 101, 10)]
            out.append(_result(tmp, g, seed, metrics, diag))
    return out


def test_ioffe_verdict_follows_the_data(tmp_path):
    # the same analysis on synthetic records: the verdict follows the numbers, whichever way they point
    exp = registry.get("ioffe-mnist")
    s = Scale("t", steps=100, early=10, eval_every=10)
    good = exp.analyze(_ioffe_records(tmp_path / "a", {"bn": 0.9, "none": 0.5}, {"bn": 0.1, "none": 2.0}), s)
    assert good.verdict.outcome == "supported" and [c.outcome for c in good.checks] == ["supported"] * 3
    bad = exp.analyze(_ioffe_records(tmp_path / "b", {"bn": 0.5, "none": 0.9}, {"bn": 2.0, "none": 0.1}), s)
    assert bad.verdict.outcome == "not supported" and [c.outcome for c in bad.checks] == ["not supported"] * 3
    tie = exp.analyze(_ioffe_records(tmp_path / "c", {"bn": 0.9, "none": 0.9}, {"bn": 1.0, "none": 1.0}), s)
    assert tie.verdict.outcome == "inconclusive"
    # drift = |mean of the last 10% of records - mean of the first 10%| = drift * (100 - 0) / 100 for each seed;
    # the drift rule compares ratios (log10)
    assert good.checks[1].value == pytest.approx(math.log10(2.0 / 0.1))
    assert good.checks[0].interval == pytest.approx([0.04, 0.04])   # paired: the seed offsets cancel
