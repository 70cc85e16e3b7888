"""The hooks of a training run (normlab.loop.Trainer): everything a run does besides forward, backward and update.

  LRSchedule    before each step: the learning rate of cfg's schedule
  LossMonitor   after backward: reads the loss back, keeps the running loss, stops the run when it diverges
  Instruments   after backward (rank 0): the user's train hooks, called with a StepContext; their rows -> Records
  Metrics       rank 0: the metrics rows (loss, lr, evaluation on fixed subsets) at step 0, log and eval steps, end
  Progress      rank 0: a tqdm bar on a terminal, plain lines every PLAIN_PROGRESS_S seconds otherwise
  Checkpointer  rank 0: checkpoint.pt every cfg.checkpoint_every steps and at the end (rows flushed first)
  Summary       every rank: the summary dict at the end; rank 0 writes summary.json (before the final checkpoint)

Records (metrics.jsonl, diagnostics.jsonl, optional TensorBoard) and Evaluator are the components they share.
normlab.train builds them in that order; a hook reads another's state only through the references it is given.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, lr_at
from .loop import HookBase, StepContext

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
DIAGNOSTICS = "diagnostics.jsonl"
SUMMARY = "summary.json"
PLAIN_PROGRESS_S = 30.0   # seconds between plain progress lines when stderr is not a terminal (nohup, batch jobs)


def every(n: int, done: int) -> bool:
    """Whether `done` updates is a multiple of a period n > 0 (n = 0: never)."""
    return bool(n) and done % n == 0


# ------------------------------------------------------------------------------------------------------- components
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, classify: bool,
             chunk: int = 1000) -> tuple[float, float | None]:
    """(mean loss, accuracy or None) of `model` in eval mode on (x, y), in chunks; restores the train/eval mode."""
    was = model.training
    model.eval()
    total, correct, n = 0.0, 0, len(x)
    for i in range(0, n, chunk):
        out = model(x[i:i + chunk])
        total += float(loss_fn(out, y[i:i + chunk])) * len(out)
        if classify:
            correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    model.train(was)
    return total / max(n, 1), (correct / n if classify and n else None)


class Evaluator:
    """Loss and accuracy on fixed subsets: splits = {"train": (x, y), "test": (x, y)}."""

    def __init__(self, model: nn.Module, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable,
                 classify: bool) -> None:
        self.model, self.splits, self.loss_fn, self.classify = model, splits, loss_fn, classify

    def __call__(self) -> dict[str, float | None]:
        """{"train_loss", "train_acc", "test_loss", "test_acc"} (acc None for regression)."""
        r: dict[str, float | None] = {}
        for split, (x, y) in self.splits.items():
            r[f"{split}_loss"], r[f"{split}_acc"] = evaluate(self.model, x, y, self.loss_fn, self.classify)
        return r


class TensorBoard:
    """The metrics rows as TensorBoard scalars in OUT/tensorboard (torch.utils.tensorboard; needs the optional
    `tensorboard` package). metrics.jsonl stays the record; this is a view of it."""

    def __init__(self, out: Path, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter   # optional extra: imported only when asked for
        except ImportError as e:
            raise ConfigError(f"tensorboard: torch.utils.tensorboard cannot be imported ({e}); install the optional "
                              f"extra: pip install tensorboard") from None
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start or None)

    def rows(self, rows: list[dict]) -> None:
        for r in rows:
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, r["step"])

    def close(self) -> None:
        self.writer.close()


class Records:
    """metrics.jsonl and diagnostics.jsonl of a run (rank 0). Rows wait in `pending` / `diag_pending` and are
    appended by flush() (at evaluations, checkpoints and the end); `rows` holds the metrics rows written so far."""

    def __init__(self, out: Path, rows: list[dict] | None = None, tensorboard: TensorBoard | None = None) -> None:
        self.metrics, self.diagnostics = out / METRICS, out / DIAGNOSTICS
        self.rows: list[dict] = list(rows or [])
        self.pending: list[dict] = []
        self.diag_pending: list[dict] = []
        self.tb = tensorboard

    def flush(self, sync: bool = False) -> None:
        """Append the pending rows (sync=True: fsync them, before a checkpoint that counts them)."""
        if self.tb is not None:
            self.tb.rows(self.pending)
        ckpt.append_jsonl_atomic(self.metrics, self.pending, fsync=sync)
        ckpt.append_jsonl_atomic(self.diagnostics, self.diag_pending, fsync=sync)
        self.rows.extend(self.pending)
        self.pending.clear()
        self.diag_pending.clear()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def peak_memory(device: torch.device) -> dict:
    """{"peak_rss_mb"} of this process (and "peak_cuda_mb" on CUDA)."""
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


# ------------------------------------------------------------------------------------------------------------ hooks
class LRSchedule(HookBase):
    """Sets every param group's lr to lr_at(cfg, step) before the first step and whenever the schedule changes it."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.lr = cfg, None

    def _set(self, lr: float) -> None:
        self.lr = lr
        for g in self.trainer.optimizer.param_groups:
            g["lr"] = lr

    def before_train(self) -> None:
        self._set(lr_at(self.cfg, self.trainer.start))

    def before_step(self) -> None:
        lr = lr_at(self.cfg, self.trainer.step)
        if lr != self.lr:
            self._set(lr)


