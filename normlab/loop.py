"""The body of normlab.train.train(): one process's run (rank `rank` of `world`), resumable from a checkpoint."""
from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import distributed as dist_mod
from . import models
from .train import (CHECKPOINT, DIAGNOSTICS, EVAL_SUBSET_SEED, METRICS, NON_RESULT_FIELDS, SUMMARY, ConfigError,
                    StepContext, TrainConfig, _dataset, _hook_name, _rows, evaluate, lr_at, make_optimizer,
                    resolve_device, resume_mismatch)


class _Batches:
    """Batch t of the run: slice t % per_epoch of epoch (t // per_epoch)'s permutation, which is seeded by
    (seed, epoch) alone; so the data order is a pure function of the step and resuming needs no sampler state.
    A partial last batch of an epoch is dropped. In DDP, rank r takes the r-th equal share of the global batch."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.device = n, batch, seed, device
        self.per_epoch = n // batch
        self.local = batch // world
        self.offset = rank * self.local
        self.epoch, self.perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.perm, self.epoch = torch.randperm(self.n, generator=g).to(self.device), epoch
        start = i * self.batch + self.offset
        return self.perm[start:start + self.local]


def loss_fn_for(cfg: TrainConfig, ds: data_mod.Dataset) -> tuple[Callable, bool]:
    """(loss(out, y), is_classification) for cfg.loss on ds; "auto" is MSE for regression, cross-entropy otherwise."""
    kind = cfg.loss if cfg.loss != "auto" else ("mse" if ds.task == "regression" else "ce")
    if kind == "ce" and ds.task == "regression":
        raise ConfigError(f"loss: 'ce' needs class labels but {ds.name} is a regression dataset; use 'mse'")
    if kind == "mse" and ds.task == "classification":
        num = ds.num_classes

        def mse_onehot(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.mse_loss(out, nn.functional.one_hot(y, num).to(out.dtype))
        return mse_onehot, True
    return (nn.functional.cross_entropy if kind == "ce" else nn.functional.mse_loss), ds.task == "classification"


def _subset(n: int, k: int, salt: int) -> torch.Tensor:
    if k == 0 or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED + salt))[:k].sort().values


def _peak_memory(device: torch.device) -> dict:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: TrainConfig, out: Path, hooks: list, resume: bool, rank: int, local_rank: int, world: int,
        overwrite: bool = False, tensorboard: bool = False) -> dict:
    device = resolve_device(cfg.device, local_rank)
    state = _resume_state(cfg, out, resume, overwrite)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist_mod.init(device, cfg.dist_timeout)
    lead = rank == 0
    hooks = hooks if lead else []   # hooks run on rank 0 only
    prev_det = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        return _run(cfg, out, hooks, state, device, rank, world, lead, overwrite, tensorboard)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        if world > 1:
            dist_mod.shutdown()


def _resume_state(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint to continue from (resume=True), checked against cfg; None for a fresh run.

    Errors: resume with records but no checkpoint; a checkpoint of another config (result-changing fields only);
    fewer steps than the checkpoint has done; extending a run that diverged."""
    ckpt_path = out / CHECKPOINT
    if not resume:
        return None
    if not ckpt_path.exists():
        left = [n for n in (METRICS, SUMMARY) if (out / n).exists()]
        if left and not overwrite:
            raise ConfigError(f"resume: {out} holds {', '.join(left)} but no {CHECKPOINT} to continue from (the run "
                              f"had checkpoint_every=0 or was stopped before its first checkpoint); run again "
                              f"without --resume and with --overwrite to start it over")
        return None
    state = ckpt.load_checkpoint(ckpt_path)
    diff = resume_mismatch(state["config"], cfg)
    if diff:
        shown = "; ".join(f"{k}: {state['config'].get(k)!r} -> {cfg.canonical().get(k)!r}" for k in diff)
        raise ConfigError(f"resume: {ckpt_path} was written by a different config (fields {', '.join(diff)} "
                          f"differ: {shown}); only {', '.join(NON_RESULT_FIELDS)} may change on resume")
    if cfg.steps < state["step"]:
        raise ConfigError(f"steps: {cfg.steps} is fewer than the {state['step']} steps {ckpt_path} has done; on "
                          f"resume --steps may only stay or grow")
    if state.get("diverged") and cfg.steps > state["step"]:
        raise ConfigError(f"steps: the run in {out} diverged at step {state['step']}; it cannot be extended")
    return state


PLAIN_PROGRESS_S = 30.0   # seconds between plain progress lines when stderr is not a terminal (nohup, batch jobs)


class _PlainProgress:
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


