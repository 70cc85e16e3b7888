"""TrainConfig: its home (normlab.config), the names callers import, and the run-hash stability of the experiments'
train configs (a changed dict would make every cached run of `normlab reproduce` a new one)."""
from __future__ import annotations

import hashlib
import json

from normlab.experiments.training import train_config


def _digest(d: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace), the form experiments.base hashes runs over."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


VGG_ARGS = dict(model="vgg", norm="bn", dataset="cifar10", seed=3, steps=500, lr=0.05, momentum=0.9, batch_size=128,
                schedule="step", lr_milestones=(100, 300), model_kw={"cfg": "vgg11", "width": 0.25}, eval_every=50)

# train_config(**VGG_ARGS) as it was before the trainer became hooks (issue 16): every field, defaults included.
VGG_DICT = {"model": "vgg", "norm": "bn", "dataset": "cifar10", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
            "weight_decay": 0.0, "batch_size": 128, "steps": 500, "seed": 3, "eval_every": 50, "eval_samples": 1000,
            "schedule": "step", "lr_milestones": [100, 300], "lr_gamma": 0.1, "device": "auto", "loss": "auto",
            "init": "default", "model_kw": {"cfg": "vgg11", "width": 0.25}, "augment": False, "train_samples": 0,
            "deterministic": False, "checkpoint_every": 1000, "diverge_loss": None, "log_every": 0,
            "progress": False, "verbose": True, "nproc": 1, "sync_bn": False, "dist_timeout": 120.0,
            "data_root": None}


def test_train_config_dict_and_hash_are_pinned():
    d = train_config(**VGG_ARGS)
    assert d == VGG_DICT
    assert _digest(d) == "cbae644da413e7f0"
    assert _digest(train_config(seed=0)) == "ac26cd3296454f58"   # all defaults


def test_cli_defaults_are_train_configs():
    """`normlab train`'s option defaults are TrainConfig's (one home), but --log-every (cli.CLI_LOG_EVERY, on purpose)."""
    from normlab import cli
    from normlab.config import TrainConfig
    d = TrainConfig()
    field_of = {"gamma": "lr_gamma"}
    checked = []
    for p in cli.train.params:
        name = field_of.get(p.name, p.name)
        if not hasattr(d, name) or name in ("lr_milestones", "model_kw"):
            continue
        want = cli.CLI_LOG_EVERY if name == "log_every" else getattr(d, name)
        assert p.default == want, (p.name, p.default, want)
        checked.append(name)
    assert {"steps", "checkpoint_every", "lr", "batch_size", "eval_every", "log_every", "device"} <= set(checked)
    assert (d.steps, d.checkpoint_every, cli.CLI_LOG_EVERY, d.log_every) == (1000, 1000, 10, 0)