class LossMonitor(HookBase):
    """Reads the loss back and stops the run when it diverges (not finite, or above cfg.diverge_loss, by default
    1000 * max(1, loss at step 0)): `diverged_at` is then that step.

    On CPU the loss is read every step; on GPU in groups of 16 (a read is a device sync), and at every step where
    a row, a checkpoint or a train hook needs it (`every_step`). `acc` is the running loss since the last metrics
    row (checkpointed, so a resumed run writes the same rows); `value` is this step's loss when it was read."""

    def __init__(self, cfg: TrainConfig, check_every: int, every_step: bool, state: dict | None = None) -> None:
        self.cfg, self.check_every, self.every_step = cfg, check_every, every_step
        self.acc = {"loss_sum": 0.0, "loss_n": 0, "last_loss": None}
        self.loss0 = None
        if state is not None:
            self.acc.update(state["acc"])
            self.loss0 = state["loss0"]
        self.losses: list[torch.Tensor] = []
        self.value: float | None = None
        self.diverged_at: int | None = None

    def _needed(self, done: int) -> bool:
        c = self.cfg
        return (len(self.losses) >= self.check_every or self.every_step or every(c.eval_every, done)
                or every(c.log_every, done) or every(c.checkpoint_every, done) or done == c.steps)

    def after_backward(self) -> None:
        t = self.trainer.step
        self.losses.append(self.trainer.loss.detach())
        self.value = None
        if not self._needed(t + 1):
            return
        values = [float(self.losses[0])] if len(self.losses) == 1 else torch.stack(self.losses).tolist()
        first = t - len(values) + 1
        self.losses.clear()
        if self.loss0 is None:
            self.loss0 = values[0]
        bound = self.cfg.diverge_loss or 1000.0 * max(1.0, abs(self.loss0))
        for j, v in enumerate(values):
            self.acc["last_loss"] = v
            if not math.isfinite(v) or v > bound:
                self.diverged_at = first + j
                self.trainer.stop = True
                return
            self.acc["loss_sum"] += v
            self.acc["loss_n"] += 1
        self.value = values[-1]

    def take_mean(self) -> tuple[float | None, float | None]:
        """(last loss, mean loss since the last call or None), and restart the mean."""
        n = self.acc["loss_n"]
        mean = self.acc["loss_sum"] / n if n else None
        self.acc["loss_sum"], self.acc["loss_n"] = 0.0, 0
        return self.acc["last_loss"], mean


def _hook_name(hook: Any) -> str:
    """The hook's `name` attribute, else a plain function's __name__, else its class name."""
    name = getattr(hook, "name", None)
    if not name and type(hook).__name__ == "function":
        name = hook.__name__
    return str(name or type(hook).__name__)


def _rows(result: Any) -> list[dict]:
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    return list(result)


