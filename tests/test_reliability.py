"""Issue 15: runs and records you can trust. One test (or more) per numbered defect; each failed before the fix.

1 two writers; 4 resume; 5 fuse_bn with shared modules; 3 bad values and files; 6 logs; 2 bad data.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from normlab import checkpoint as ckpt
from normlab import records
from normlab.cli import main as cli
from normlab.experiments import runner
from normlab.experiments.base import Experiment, Outcome, Run, Scale
from normlab.experiments import verdict
from normlab.train import ConfigError, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import cfg_for, tiny_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("data"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until `path` exists (the child reached the point we test); fail with the child's output otherwise."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"child did not get there: {proc.communicate()[0][-3000:]}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ 1. one writer per directory
class Waiting(Experiment):
    """Two runs; each writes 3 metric rows, then (when NORMLAB_TEST_GATE is set) touches GATE.started and waits
    for GATE.release, so that a test can start a second writer while the first is mid-run."""

    id = "waiting"
    title = "waiting experiment"
    source = "tests"
    claim = "a is larger than b"
    procedure = "waiting"
    scales = {"smoke": Scale("smoke", seeds=1)}

    def runs(self, scale, seeds, device="cpu"):
        return [Run(self.id, g, s, {"procedure": self.procedure, "group": g, "seed": s}) for g in "ab" for s in seeds]

    def execute(self, run, out_dir):
        gate = os.environ.get("NORMLAB_TEST_GATE")
        with open(Path(out_dir) / "metrics.jsonl", "a") as f:
            for t in range(3):
                f.write(json.dumps({"step": t, "v": t}) + "\n")
        if gate:
            Path(gate + ".started").touch()
            while not Path(gate + ".release").exists():
                time.sleep(0.05)
        return {"value": 1.0 if run.group == "a" else 0.0}

    def analyze(self, results, scale):
        vals = {g: [r.summary["value"] for r in results if r.run.group == g] for g in "ab"}
        part = verdict.holds("ab", self.claim, int(vals["a"][0] > vals["b"][0]), 1, "a vs b on the one seed")
        return Outcome(verdict.combine(self.claim, [part]), [part], [], [])


REPRODUCE_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_reliability import Waiting
from normlab.experiments import runner
res = runner.reproduce([Waiting()], "smoke", {out!r}, jobs=1, report=False, echo=lambda m: None)
print("VERDICTS", res["verdicts"])
"""


