"""Helpers shared by the experiment modules: building train runs, choosing an offline dataset, and reading records
back as per-seed numbers and seed-aggregated curves."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

from ..report import series
from .base import Result, Run, finite
from .datasets import available, offline, pick_dataset  # noqa: F401  (re-exported for the experiments)
from .training import train_config


def train_run(exp: str, variant: Any, seed: int, instruments: list | None = None, extra: dict | None = None,
              **train_kw) -> Run:
    """A Run of `variant` (a NamedTuple of variants.py) whose config is the full TrainConfig (defaults included) + the instrument specs (+ extra settings) +
    the identity of the data it reads (file names, sizes, sha256: data.identity), so a changed dataset is a new run."""
    from .. import data
    train = train_config(seed=seed, **train_kw)
    cfg = {"procedure": "train", "train": train, "instruments": list(instruments or []),
           "data": data.identity(train["dataset"], train.get("data_root"))}
    if extra:
        cfg["extra"] = dict(extra)
    return Run(exp, variant, seed, cfg)


def groups(results: Iterable[Result]) -> dict[Any, list[Result]]:
    """Results by variant (the group key: a NamedTuple, or a str), in first-seen order, each sorted by seed."""
    out: dict[Any, list[Result]] = {}
    for r in results:
        out.setdefault(r.run.variant, []).append(r)
    return {g: sorted(rs, key=lambda r: r.run.seed) for g, rs in out.items()}


def final(results: Sequence[Result], key: str, default: float = math.nan) -> list[float]:
    """Per seed: the last metrics row's `key` that has a value (NaN for a diverged run that never evaluated)."""
    vals = []
    for r in results:
        if r.summary.get("diverged_at") is not None:
            vals.append(default)
            continue
        rows = [row[key] for row in r.metrics if row.get(key) is not None]
        vals.append(float(rows[-1]) if rows else default)
    return vals


def at_step(result: Result, key: str, step: int, source: str = "metrics") -> float:
    """`key` at the row whose step is closest to `step` (NaN when the run has no such rows)."""
    rows = [row for row in result.records(source) if row.get(key) is not None]
    if not rows:
        return math.nan
    return float(min(rows, key=lambda row: abs(row["step"] - step))[key])


def curve(results: Sequence[Result], key: str | Callable[[dict], float | None], source: str = "metrics",
          where: Callable[[dict], bool] | None = None) -> tuple[list[float], list[list[float]]]:
    """(steps, per-seed values) of `key` (a row key, or a function of the row) on the steps every seed recorded."""
    get = key if callable(key) else (lambda row: row.get(key))
    per_seed: list[dict[int, float]] = []
    for r in results:
        d = {}
        for row in r.records(source):
            if where is None or where(row):
                v = get(row)
                if v is not None:
                    d[row["step"]] = float(v)
        per_seed.append(d)
    if not per_seed:
        return [], []
    steps = sorted(set.intersection(*(set(d) for d in per_seed)))
    return steps, [[d[s] for s in steps] for d in per_seed]


def rows_of(result: Result, hook: str, layer: str | None = None) -> list[dict]:
    """diagnostics.jsonl rows of one hook (and one layer), in step order."""
    return [row for row in result.diagnostics
            if row.get("hook") == hook and (layer is None or row.get("layer") == layer)]


def band(label: str, steps: Sequence[float], per_seed: Sequence[Sequence[float]], **kw) -> dict:
    """A figure series: mean over seeds with the [min, max] range shaded."""
    cols = list(zip(*per_seed)) if per_seed else []
    mean, lo, hi = [], [], []
    for c in cols:
        f = finite(c)
        mean.append(sum(f) / len(f) if f else math.nan)
        lo.append(min(f) if f else math.nan)
        hi.append(max(f) if f else math.nan)
    return series(label, list(steps), mean, lo, hi, **kw)


def time_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none): a per-seed summary of a curve."""
    f = finite(values)
    return sum(f) / len(f) if f else math.nan


def stat_text(values: Sequence[float], fmt: str = ".3g", scale: float = 1.0) -> str:
    """'mean [min, max]' for a table cell."""
    f = finite(values)
    if not f:
        return "—"
    m = sum(f) / len(f)
    return f"{m * scale:{fmt}} [{min(f) * scale:{fmt}}, {max(f) * scale:{fmt}}]"


def window_mean(results: Sequence[Result], hook: str, key: str, lo: float, hi: float) -> list[float]:
    """Per seed: mean of `key` over the rows of `hook` with lo <= step < hi (NaN for a diverged run)."""
    out = []
    for r in results:
        if r.summary.get("diverged_at") is not None:
            out.append(math.nan)
            continue
        out.append(time_mean([row[key] for row in rows_of(r, hook) if lo <= row["step"] < hi
                              and row.get(key) is not None]))
    return out


def tail_mean(results: Sequence[Result], hook: str, key: str, frac: float = 0.1) -> list[float]:
    """Per seed: mean of `key` over the last `frac` of the rows of `hook` (at least one row; NaN if diverged)."""
    out = []
    for r in results:
        rows = [row[key] for row in rows_of(r, hook) if row.get(key) is not None]
        k = max(1, int(round(len(rows) * frac)))
        out.append(math.nan if r.summary.get("diverged_at") is not None else time_mean(rows[-k:]))
    return out


def relative_change(row: dict, key: str) -> float | None:
    """A distributions row's step-to-step change in the layer's own units: dmean / layer std, dvar / layer variance
    (scale-free, so networks whose activations differ in scale compare fairly). None when not available."""
    if row.get(key) is None or not row.get("layer_var"):
        return None
    return row[key] / (math.sqrt(row["layer_var"]) if key == "dmean" else row["layer_var"])


def quarter_layers(n: int) -> list[int]:
    """Weight-layer indices at 1/4 and 3/4 of the depth (an early and a late layer, fixed before any run)."""
    return sorted({round(0.25 * (n - 1)), round(0.75 * (n - 1))})


def relus_after(model_name: str, norm: str, in_shape: tuple, num_classes: int, model_kw: dict,
                indices: Sequence[int]) -> list[str]:
    """Module names of the first ReLU after weight layer i, for i in `indices`. Its output is the activation the
    layer passes on to the next one (after the norm, the noise of noisy BN and the nonlinearity); record it with
    site="output" (the models' ReLUs are in-place, so a recorded *input* would be rectified already)."""
    from torch import nn
    from .. import models
    model = models.build(model_name, norm, in_shape, num_classes, **model_kw)
    weights = {id(m) for _, m in models.weight_layers(model)}
    names, seen, want = [], -1, set(indices)
    for name, m in model.named_modules():
        if id(m) in weights:
            seen += 1
        elif isinstance(m, nn.ReLU) and seen in want and len(names) < len(want) and \
                (not names or names[-1][0] != seen):
            names.append((seen, name))
    return [n for _, n in names]


def n_weight_layers(model_name: str, in_shape: tuple, num_classes: int, model_kw: dict) -> int:
    from .. import models
    return len(models.weight_layers(models.build(model_name, "none", in_shape, num_classes, **model_kw)))


def weight_names(model_name: str, norm: str, in_shape: tuple, num_classes: int, model_kw: dict,
                 indices: Sequence[int]) -> list[str]:
    """Module names of weight layers `indices` (their output is the pre-normalization activation)."""
    from .. import models
    model = models.build(model_name, norm, in_shape, num_classes, **model_kw)
    names = [n for n, _ in models.weight_layers(model)]
    return [names[i] for i in indices]