class Instruments(HookBase):
    """Calls each train hook h(ctx: StepContext) after backward; every row it returns (a dict, a list of dicts, or
    None) goes to diagnostics.jsonl as {"step": t, "hook": name, **row}."""

    def __init__(self, hooks: Sequence[Callable], records: Records, monitor: LossMonitor) -> None:
        self.hooks, self.records, self.monitor = list(hooks), records, monitor
        self.names = [_hook_name(h) for h in self.hooks]

    def after_backward(self) -> None:
        tr = self.trainer
        lr = tr.optimizer.param_groups[0]["lr"]
        ctx = StepContext(tr.step, tr.model, tr.x, tr.y, tr.loss_fn, tr.optimizer, lr, tr.loss, self.monitor.value)
        for h, name in zip(self.hooks, self.names):
            for r in _rows(h(ctx)):
                self.records.diag_pending.append({"step": tr.step, "hook": name, **r})


class Metrics(HookBase):
    """The metrics rows: {"step", "loss", "loss_avg", "lr", [train/test loss and acc,] "time"} at step 0 (a fresh
    run), every cfg.log_every steps (no evaluation), every cfg.eval_every steps and at the end (with evaluation);
    a final {"step", "loss", "diverged": true, "lr", "time"} row when the run diverged. step = updates done."""

    def __init__(self, cfg: TrainConfig, records: Records, monitor: LossMonitor, evaluator: Evaluator) -> None:
        self.cfg, self.records, self.monitor, self.evaluator = cfg, records, monitor, evaluator

    def _row(self, step: int, with_eval: bool) -> dict:
        last, mean = self.monitor.take_mean()
        r = {"step": step, "loss": last, "loss_avg": mean, "lr": lr_at(self.cfg, step)}
        if with_eval:
            r.update(self.evaluator())
        r["time"] = round(self.trainer.elapsed(), 4)
        return r

    def before_train(self) -> None:
        if self.trainer.start == 0:
            self.records.pending.append(self._row(0, True))
            self.records.flush()

    def after_step(self) -> None:
        done, cfg = self.trainer.step + 1, self.cfg
        evaluated = every(cfg.eval_every, done) or done == cfg.steps
        if evaluated or every(cfg.log_every, done):
            self.records.pending.append(self._row(done, evaluated))
            if evaluated:
                self.records.flush()

    def after_train(self) -> None:
        if self.monitor.diverged_at is not None:
            self.records.pending.append({"step": self.monitor.diverged_at, "loss": self.monitor.acc["last_loss"],
                                         "diverged": True, "lr": self.trainer.optimizer.param_groups[0]["lr"],
                                         "time": round(self.trainer.wall, 4)})
        self.records.flush()
        self.records.close()


class PlainProgress:
    """One line on stderr every PLAIN_PROGRESS_S seconds and at the end, for logs that are files, not terminals:
    'normlab train: step 400/2000 (20%), loss 0.41, test acc 0.91, 35.2 steps/s, ~45s left'."""

    def __init__(self, cfg: TrainConfig, start: int) -> None:
        self.cfg, self.start = cfg, start
        self.t0 = self.last = time.monotonic()

    def step(self, done: int, loss: float | None, row: dict) -> None:
        now = time.monotonic()
        if now - self.last < PLAIN_PROGRESS_S and done != self.cfg.steps:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        line = f"normlab train: step {done}/{self.cfg.steps} ({100 * done // max(1, self.cfg.steps)}%)"
        if loss is not None:
            line += f", loss {loss:.4g}"
        if row.get("test_acc") is not None:
            line += f", test acc {row['test_acc']:.4f} (step {row['step']})"
        line += f", {rate:.1f} steps/s"
        if done < self.cfg.steps and rate > 0:
            line += f", ~{(self.cfg.steps - done) / rate:.0f}s left"
        print(line, file=sys.stderr, flush=True)