def test_second_reproduce_into_one_out_is_refused_and_first_is_intact(tmp_path):
    out, gate = tmp_path / "out", tmp_path / "gate"
    proc = subprocess.Popen([sys.executable, "-c", REPRODUCE_CHILD.format(tests=str(Path(__file__).parent),
                                                                        out=str(out))],
                            env={**ENV, "NORMLAB_TEST_GATE": str(gate)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for(Path(str(gate) + ".started"), proc)
    # the second writer, in this process and through the CLI: refused, naming the first one's pid
    with pytest.raises(records.InUseError, match=f"{out} is in use by process {proc.pid} "):
        runner.reproduce([Waiting()], "smoke", out, jobs=1, report=False, echo=lambda m: None)
    res = CliRunner().invoke(cli, ["reproduce", "--scale", "smoke", "--only", "ioffe-mnist", "--out", str(out)])
    assert res.exit_code == 1 and f"is in use by process {proc.pid}" in res.output, res.output
    Path(str(gate) + ".release").touch()
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "VERDICTS {'waiting': 'supported'}" in text, text
    for run in Waiting().runs(Waiting.scales["smoke"], [0]):   # each run executed once: 3 rows, in order
        d = runner.run_dir(out, run)
        assert [r["step"] for r in ckpt.read_jsonl(d / "metrics.jsonl")] == [0, 1, 2]
        assert runner.load_result(out, run) is not None
    # the lock went with the process: a new reproduce reuses both runs
    res = runner.reproduce([Waiting()], "smoke", out, jobs=1, report=False, echo=lambda m: None)
    assert res["reused"] == 2


TRAIN_CHILD = """
import json, sys
from pathlib import Path
from normlab.train import TrainConfig, train
cfg, out, gate = TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
def gate_hook(ctx):
    if ctx.step == 5:
        Path(str(gate) + ".started").touch()
        while not Path(str(gate) + ".release").exists():
            import time; time.sleep(0.05)
train(cfg, out, hooks=[gate_hook])
"""


def test_second_train_into_one_out_is_refused_and_first_is_intact(root, tmp_path):
    cfg = cfg_for(root, steps=20, eval_every=5, checkpoint_every=10)
    out, gate = tmp_path / "run", tmp_path / "gate"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, json.dumps(cfg.to_dict()), str(out), str(gate)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(Path(str(gate) + ".started"), proc)
    with pytest.raises(records.InUseError, match=f"in use by process {proc.pid} "):
        train(cfg, out)
    with pytest.raises(records.InUseError):
        train(cfg, out, resume=True)
    res = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", "3"], env={"NORMLAB_DATA": str(root)})
    assert res.exit_code == 1 and f"is in use by process {proc.pid}" in res.output, res.output
    Path(str(gate) + ".release").touch()
    assert proc.wait(timeout=120) == 0, proc.communicate()[0]
    steps = [r["step"] for r in ckpt.read_jsonl(out / "metrics.jsonl")]
    assert steps == [0, 5, 10, 15, 20]   # one writer's rows, once each, in order
    assert ckpt.read_json(out / "summary.json")["steps_done"] == 20


def test_lock_is_reentrant_in_one_process_and_dies_with_its_holder(tmp_path):
    with records.DirLock(tmp_path, "outer"), records.DirLock(tmp_path, "inner"):
        pass
    child = f"from normlab import records; records.DirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); " \
            f"import time; time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", child], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(records.InUseError, match=f"process {proc.pid}"):
        records.DirLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with records.DirLock(tmp_path):   # no stale lock after kill -9
        pass


def test_atomic_writes_use_unique_temp_names_under_concurrency(tmp_path):
    # before: a fixed "<name>.tmp" let one writer rename another's temp file away (FileNotFoundError)
    path, errors = tmp_path / "done.json", []

    def writer(i):
        try:
            for j in range(40):
                runner._write_json(path, {"writer": i, "j": j, "pad": "x" * 2000})
        except Exception as e:   # noqa: BLE001 - collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and json.loads(path.read_text())["j"] == 39
    assert os.listdir(tmp_path) == ["done.json"]


def test_checkpoint_and_markers_are_fsynced_before_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    ckpt.save_atomic({"a": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    assert calls[:2] == ["fsync", "replace"] and calls.count("fsync") == 2   # the file, then its directory
    calls.clear()
    runner._write_json(tmp_path / "done.json", {"x": 1})
    assert calls[:2] == ["fsync", "replace"]


def test_jsonl_append_is_o1_and_a_torn_last_line_is_tolerated(tmp_path):
    p = tmp_path / "metrics.jsonl"
    ckpt.append_jsonl_atomic(p, [{"step": 0}])
    inode = p.stat().st_ino
    ckpt.append_jsonl_atomic(p, [{"step": 1}])
    assert p.stat().st_ino == inode   # appended in place; before, every flush copied the file and renamed it
    with open(p, "a") as f:
        f.write('{"step": 2, "loss": 0.12')   # a crash in the middle of an append
    assert ckpt.read_jsonl(p) == [{"step": 0}, {"step": 1}]
    p.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
    with pytest.raises(ValueError, match=f"{p}: line 2 is not JSON"):
        ckpt.read_jsonl(p)


def test_resume_drops_a_torn_last_line(root, tmp_path):
    cfg = cfg_for(root, steps=10, checkpoint_every=10, eval_every=5)
    train(cfg, tmp_path)
    (tmp_path / "summary.json").unlink()   # as if killed right after the last checkpoint, mid-append
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')
    s = train(cfg_for(root, steps=15, checkpoint_every=10, eval_every=5), tmp_path, resume=True)
    assert s["steps_done"] == 15
    assert [r["step"] for r in ckpt.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 5, 10, 15]


def test_corrupt_done_json_is_rerun_not_blocking(tmp_path):
    out = tmp_path / "out"
    runner.reproduce([Waiting()], "smoke", out, jobs=1, report=False, echo=lambda m: None)
    run = Waiting().runs(Waiting.scales["smoke"], [0])[0]
    (runner.run_dir(out, run) / "done.json").write_text('{"value": 1.0, "wal')
    msgs = []
    res = runner.reproduce([Waiting()], "smoke", out, jobs=1, report=False, echo=msgs.append)
    assert res["reused"] == 1 and res["verdicts"] == {"waiting": "supported"}
    assert any("done.json: truncated or not JSON" in m and "will be done again" in m for m in msgs), msgs
    (out / "results" / "waiting.json").write_text("{")
    with pytest.raises(ValueError, match="results/waiting.json: unreadable experiment result"):
        runner.verdict_table(out)


# --------------------------------------------------------------------------------------------- 4. resume that means it
def test_resume_accepts_display_and_logging_changes_and_longer_steps(root, tmp_path):
    base = dict(steps=20, momentum=0.9, checkpoint_every=10, eval_every=10)
    full = train(cfg_for(root, **base), tmp_path / "full")
    train(cfg_for(root, **{**base, "steps": 10}), tmp_path / "cut")
    # before: refused over progress, eval_every, checkpoint_every, device auto/cpu; and steps could not grow
    s = train(cfg_for(root, **{**base, "eval_every": 5, "checkpoint_every": 7, "log_every": 2}, progress=True,
                      device="cpu" if torch.cuda.is_available() else "auto", verbose=False),
              tmp_path / "cut", resume=True)
    assert s["steps_done"] == 20 and s["test_loss"] == full["test_loss"]
    wa = ckpt.load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    wb = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)   # the same weights as the uninterrupted run
    with pytest.raises(ConfigError, match=r"resume: .*different config \(fields lr, momentum differ"):
        train(cfg_for(root, **{**base, "lr": 0.1, "momentum": 0.5}), tmp_path / "cut", resume=True)
    with pytest.raises(ConfigError, match="steps: 15 is fewer than the 20 steps"):
        train(cfg_for(root, **{**base, "steps": 15}), tmp_path / "cut", resume=True)


def test_resume_without_checkpoint_is_an_error_and_deletes_nothing(root, tmp_path):
    train(cfg_for(root, steps=5, checkpoint_every=0), tmp_path)
    (tmp_path / "summary.json").unlink()   # an unfinished run without checkpoints
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="resume: .* holds metrics.jsonl but no checkpoint.pt"):
        train(cfg_for(root, steps=5, checkpoint_every=0), tmp_path, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    r = CliRunner().invoke(cli, ["train", "--resume", "--out", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "has no checkpoint.pt to continue from" in r.output


def test_a_finished_run_is_never_deleted_without_overwrite(root, tmp_path):
    first = train(cfg_for(root, steps=5), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run .*--resume to continue it, or --overwrite"):
        train(cfg_for(root, steps=5, seed=1), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == before and ckpt.read_json(tmp_path / "summary.json") == first
    env = {"NORMLAB_DATA": str(root)}
    args = ["train", "--out", str(tmp_path), "--steps", "4", "--batch-size", "20", "--model-kw", "hidden=[8]",
            "--no-progress"]
    r = CliRunner().invoke(cli, args, env=env)
    assert r.exit_code == 2 and "already holds a run" in r.output
    r = CliRunner().invoke(cli, args + ["--overwrite"], env=env)
    assert r.exit_code == 0, r.output
    assert ckpt.read_json(tmp_path / "summary.json")["steps_done"] == 4


# ------------------------------------------------------------------------------------------ 5. fuse_bn, shared modules
def _bn(c: int, seed: int) -> torch.nn.BatchNorm1d:
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm1d(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
    return bn


def test_fuse_bn_folds_a_layer_shared_in_one_sequential():
    import normlab
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(lin, _bn(4, 1), lin, _bn(4, 2)).eval()   # one Linear used twice
    x = torch.randn(8, 4)
    for strict in (True, False):   # before: strict=False gave max |fused - unfused| of 1-2
        fused = normlab.fuse_bn(model, strict=strict)
        assert torch.allclose(fused(x), model(x), atol=1e-5), (fused(x) - model(x)).abs().max()
        assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fused.modules())
    assert torch.equal(model[0].weight, lin.weight)   # the input model is untouched


def test_fuse_bn_shared_conv_in_two_sub_sequentials_and_tied_weights():
    import normlab
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 1)
    bn2 = lambda s: _bn(2, s)  # noqa: E731 - BatchNorm1d's statistics copied into a 2d BN below
    a, b = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    a.load_state_dict(bn2(3).state_dict())
    b.load_state_dict(bn2(4).state_dict())
    model = torch.nn.Sequential(torch.nn.Sequential(conv, a), torch.nn.ReLU(), torch.nn.Sequential(conv, b),
                                conv).eval()    # and once unfused at the end
    x = torch.randn(3, 2, 5, 5)
    fused = normlab.fuse_bn(model)   # before: KeyError: '2.0'
    assert torch.allclose(fused(x), model(x), atol=1e-5)
    # a weight tied between two different layers is not changed in place
    l1, l2 = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    l2.weight = l1.weight
    tied = torch.nn.Sequential(l1, _bn(3, 5), l2).eval()
    y = torch.randn(4, 3)
    assert torch.allclose(normlab.fuse_bn(tied)(y), tied(y), atol=1e-5)


def test_fuse_bn_refuses_a_shared_layer_in_named_pairs():
    import normlab

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 1)
            self.bn = torch.nn.BatchNorm2d(2)
            self.again = self.conv

        def forward(self, x):
            return self.bn(self.conv(x)) + self.again(x)
    m = Twice().eval()
    with pytest.raises(ValueError, match=r"pairs: 'conv' is one module used in 2 places \(conv, again\)"):
        normlab.fuse_bn(m, pairs=[("conv", "bn")])


# ------------------------------------------------------------------------------- 3. errors that say what is wrong
def test_bad_checkpoint_files_name_the_file_and_the_cause(root, tmp_path):
    good = tmp_path / "good"
    train(cfg_for(root, steps=4, checkpoint_every=2), good)
    data = (good / "checkpoint.pt").read_bytes()
    cases = {"empty.pt": (b"", "empty file"),
             "trunc.pt": (data[: len(data) // 2], "not a readable torch checkpoint"),
             "garbage.pt": (b"hello" * 50, "not a readable torch checkpoint")}
    for name, (content, msg) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ckpt.CheckpointError, match=f"{tmp_path / name}: {msg}"):
            ckpt.load_checkpoint(tmp_path / name)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"sd.pt: not a normlab checkpoint \(no 'version', 'step'"):
        ckpt.load_checkpoint(tmp_path / "sd.pt")
    # through the CLI: before, "Aborted!" (empty) and KeyError: 'config' (a state_dict)
    (good / "checkpoint.pt").write_bytes(b"")
    r = CliRunner().invoke(cli, ["train", "--resume", "--out", str(good), "--steps", "4", "--batch-size", "20",
                                 "--model-kw", "hidden=[32,32]"], env={"NORMLAB_DATA": str(root)})
    assert r.exit_code == 2 and "checkpoint.pt: empty file" in r.output and "Aborted" not in r.output, r.output
    r = CliRunner().invoke(cli, ["diagnose", str(tmp_path / "sd.pt")])
    assert r.exit_code == 2 and "not a normlab checkpoint" in r.output, r.output


def test_a_full_disk_says_no_space_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"step": 1}, path)
    fake_tmp = tmp_path / "never-created.tmp"
    monkeypatch.setattr(records.tempfile, "mkstemp",
                        lambda **kw: (os.open("/dev/full", os.O_WRONLY), str(fake_tmp)))   # every write: ENOSPC
    with pytest.raises(OSError, match="No space left on device") as info:
        ckpt.save_atomic({"w": torch.zeros(10000)}, path)
    assert info.value.filename == str(path)
    assert "disk is full" in records.describe_os_error(info.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


def _cli(args, **env):
    return CliRunner().invoke(cli, args, env=env or None)


@pytest.mark.parametrize("args, msg", [
    (["--norm", "gn:abc"], "norm: 'gn:abc' does not fit model 'mlp': .*expected an int after ':'"),
    (["--norm", "gn:0"], "norm: 'gn:0' .*num_groups: expected a positive int"),
    (["--norm", "gn:7"], "norm: 'gn:7' .*expected a divisor of num_channels=100, got 7"),
    (["--norm", "ghost-bn:0"], "norm: 'ghost-bn:0' .*virtual_batch_size: expected a positive int"),
    (["--norm", "brn:x"], "norm: 'brn:x' .*expected 'brn:R:D'"),
    (["--model-kw", "hidden=0"], "model_kw: hidden expected a list of positive integers"),
    (["--model", "vgg", "--model-kw", "width=abc"], "model_kw: width expected a finite number > 0, got 'abc'"),
    (["--model-kw", "init_std=-1"], "model_kw: init_std expected a finite number > 0, got -1"),
    (["--model-kw", "hidden=[100,-5]"], r"model_kw: hidden expected a list of positive integers.*\[100, -5\]"),
    (["--model-kw", "depth=3"], "model_kw: depth is not a keyword of model 'mlp'; valid: hidden="),
    (["--batch-size", "1", "--norm", "bn"], "batch_size: 1 sample.* too few for norm 'bn'"),
    (["--seed", str(2**40)], "--seed"),
])
def test_bad_cli_values_are_one_line_usage_errors(args, msg, tmp_path):
    r = _cli(["train", "--out", str(tmp_path / "x")] + args)
    assert r.exit_code == 2 and not isinstance(r.exception, (ValueError, TypeError, RuntimeError)), r.output
    import re
    assert re.search(msg, r.output), r.output
    assert not (tmp_path / "x").exists()   # refused before anything was written


def test_more_file_and_folder_errors(root, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = _cli(["train", "--out", str(tmp_path / "afile" / "run"), "--steps", "2"], NORMLAB_DATA=str(root))
    assert r.exit_code == 1 and "afile/run: Not a directory" in r.output and "Traceback" not in r.output, r.output
    r = _cli(["train", "--out", str(tmp_path / "run"), "--steps", "2"], NORMLAB_DATA=str(tmp_path / "afile"))
    assert r.exit_code == 2 and "cannot create the data folder" in r.output and "not a file" in r.output, r.output
    r = _cli(["reproduce", "--only", "", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "empty experiment id" in r.output   # before: ran all 14 experiments
    from normlab.data.readers import read_idx, write_idx
    write_idx(tmp_path / "x.gz", np.arange(5000, dtype=np.uint8).reshape(50, 10, 10))
    raw = bytearray((tmp_path / "x.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF   # one flipped byte: before, a raw zlib.error without the file's name
    (tmp_path / "x.gz").write_bytes(bytes(raw))
    from normlab.data import DataError
    with pytest.raises(DataError, match=f"{tmp_path / 'x.gz'}: (cannot read|truncated or corrupt)"):
        read_idx(tmp_path / "x.gz")


def test_decompression_stops_at_the_header_size(tmp_path, monkeypatch):
    import gzip
    from normlab.data import DataError, readers
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(s).to_bytes(4, "big") for s in (10, 28, 28))
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:
        f.write(header + bytes(20_000_000))   # 20 MB of zeros behind a header announcing 7840 bytes
    sizes = []
    real_open = gzip.open

    def spy(*a, **kw):
        f = real_open(*a, **kw)
        read = f.read
        f.read = lambda n=-1: (sizes.append(n), read(n))[1]
        return f
    monkeypatch.setattr(readers.gzip, "open", spy)
    with pytest.raises(DataError, match="header says shape .10, 28, 28. .7840 bytes., found more"):
        readers.read_idx(tmp_path / "bomb.gz")
    assert max(sizes) == 7841 and -1 not in sizes   # never "read everything"
    with pytest.raises(DataError, match="holds more than 1,000 bytes once decompressed"):
        readers._read_bytes(tmp_path / "bomb.gz", limit=1000)


def test_ctrl_c_says_how_to_resume(root, tmp_path, monkeypatch):
    import normlab.train as train_mod
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--steps", "4", "--batch-size", "20", "--model-kw", "hidden=[32,32]",
            "--checkpoint-every", "2"]
    r = _cli(args, NORMLAB_DATA=str(root))
    assert r.exit_code == 0, r.output

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "train", interrupted)
    r = _cli(args + ["--steps", "8", "--resume"], NORMLAB_DATA=str(root))
    assert r.exit_code == 130 and "keeps the checkpoint at step 4; rerun the same command with --resume" in r.output
    r = _cli(["train", "--out", str(tmp_path / "new"), "--steps", "4"], NORMLAB_DATA=str(root))
    assert r.exit_code == 130 and "before the first checkpoint" in r.output


# --------------------------------------------------------------------------------------- 6. logs readable anywhere
def test_plain_progress_lines_when_stderr_is_not_a_terminal(root, tmp_path, monkeypatch, capsys):
    from normlab import hooks
    monkeypatch.setattr(hooks, "PLAIN_PROGRESS_S", 0.0)   # a line per step (30 s apart normally)
    train(cfg_for(root, steps=6, eval_every=3, progress=True, verbose=False), tmp_path)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("normlab train: step")]
    assert len(lines) == 6 and lines[-1].startswith("normlab train: step 6/6 (100%), loss ")
    assert "test acc" in lines[3] and "(step 3)" in lines[3] and "left" in lines[0]


def test_log_every_on_the_cli_and_threads_for_reproduce(root, tmp_path, monkeypatch):
    r = _cli(["train", "--out", str(tmp_path / "r"), "--steps", "20", "--eval-every", "20", "--batch-size", "20",
              "--model-kw", "hidden=[16]", "--no-progress"], NORMLAB_DATA=str(root))
    assert r.exit_code == 0, r.output
    rows = ckpt.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [x["step"] for x in rows] == [0, 10, 20] and rows[1]["loss"] is not None and "test_acc" not in rows[1]
    import normlab.experiments as ex
    seen = {}

    def fake(chosen, **kw):
        seen.update(kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(ex, "reproduce", fake)
    _cli(["reproduce", "--only", "ioffe-mnist", "--out", str(tmp_path / "o")], OMP_NUM_THREADS="3")
    assert seen["threads"] == 3
    _cli(["reproduce", "--only", "ioffe-mnist", "--threads", "2", "--out", str(tmp_path / "o")], OMP_NUM_THREADS="3")
    assert seen["threads"] == 2


def test_tensorboard_is_optional(root, tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="tensorboard: .*pip install tensorboard"):
            train(cfg_for(root, steps=2), tmp_path, tensorboard=True)
        return
    train(cfg_for(root, steps=2), tmp_path, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------- 2. data validated when loaded
def _npz(root: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), "y_train": np.arange(40) % 10,
            "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "y_test": np.arange(20) % 10}
    base.update(arrays)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "mnist.npz", **base)
    return root


def test_channels_last_images_are_recognized(tmp_path):
    from normlab import data
    plain = data.load("mnist", root=_npz(tmp_path / "a"), download=False)
    x = np.load(tmp_path / "a" / "mnist.npz")
    last = data.load("mnist", root=_npz(tmp_path / "b", x_train=x["x_train"][..., None],
                                        x_test=x["x_test"][..., None]), download=False)
    # before: 28 channels of 28x1 images, std 0 in some, NaN at step 0 reported as divergence
    assert last.in_shape == (1, 28, 28) and torch.equal(last.x_train, plain.x_train)


@pytest.mark.parametrize("change, msg", [
    ({"x_train": np.zeros((40, 28, 28), np.uint8)}, r"x_train\): every pixel is 0; constant images"),
    ({"x_train": np.zeros((40, 784), np.uint8)}, r"flat vectors.*np.reshape\(x, \(-1, 28, 28\)\)"),
    ({"x_test": np.ones((20, 32, 32), np.uint8)}, r"train images are \(28, 28\) but test images are \(32, 32\)"),
    ({"y_train": np.full(40, 1.5)}, r"y_train\): float labels that are not whole numbers"),
    ({"y_train": np.arange(40) % 12}, r"y_train\): labels in \[0, 11\], expected class indices 0..9"),
    ({"y_train": np.zeros((40, 10))}, r"labels of shape \(40, 10\).*argmax"),
    ({"y_test": np.arange(19) % 10}, r"y_test\): 19 labels for 20 images"),
    ({"x_train": np.full((40, 28, 28), np.nan, np.float32)}, r"NaN or infinite"),
    ({"x_train": np.random.default_rng(1).random((40, 28, 28))}, r"expected uint8 pixels 0..255, got float64.*\* 255"),
    ({"x_train": np.zeros((40, 5, 28, 28), np.uint8)}, r"not an image layout"),
])
def test_bad_arrays_are_refused_with_the_file_and_the_fix(change, msg, tmp_path):
    from normlab import data
    root = _npz(tmp_path, **change)
    with pytest.raises(data.DataError, match=f"{root / 'mnist.npz'}.*{msg}"):
        data.load("mnist", root=root, download=False)


def test_labels_n_by_1_and_integral_floats_are_accepted(tmp_path):
    from normlab import data
    ds = data.load("mnist", root=_npz(tmp_path, y_train=(np.arange(40) % 10)[:, None].astype(np.float32)),
                   download=False)
    assert ds.y_train.shape == (40,) and ds.y_train.tolist() == [i % 10 for i in range(40)]
