"""Training: `train(cfg, out_dir, hooks=()) -> summary dict`.

Per step t (0-based): batch t of a seeded per-epoch permutation -> forward -> loss -> backward -> [DDP: average
gradients] -> divergence check -> hooks(ctx) -> optimizer.step(). Metrics rows (step = number of updates done) go to
out_dir/metrics.jsonl, hook rows to out_dir/diagnostics.jsonl, checkpoints to out_dir/checkpoint.pt, and a
summary.json at the end. docs/training.md describes the files and the resume rule.

This module assembles a run: the directory (lock, resume, overwrite), the processes (`--nproc` spawns them), the
data, model and optimizer, and a normlab.loop.Trainer with the hooks of normlab.hooks. The config lives in
normlab.config; its names are re-exported here.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import distributed as dist_mod
from . import fast
from . import hooks as hk
from . import models, records
from .config import (IN_SHAPES, MAX_SEED, NON_RESULT_FIELDS, ConfigError, TrainConfig, check_model, check_model_kw,
                     lr_at, model_kw_defaults, resume_mismatch)
from .hooks import CHECKPOINT, DIAGNOSTICS, METRICS, SUMMARY, evaluate
from .loop import StepContext, Trainer
from .tools import convert_sync_batchnorm

__all__ = ["TrainConfig", "StepContext", "ConfigError", "train", "evaluate", "resolve_device", "resume_mismatch",
           "NON_RESULT_FIELDS", "check_model", "check_model_kw", "model_kw_defaults", "lr_at", "make_optimizer",
           "loss_fn_for", "IN_SHAPES", "MAX_SEED"]

EVAL_SUBSET_SEED = 1234   # the fixed train/test subsets for accuracy do not depend on the run's seed
LOCKED_DIR_ENV = "NORMLAB_LOCKED_DIR"   # set for spawned ranks: their parent holds the run directory's lock


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The torch.device of a --device spec: auto (CUDA when available), cpu, cuda (this rank's GPU) or cuda:N."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} asked for but CUDA is not available; use --device cpu or auto")
        return torch.device(spec if ":" in spec else f"cuda:{local_rank}")
    return torch.device("cpu")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer cfg names (SGD with momentum/weight decay, or Adam) over `params`."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


_DATA_CACHE: dict[tuple, data_mod.Dataset] = {}


def _dataset(cfg: TrainConfig) -> data_mod.Dataset:
    """Load once per process (experiments run many configs on one dataset); the cached tensors are never mutated."""
    seed = cfg.seed if cfg.dataset == "synthetic-linear" else 0   # the only dataset that depends on the seed
    key = (cfg.dataset, cfg.data_root or os.environ.get("NORMLAB_DATA"), seed)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) >= 2:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = data_mod.load(cfg.dataset, root=cfg.data_root, seed=seed)
    return _DATA_CACHE[key]


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
    """k fixed indices of range(n), sorted (all when k is 0 or >= n); they depend on `salt` only."""
    if k == 0 or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED + salt))[:k].sort().values


class Batches:
    """Batch t of the run: slice t % per_epoch of epoch (t // per_epoch)'s permutation, which is seeded by
    (seed, epoch) alone; so the data order is a pure function of the step and resuming needs no sampler state.
    A partial last batch of an epoch is dropped. In DDP, rank r takes the r-th equal share of the global batch.
    batches(t) -> (x, y) on x's device, randomly flipped and cropped when augment=True."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int, rank: int = 0, world: int = 1,
                 augment: bool = False) -> None:
        self.x, self.y, self.n, self.batch, self.seed, self.augment = x, y, len(x), batch, seed, augment
        self.per_epoch = self.n // batch
        self.local = batch // world
        self.offset = rank * self.local
        self.epoch, self.perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.perm, self.epoch = torch.randperm(self.n, generator=g).to(self.x.device), epoch
        start = i * self.batch + self.offset
        return self.perm[start:start + self.local]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step)
        xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
        return (data_mod.augment(xb) if self.augment else xb), yb


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------- entry point
def train(cfg: TrainConfig, out_dir: str | os.PathLike, hooks: Sequence[Callable] = (), resume: bool = False,
          overwrite: bool = False, tensorboard: bool = False) -> dict:
    """Train per `cfg`, writing metrics.jsonl, diagnostics.jsonl, checkpoint.pt and summary.json into out_dir.

    One writer per out_dir: the directory is locked for the run (normlab.records.DirLock); a second train() into it
    raises records.InUseError naming the process that holds it.
    resume=True continues from out_dir/checkpoint.pt when there is one (the result-changing fields must match, see
    NON_RESULT_FIELDS; cfg.steps may be larger than the checkpoint's step), returns the saved summary when the run
    already finished, and starts afresh in an empty out_dir. A folder with records but no checkpoint is an error.
    resume=False refuses a folder that already holds a run's records unless overwrite=True (which deletes them).
    tensorboard=True also writes the metrics rows as TensorBoard scalars to out_dir/tensorboard (optional extra).
    hooks: train hooks h(ctx: StepContext) -> row dict, list of rows, or None; they run on rank 0 only.
    Returns the summary dict ("diverged_at" is None or the step).
    """
    cfg = cfg.validate()
    out = Path(out_dir)
    rank, local_rank, world = dist_mod.env_world()
    # a --nproc parent holds the lock for its spawned ranks; under torchrun, rank 0 takes it
    held_by_parent = os.environ.get(LOCKED_DIR_ENV) == str(out.resolve())
    lock = records.DirLock(out, "normlab train") if rank == 0 and not held_by_parent else contextlib.nullcontext()
    with lock:
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / SUMMARY).exists():   # summary.json is written once a run has ended: nothing to redo
            saved = records.read_json(out / SUMMARY)
            old = saved.get("config") if isinstance(saved, dict) else None
            if isinstance(old, dict) and not resume_mismatch(old, cfg) and old.get("steps") == cfg.steps:
                return saved
        if world == 1 and cfg.nproc > 1:
            dist_mod.spawn(train, cfg.nproc, (cfg, str(out), tuple(hooks), resume, overwrite, tensorboard),
                           env={LOCKED_DIR_ENV: str(out.resolve())})
            return records.read_json(out / SUMMARY)
        return run(cfg, out, list(hooks), resume, rank, local_rank, world, overwrite, tensorboard)


