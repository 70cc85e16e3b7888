"""The training configuration: `TrainConfig` (every setting of a run, checked by `validate()`), the checks of a model's
keywords against its constructor, the learning-rate schedule, and which fields a resumed run may change.

normlab.train re-exports these names (`from normlab.train import TrainConfig` keeps working).
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from . import data as data_mod
from . import models
from .layers import factory

__all__ = ["TrainConfig", "ConfigError", "MAX_SEED", "NON_RESULT_FIELDS", "check_model", "check_model_kw",
           "model_kw_defaults", "lr_at", "resume_mismatch", "IN_SHAPES"]

MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A bad TrainConfig value; the message names the field and the expected form."""


# What models.build passes itself; the other parameters of a model's constructor are its model_kw.
_BUILD_SUPPLIES = {"self", "in_features", "in_shape", "num_classes", "norm", "d"}
_BUILD_EXTRAS = {"init_std": 0.1}               # every model: the std of the gaussian/ioffe init


def model_kw_defaults(model: str) -> dict[str, Any]:
    """The keywords `model` takes in model_kw and their defaults, read from its constructor's signature."""
    cls = models.MODELS.get(model)
    kw = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n not in _BUILD_SUPPLIES}
    kw.update(_BUILD_EXTRAS)
    if model == "resnet":
        kw["zero_init_residual"] = True   # read by models.build itself
    return kw


def _kw_ok(value: Any, default: Any) -> str | None:
    """None when `value` has the form of the parameter whose default is `default`, else the expected form."""
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                      for v in value)
        return None if ok else "a list of positive integers, e.g. [100,100]"
    if isinstance(default, int):
        low = 0 if default == 0 else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"an integer >= {low}"
    if isinstance(default, float):
        return None if num(value) and value > 0 else "a finite number > 0"
    if isinstance(default, str):   # a name the model checks itself (VGG's cfg may also be a list)
        return None if isinstance(value, (str, list)) else "a name (string)"
    return None


def check_model_kw(model: str, kw: dict) -> None:
    """ConfigError when model_kw has a keyword `model`'s constructor does not take, or a value of the wrong form."""
    if model not in models.MODELS:
        return
    known = model_kw_defaults(model)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ConfigError(f"model_kw: {', '.join(unknown)} is not a keyword of model {model!r}; valid: "
                          + ", ".join(f"{k}={json.dumps(v) if not isinstance(v, float) else v}"
                                      for k, v in known.items()))
    for k, v in kw.items():
        want = _kw_ok(v, known[k])
        if want is not None:
            raise ConfigError(f"model_kw: {k} expected {want}, got {v!r}")


IN_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "mnist-5k": (1, 28, 28), "cifar10": (3, 32, 32),
             "synthetic-linear": (10,)}   # one input's shape per dataset, known without loading it


def check_model(cfg: "TrainConfig") -> list[str]:
    """Build cfg's model on its dataset's input shape (no data loaded) and, for a batch of at most 16 per process,
    run one forward pass of zeros in train mode: catches a bad norm spec for the model's real channel counts
    (gn:7 on 100 features), model_kw values the model refuses, and too few samples per batch for batch statistics
    (--batch-size 1 with bn) before the data loads. Raises ConfigError naming the field; returns notes on what
    the factory adapted (gn:G on a layer with fewer than G channels gets one group per channel)."""
    shape = IN_SHAPES.get(cfg.dataset)
    if shape is None:
        return []
    classes = shape[0] if cfg.model == "linear" else 10
    try:
        models.build(cfg.model, "none", shape, classes, cfg.init, **dict(cfg.model_kw))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"model_kw: model {cfg.model!r} cannot be built with {cfg.model_kw}: {e}") from None
    try:
        model = models.build(cfg.model, cfg.norm, shape, classes, cfg.init, **dict(cfg.model_kw))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"norm: {cfg.norm!r} does not fit model {cfg.model!r}: {e} (valid forms: "
                          f"{factory.forms()})") from None
    local = cfg.batch_size // max(1, cfg.nproc)
    if local <= 16:
        try:
            with torch.no_grad():
                model.train()(torch.zeros(local, *shape))
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"batch_size: {local} sample(s) per process is too few for norm {cfg.norm!r} on "
                              f"model {cfg.model!r} ({str(e).splitlines()[0]}); use a larger --batch-size") from None
    name, _, arg = cfg.norm.strip().lower().partition(":")
    groups = int(arg) if name == "gn" and arg.isdigit() else 32 if name == "gn" else None
    small = [m.num_channels for m in model.modules() if groups and getattr(m, "num_groups", groups) < groups]
    if small:
        return [f"norm {cfg.norm}: {len(small)} layer(s) have fewer than {groups} channels ({min(small)} at least) "
                f"and get one group per channel there"]
    return []