class _TensorBoard:
    """The metrics rows as TensorBoard scalars in OUT/tensorboard (torch.utils.tensorboard; needs the optional
    `tensorboard` package). metrics.jsonl stays the record; this is a view of it."""

    def __init__(self, out: Path, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
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


def _run(cfg: TrainConfig, out: Path, hooks: list, state: dict | None, device: torch.device, rank: int, world: int,
         lead: bool, overwrite: bool = False, tensorboard: bool = False) -> dict:
    _seed_all(cfg.seed)
    ds = _dataset(cfg)
    x_train, y_train = ds.x_train, ds.y_train
    if cfg.train_samples:
        if cfg.train_samples > len(x_train):
            raise ConfigError(f"train_samples: {cfg.train_samples} is more than the {ds.name} training set has "
                              f"({len(x_train)} samples)")
        keep = _subset(len(x_train), cfg.train_samples, 2)
        x_train, y_train = x_train[keep], y_train[keep]
    if cfg.batch_size > len(x_train):
        raise ConfigError(f"batch_size: {cfg.batch_size} is larger than the {ds.name} training set "
                          f"({len(x_train)} samples{' kept by train_samples' if cfg.train_samples else ''})")
    x_train, y_train = x_train.to(device), y_train.to(device)
    model = models.build(cfg.model, cfg.norm, ds.in_shape, ds.num_classes, cfg.init, **dict(cfg.model_kw)).to(device)
    if world > 1 and cfg.sync_bn:
        from .tools import convert_sync_batchnorm   # written alongside; imported only when asked for
        model = convert_sync_batchnorm(model)
    if world > 1:
        dist_mod.broadcast_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    loss_fn, classify = loss_fn_for(cfg, ds)
    ev_tr, ev_te = _subset(len(x_train), cfg.eval_samples, 0), _subset(len(ds.x_test), cfg.eval_samples, 1)
    ev = {"train": (x_train[ev_tr.to(device)], y_train[ev_tr.to(device)]),
          "test": (ds.x_test[ev_te].to(device), ds.y_test[ev_te].to(device))}
    batches = _Batches(len(x_train), cfg.batch_size, cfg.seed, device, rank, world)

    start, elapsed, loss0 = 0, 0.0, None
    rows: list[dict] = []
    metrics_path, diag_path = out / METRICS, out / DIAGNOSTICS
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start, elapsed, loss0 = state["step"], state["elapsed"], state["loss0"]
        if lead:   # drop rows written after the checkpoint; they are recomputed identically
            rows = [r for r in ckpt.read_jsonl(metrics_path) if r["step"] <= start]
            ckpt.append_jsonl_atomic(metrics_path, rows, rewrite=True)
            diag = [r for r in ckpt.read_jsonl(diag_path) if r["step"] < start]
            ckpt.append_jsonl_atomic(diag_path, diag, rewrite=True)
        if lead and state["step"] < cfg.steps and (out / SUMMARY).exists():
            (out / SUMMARY).unlink()   # extending a finished run (--steps grew): it is no longer finished
    elif lead:
        existing = [p for p in (metrics_path, diag_path, out / CHECKPOINT, out / SUMMARY) if p.exists()]
        if existing and not overwrite:
            raise ConfigError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); pass --resume to "
                              f"continue it, or --overwrite to delete it and start over")
        for p in existing:
            p.unlink()
        ckpt.write_json_atomic(out / "config.json", cfg.to_dict())
    if lead and cfg.verbose:
        print(f"normlab train: {ds.name} from {ds.source}; model {cfg.model} norm {cfg.norm} on {device}"
              + (f" x{world} processes" if world > 1 else "") + (f"; resuming at step {start}" if state else ""),
              file=sys.stderr)

    tb = _TensorBoard(out, start) if tensorboard and lead else None
    pending: list[dict] = []     # rows not yet flushed to disk
    diag_pending: list[dict] = []
    acc = {"loss_sum": 0.0, "loss_n": 0, "last_loss": None}   # running loss since the last row (checkpointed)
    if state is not None:
        acc.update(state["acc"])
    diverged_at = None
    t_run = time.perf_counter() - elapsed   # wall clock of this run, continued across resumes

    def row(step: int, with_eval: bool) -> dict:
        n = acc["loss_n"]
        r = {"step": step, "loss": acc["last_loss"], "loss_avg": acc["loss_sum"] / n if n else None,
             "lr": lr_at(cfg, step)}
        acc["loss_sum"], acc["loss_n"] = 0.0, 0
        if with_eval:
            for split in ("train", "test"):
                ev_loss, ev_acc = evaluate(model, *ev[split], loss_fn, classify)
                r[f"{split}_loss"], r[f"{split}_acc"] = ev_loss, ev_acc
        r["time"] = round(time.perf_counter() - t_run, 4)
        return r

    def flush(sync: bool = False) -> None:
        if tb is not None:
            tb.rows(pending)
        ckpt.append_jsonl_atomic(metrics_path, pending, fsync=sync)
        ckpt.append_jsonl_atomic(diag_path, diag_pending, fsync=sync)
        rows.extend(pending)
        pending.clear()
        diag_pending.clear()

    if start == 0 and lead:
        pending.append(row(0, True))
        flush()

    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead and sys.stderr.isatty()),
               mininterval=0.5, dynamic_ncols=True, desc=f"{cfg.model}/{cfg.norm}")
    plain = _PlainProgress(cfg, start) if cfg.progress and lead and not sys.stderr.isatty() else None
    lr = lr_at(cfg, start)
    for g in opt.param_groups:
        g["lr"] = lr
    check_every = 1 if device.type == "cpu" else 16   # on GPU, read the loss back in groups to avoid a sync per step
    losses: list[torch.Tensor] = []
    model.train()
    for t in range(start, cfg.steps):
        new_lr = lr_at(cfg, t)
        if new_lr != lr:
            lr = new_lr
            for g in opt.param_groups:
                g["lr"] = lr
        idx = batches.indices(t)
        xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)
        if cfg.augment:
            xb = data_mod.augment(xb)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            loss = dist_mod.average_gradients(params, loss, world)
        done = t + 1
        at_eval = cfg.eval_every and done % cfg.eval_every == 0
        at_log = cfg.log_every and done % cfg.log_every == 0
        at_ckpt = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
        losses.append(loss.detach())
        value = None
        if len(losses) >= check_every or hooks or at_eval or at_log or at_ckpt or done == cfg.steps:
            values = [float(losses[0])] if len(losses) == 1 else torch.stack(losses).tolist()
            first = t - len(values) + 1
            losses.clear()
            if loss0 is None:
                loss0 = values[0]
            bound = cfg.diverge_loss or 1000.0 * max(1.0, abs(loss0))
            for j, v in enumerate(values):
                acc["last_loss"] = v
                if not math.isfinite(v) or v > bound:
                    diverged_at = first + j
                    break
                acc["loss_sum"] += v
                acc["loss_n"] += 1
            if diverged_at is not None:
                break
            value = values[-1]
        if hooks:
            ctx = StepContext(t, model, xb, yb, loss_fn, opt, lr, loss, value)
            for h in hooks:
                for r in _rows(h(ctx)):
                    diag_pending.append({"step": t, "hook": _hook_name(h), **r})
        opt.step()
        bar.update(1)
        if plain is not None:
            plain.step(done, acc["last_loss"], rows[-1] if rows else {})
        if lead and (at_eval or at_log or done == cfg.steps):
            pending.append(row(done, bool(at_eval) or done == cfg.steps))
            if at_eval or done == cfg.steps:
                bar.set_postfix(loss=f"{acc['last_loss']:.4g}", test_acc=pending[-1].get("test_acc"), refresh=False)
                flush()
        if at_ckpt and done < cfg.steps:
            _save(cfg, out, model, opt, done, time.perf_counter() - t_run, loss0, acc, lead, flush, False)
    bar.close()
    if tb is not None:
        tb.close()
    wall = time.perf_counter() - t_run
    if diverged_at is not None and lead:
        pending.append({"step": diverged_at, "loss": acc["last_loss"], "diverged": True, "lr": lr,
                        "time": round(wall, 4)})
        if cfg.verbose:
            print(f"normlab train: diverged at step {diverged_at} (loss {acc['last_loss']})", file=sys.stderr)
    if lead:
        flush()
    final = next((r for r in reversed(rows) if "test_loss" in r), {})
    summary = {"status": "diverged" if diverged_at is not None else "completed", "diverged_at": diverged_at,
               "steps_done": diverged_at if diverged_at is not None else cfg.steps,
               "final": final, **{k: final.get(k) for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
               "wall_time_s": round(wall, 3),
               **_peak_memory(device), "dataset": ds.name, "source": ds.source, "train_size": len(x_train),
               "test_size": len(ds.x_test), "eval_sizes": {"train": len(ev_tr), "test": len(ev_te)},
               "device": str(device), "world_size": world, "num_params": sum(p.numel() for p in model.parameters()),
               "config": cfg.canonical()}
    if lead:
        ckpt.write_json_atomic(out / SUMMARY, summary)
        if cfg.checkpoint_every:
            _save(cfg, out, model, opt, summary["steps_done"], wall, loss0, acc, lead, flush, True,
                  diverged_at is not None)
    return summary


def _save(cfg: TrainConfig, out: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, elapsed: float,
          loss0: float | None, acc: dict, lead: bool, flush: Callable, done: bool, diverged: bool = False) -> None:
    """Flush rows, then write the checkpoint (rank 0 only; every rank holds the same weights)."""
    if not lead:
        return
    flush(True)   # the rows the checkpoint counts are on disk before it is
    ckpt.save_atomic({"version": 1, "step": step, "done": done, "diverged": diverged, "elapsed": elapsed,
                      "loss0": loss0, "acc": dict(acc), "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "rng": ckpt.rng_state(), "config": cfg.canonical()}, out / CHECKPOINT)