def run(cfg: TrainConfig, out: Path, hooks: list, resume: bool, rank: int, local_rank: int, world: int,
        overwrite: bool = False, tensorboard: bool = False) -> dict:
    """One process's run (rank `rank` of `world`), resumable from a checkpoint; train() calls it."""
    device = resolve_device(cfg.device, local_rank)
    state = _resume_state(cfg, out, resume, overwrite)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist_mod.init(device, cfg.dist_timeout)
    prev_det = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        return _run(cfg, out, hooks if rank == 0 else [], state, device, rank, world, overwrite, tensorboard)
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


@dataclass
class _Setup:
    """What a run trains: the data (on the device), the model, its optimizer and loss, the fixed evaluation subsets."""

    ds: data_mod.Dataset
    batches: Batches
    model: nn.Module
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    loss_fn: Callable
    evaluator: hk.Evaluator


def _setup(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> _Setup:
    """Seed, load and subset the data, build the model (SyncBN, rank 0's weights), optimizer, loss and evaluator.

    The order of these calls fixes what the seeded random stream gives each of them: keep it. The fast kernels are
    prepared here, before the first forward (normlab.fast never builds inside a step)."""
    fast.prepare()
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
        model = convert_sync_batchnorm(model)
    if world > 1:
        dist_mod.broadcast_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    loss_fn, classify = loss_fn_for(cfg, ds)
    ev_tr, ev_te = _subset(len(x_train), cfg.eval_samples, 0), _subset(len(ds.x_test), cfg.eval_samples, 1)
    splits = {"train": (x_train[ev_tr.to(device)], y_train[ev_tr.to(device)]),
              "test": (ds.x_test[ev_te].to(device), ds.y_test[ev_te].to(device))}
    batches = Batches(x_train, y_train, cfg.batch_size, cfg.seed, rank, world, cfg.augment)
    return _Setup(ds, batches, model, params, opt, loss_fn, hk.Evaluator(model, splits, loss_fn, classify))


def _prepare_dir(cfg: TrainConfig, out: Path, state: dict | None, overwrite: bool) -> list[dict]:
    """Rank 0: make out_dir hold exactly what the run continues from; returns the metrics rows already written.

    Resume: drop the rows written after the checkpoint (they are recomputed identically) and the summary of a run
    that is being extended. Fresh: refuse a folder with a run's records unless overwrite, then write config.json."""
    metrics, diagnostics = out / METRICS, out / DIAGNOSTICS
    if state is not None:
        start = state["step"]
        rows = [r for r in ckpt.read_jsonl(metrics) if r["step"] <= start]
        ckpt.append_jsonl_atomic(metrics, rows, rewrite=True)
        diag = [r for r in ckpt.read_jsonl(diagnostics) if r["step"] < start]
        ckpt.append_jsonl_atomic(diagnostics, diag, rewrite=True)
        if start < cfg.steps and (out / SUMMARY).exists():
            (out / SUMMARY).unlink()   # extending a finished run (--steps grew): it is no longer finished
        return rows
    existing = [p for p in (metrics, diagnostics, out / CHECKPOINT, out / SUMMARY) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); pass --resume to "
                          f"continue it, or --overwrite to delete it and start over")
    for p in existing:
        p.unlink()
    ckpt.write_json_atomic(out / "config.json", cfg.to_dict())
    return []