@dataclass
class TrainConfig:
    """Every setting of one training run; `validate()` checks them all and names the field of a bad one.

    The defaults here are the only ones: `normlab train`'s options read them (cli.py), and experiments hash the full
    dict (`to_dict()`), defaults included. Example: TrainConfig(norm="bn", steps=200).validate()."""

    model: str = "mlp"                 # models.build name: mlp | vgg | linear | resnet
    norm: str = "none"                 # factory spec: none | bn | gn:8 | ln | in | ...
    dataset: str = "mnist"             # data.load name
    optimizer: str = "sgd"             # sgd | adam
    lr: float = 0.1
    momentum: float = 0.0              # SGD momentum (Adam ignores it)
    weight_decay: float = 0.0
    batch_size: int = 60               # global batch (split evenly over DDP processes)
    steps: int = 1000
    seed: int = 0
    eval_every: int = 100              # evaluate every N updates (and at 0 and at the end); 0 = only at 0 and the end
    eval_samples: int = 1000           # size of the fixed test subset and train subset for accuracy; 0 = whole split
    schedule: str = "constant"         # constant | step (lr * lr_gamma ** (number of milestones <= step))
    lr_milestones: tuple = ()
    lr_gamma: float = 0.1
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    loss: str = "auto"                 # ce | mse | auto (ce for classification, mse for regression datasets)
    init: str = "default"              # models.build init scheme
    model_kw: dict = field(default_factory=dict)
    augment: bool = False              # random flips and 4-pixel crops of training batches (CIFAR)
    train_samples: int = 0             # train on a fixed subset of this many training samples; 0 = all
    deterministic: bool = False        # torch.use_deterministic_algorithms for the run
    checkpoint_every: int = 1000       # 0 = no checkpoints
    diverge_loss: float | None = None  # loss above this ends the run; None = 1000 * max(1, loss at step 0)
    log_every: int = 0                 # loss-only rows between evaluations; 0 = none
    progress: bool = True              # tqdm bar (only when stderr is a terminal)
    verbose: bool = True               # one line on stderr: dataset, source, device (and divergence)
    nproc: int = 1                     # processes for data-parallel training (spawned on loopback)
    sync_bn: bool = False              # convert BN layers to normlab's SyncBatchNorm when nproc > 1
    dist_timeout: float = 120.0        # seconds before a collective gives up
    data_root: str | None = None       # data dir (default $NORMLAB_DATA or ~/.cache/normlab)

    def validate(self) -> "TrainConfig":
        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"{name}: expected {want}, got {getattr(self, name)!r}")
        if self.model not in models.names():
            raise bad("model", "one of " + ", ".join(models.names()))
        spec = self.norm.strip().lower().partition(":")[0] if isinstance(self.norm, str) else None
        if spec not in factory.valid_specs():
            raise bad("norm", "a norm spec, one of " + ", ".join(factory.valid_specs())
                      + " (some take ':N', e.g. gn:8)")
        if self.dataset not in data_mod.names():
            raise bad("dataset", "one of " + ", ".join(data_mod.names()))
        if self.optimizer not in ("sgd", "adam"):
            raise bad("optimizer", "'sgd' or 'adam'")
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise bad(name, "a finite number >= 0")
        if self.lr <= 0:
            raise bad("lr", "a positive learning rate")
        for name in ("batch_size", "nproc"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "a positive integer")
        for name in ("steps", "eval_every", "eval_samples", "checkpoint_every", "log_every", "seed", "train_samples"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise bad(name, "an integer >= 0")
        if self.seed > MAX_SEED:
            raise bad("seed", f"an integer from 0 to {MAX_SEED} (NumPy's seed range)")
        if self.batch_size % self.nproc:
            raise bad("batch_size", f"a multiple of nproc={self.nproc} (the global batch is split evenly)")
        if self.schedule not in ("constant", "step"):
            raise bad("schedule", "'constant' or 'step'")
        if self.loss not in ("auto", "ce", "mse"):
            raise bad("loss", "'ce', 'mse' or 'auto'")
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.diverge_loss is not None and not self.diverge_loss > 0:
            raise bad("diverge_loss", "a positive number or None")
        if not isinstance(self.model_kw, dict):
            raise bad("model_kw", "a dict of keyword arguments for models.build")
        check_model_kw(self.model, self.model_kw)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def canonical(self) -> dict:
        """to_dict() as it reads back from JSON (tuples become lists): the form configs are compared in."""
        return json.loads(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {', '.join(unknown)}")
        d = dict(d)
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        return cls(**d)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of cfg's schedule at `step` (constant, or multiplied by lr_gamma at each milestone)."""
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if step >= m)
    return cfg.lr


# Fields that do not change what a run computes (only how it is shown, logged or checkpointed, or which
# processes' wall clock it takes): a resumed run may change them. `steps` may grow; `device` must keep its kind.
NON_RESULT_FIELDS = ("progress", "verbose", "eval_every", "checkpoint_every", "log_every", "dist_timeout", "steps",
                     "device")


def _device_kind(spec: Any) -> str:
    spec = str(spec)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if spec.startswith("cuda") else "cpu"


def resume_mismatch(saved: dict, cfg: TrainConfig) -> list[str]:
    """The result-changing fields in which a saved config (a checkpoint's or summary's) differs from `cfg`.

    Everything but NON_RESULT_FIELDS must match; the device must be of the same kind ('auto' is what it resolves
    to here, so 'auto' and 'cpu' match on a machine without CUDA)."""
    now = cfg.canonical()
    diff = sorted(k for k, v in now.items() if k not in NON_RESULT_FIELDS and saved.get(k) != v)
    diff += sorted(k for k in saved if k not in now)   # a field this version does not know
    if _device_kind(saved.get("device", "auto")) != _device_kind(cfg.device):
        diff.append("device")
    return diff