class Progress(HookBase):
    """A tqdm bar when stderr is a terminal (loss and test accuracy of the last evaluation as its postfix), else
    PlainProgress lines; each shows the last metrics row written before the step. Register it after Metrics."""

    def __init__(self, cfg: TrainConfig, records: Records, monitor: LossMonitor) -> None:
        self.cfg, self.records, self.monitor = cfg, records, monitor
        self.shown: dict = {}

    def before_train(self) -> None:
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=self.cfg.steps, initial=self.trainer.start, disable=not (self.cfg.progress and tty),
                        mininterval=0.5, dynamic_ncols=True, desc=f"{self.cfg.model}/{self.cfg.norm}")
        self.plain = PlainProgress(self.cfg, self.trainer.start) if self.cfg.progress and not tty else None

    def before_step(self) -> None:
        self.shown = self.records.rows[-1] if self.records.rows else {}

    def after_step(self) -> None:
        done = self.trainer.step + 1
        self.bar.update(1)
        if self.plain is not None:
            self.plain.step(done, self.monitor.acc["last_loss"], self.shown)
        row = self.records.rows[-1] if self.records.rows else {}
        if row.get("step") == done and "test_loss" in row:   # Metrics evaluated at this step
            self.bar.set_postfix(loss=f"{self.monitor.acc['last_loss']:.4g}", test_acc=row.get("test_acc"),
                                 refresh=False)

    def after_train(self) -> None:
        self.bar.close()


class Checkpointer(HookBase):
    """checkpoint.pt (normlab.checkpoint.save_atomic) every cfg.checkpoint_every updates and, when that is not 0,
    at the end; the rows it counts are flushed (fsync) first. It holds model, optimizer, the random states, the
    step, the LossMonitor's running loss and the config; see docs/training.md for the resume rule."""

    def __init__(self, cfg: TrainConfig, out: Path, records: Records, monitor: LossMonitor) -> None:
        self.cfg, self.path, self.records, self.monitor = cfg, out / CHECKPOINT, records, monitor

    def save(self, step: int, elapsed: float, done: bool, diverged: bool = False) -> None:
        self.records.flush(True)   # the rows the checkpoint counts are on disk before it is
        tr = self.trainer
        ckpt.save_atomic({"version": 1, "step": step, "done": done, "diverged": diverged, "elapsed": elapsed,
                          "loss0": self.monitor.loss0, "acc": dict(self.monitor.acc), "model": tr.model.state_dict(),
                          "optimizer": tr.optimizer.state_dict(), "rng": ckpt.rng_state(),
                          "config": self.cfg.canonical()}, self.path)

    def after_step(self) -> None:
        done = self.trainer.step + 1
        if every(self.cfg.checkpoint_every, done) and done < self.cfg.steps:
            self.save(done, self.trainer.elapsed(), False)

    def after_train(self) -> None:
        if self.cfg.checkpoint_every:
            diverged = self.monitor.diverged_at is not None
            self.save(self.monitor.diverged_at if diverged else self.cfg.steps, self.trainer.wall, True, diverged)


class Summary(HookBase):
    """The run's summary dict (`self.summary`) at the end: status, diverged_at, steps_done, the last evaluated row
    ("final", and its accuracies and losses), wall time, peak memory, then `info` (data, device, sizes, config).
    With `path` (rank 0) it is written there; register it before the Checkpointer, so summary.json (the mark of
    a finished run) is on disk before the final checkpoint."""

    def __init__(self, cfg: TrainConfig, monitor: LossMonitor, records: Records | None, device: torch.device,
                 info: dict, path: Path | None) -> None:
        self.cfg, self.monitor, self.records, self.device, self.info, self.path = \
            cfg, monitor, records, device, info, path
        self.summary: dict = {}

    def after_train(self) -> None:
        at = self.monitor.diverged_at
        rows = self.records.rows if self.records is not None else []
        final = next((r for r in reversed(rows) if "test_loss" in r), {})
        self.summary = {"status": "diverged" if at is not None else "completed", "diverged_at": at,
                        "steps_done": at if at is not None else self.cfg.steps, "final": final,
                        **{k: final.get(k) for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
                        "wall_time_s": round(self.trainer.wall, 3), **peak_memory(self.device), **self.info}
        if self.path is not None:
            ckpt.write_json_atomic(self.path, self.summary)