def _run(cfg: TrainConfig, out: Path, hooks: list, state: dict | None, device: torch.device, rank: int, world: int,
         overwrite: bool = False, tensorboard: bool = False) -> dict:
    """Set up, restore the checkpoint `state` (if any), and train with the hooks of normlab.hooks."""
    s = _setup(cfg, device, rank, world)
    start, elapsed = 0, 0.0
    if state is not None:
        s.model.load_state_dict(state["model"])
        s.opt.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start, elapsed = state["step"], state["elapsed"]
    lead = rank == 0
    rows = _prepare_dir(cfg, out, state, overwrite) if lead else []
    if lead and cfg.verbose:
        print(f"normlab train: {s.ds.name} from {s.ds.source}; model {cfg.model} norm {cfg.norm} on {device}"
              + (f" x{world} processes" if world > 1 else "") + (f"; resuming at step {start}" if state else ""),
              file=sys.stderr)
    rec = hk.Records(out, rows, hk.TensorBoard(out, start) if tensorboard and lead else None) if lead else None
    reduce = (lambda loss: dist_mod.average_gradients(s.params, loss, world)) if world > 1 else None
    trainer = Trainer(s.model, s.opt, s.loss_fn, s.batches, reduce, elapsed)
    # on GPU, read the loss back in groups to avoid a sync per step
    monitor = hk.LossMonitor(cfg, 1 if device.type == "cpu" else 16, bool(hooks), state)
    info = {"dataset": s.ds.name, "source": s.ds.source, "train_size": s.batches.n, "test_size": len(s.ds.x_test),
            "eval_sizes": {k: len(x) for k, (x, _) in s.evaluator.splits.items()}, "device": str(device),
            "world_size": world, "num_params": sum(p.numel() for p in s.model.parameters()),
            "config": cfg.canonical()}
    summary = hk.Summary(cfg, monitor, rec, device, info, out / SUMMARY if lead else None)
    trainer.register([hk.LRSchedule(cfg), monitor])
    if lead:   # the records, the user's hooks and the console are rank 0's; every rank holds the same weights
        trainer.register([hk.Instruments(hooks, rec, monitor), hk.Metrics(cfg, rec, monitor, s.evaluator),
                          hk.Progress(cfg, rec, monitor), summary])
        trainer.register([hk.Checkpointer(cfg, out, rec, monitor)] if cfg.checkpoint_every else [])
    else:
        trainer.register([summary])
    trainer.train(start, cfg.steps)
    if lead and cfg.verbose and monitor.diverged_at is not None:
        print(f"normlab train: diverged at step {monitor.diverged_at} (loss {monitor.acc['last_loss']})",
              file=sys.stderr)
    return summary.summary
