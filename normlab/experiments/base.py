"""What an experiment is: scales, runs (config -> hash), results on disk, and the outcome it hands to the report.

An experiment (one module per SPEC §2 id) declares
  * its scales: the paper's configuration and a quick one derived from it by stated reductions (`Scale.reduce`),
  * its runs: one `Run` per (variant x seed); the variant is a small NamedTuple (variants.py), so a group key is a
    tuple whose fields analyze() reads by name, and its display string is derived (`name`); a run's identity is the
    hash of its full configuration (the variant is not part of it),
  * how a run executes, only when it is not training: `execute` (None: runner.py trains it with its instruments),
  * `analyze(results, scale) -> Outcome`: our numbers, figure specs and verdicts, computed from the records only.
Nothing here knows an expected answer: the verdict rules (verdict.py) read the data.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .datasets import offline

# Bump when the on-disk record format changes: every cached run then counts as missing.
RECORD_VERSION = 2   # 2: run configs carry the identity of the data read (data.identity)
SCALES = ("paper", "quick", "smoke")


# --------------------------------------------------------------------------------------------------------------- scales
class Scale:
    """A named set of parameters (attribute access) plus the reductions that derived it from its parent.

    >>> paper = Scale("paper", steps=50_000, width=100)
    >>> quick = paper.reduce("quick", "fits a 2-core CPU in minutes", steps=3000)
    >>> quick.steps, quick.reductions
    (3000, [('steps', 50000, 3000, 'fits a 2-core CPU in minutes')])
    """

    def __init__(self, name: str, reductions: list | None = None, **params: Any) -> None:
        self.name = name
        self.params = dict(params)
        self.reductions = list(reductions or [])

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(f"scale {self.__dict__.get('name')!r} has no parameter {key!r}")

    def reduce(self, name: str, why: str, **changes: Any) -> "Scale":
        """A derived scale: `changes` override parameters; each change is recorded with `why`."""
        unknown = sorted(set(changes) - set(self.params))
        if unknown:
            raise ValueError(f"changes: unknown parameter(s) {unknown}; known: {sorted(self.params)}")
        red = list(self.reductions)
        red += [(k, self.params[k], v, why) for k, v in changes.items() if self.params[k] != v]
        return Scale(name, red, **{**self.params, **changes})

    def describe(self) -> list[str]:
        """Human lines 'key: old → new, ... (why)' for the report, one per reason."""
        by_why: dict[str, list[str]] = {}
        for k, a, b, why in self.reductions:
            by_why.setdefault(why, []).append(f"{k} {_fmt(a)} → {_fmt(b)}")
        return [f"{', '.join(parts)} ({why})" for why, parts in by_why.items()]


def _fmt(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


# ----------------------------------------------------------------------------------------------------------------- runs
def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no whitespace): the text a run's hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"config: value {o!r} of type {type(o).__name__} is not JSON-serializable")


def run_hash(config: dict) -> str:
    """sha256 over the record version and the full run config; 16 hex digits.

    The experiment id is not part of it: two experiments that need the same run (same config, same procedure)
    share it. config["procedure"] names what executes it ("train", or an experiment's own post-processing).
    """
    if "procedure" not in config:
        raise ValueError("config: expected a 'procedure' key naming how the run executes (e.g. 'train')")
    text = canonical({"record_version": RECORD_VERSION, "config": config})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def variant_name(variant: Any) -> str:
    """The display name of a variant: its `name` (variants.py), or the variant itself when it is a plain str."""
    return variant if isinstance(variant, str) else variant.name


@dataclass(frozen=True)
class Run:
    """One training/measurement run of one variant (shared by its seeds): a NamedTuple of variants.py such as
    NormLR(norm="bn", lr=0.1), or a plain str. `group` is the variant's display name ("bn lr=0.1")."""

    exp: str
    variant: Any
    seed: int
    config: dict

    @property
    def group(self) -> str:
        return variant_name(self.variant)

    @property
    def key(self) -> str:
        return run_hash(self.config)

    @property
    def label(self) -> str:
        return f"{self.group} seed={self.seed}"

    def to_json(self) -> dict:
        return {"exp": self.exp, "group": self.group, "seed": self.seed, "key": self.key, "config": self.config}


@dataclass
class Result:
    """A finished run as read back from disk: its summary plus lazily loaded JSONL records."""

    run: Run
    dir: Path
    summary: dict
    cached: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def records(self, name: str) -> list[dict]:
        """Rows of DIR/<name>.jsonl (e.g. "metrics", "diagnostics"); [] when the file is absent."""
        if name not in self._cache:
            path = self.dir / f"{name}.jsonl"
            rows = []
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.strip():
                        rows.append(json.loads(line))
            self._cache[name] = rows
        return self._cache[name]

    @property
    def metrics(self) -> list[dict]:
        return self.records("metrics")

    @property
    def diagnostics(self) -> list[dict]:
        return self.records("diagnostics")

    @property
    def wall_s(self) -> float:
        return float(self.summary.get("wall_s", 0.0))


# ------------------------------------------------------------------------------------------------------------- outcome
OUTCOMES = ("supported", "not supported", "inconclusive", "undecidable")


@dataclass
class Verdict:
    """A verdict on one claim or one part of it (verdict.py decides it), with the number that decided it.

    value: the estimate on the rule's scale (raw); shown: it as printed, with its interval; deciding: the sentence.
    key/core: the part's id and whether it decides the headline; interval/n: the 95% interval and the seeds (or
    records) behind it; min_effect/rule: the minimum effect of interest and the rule in words, fixed before the data.
    """

    claim: str
    outcome: str
    value: float
    deciding: str
    note: str = ""
    shown: str = ""
    key: str = ""
    core: bool = True
    interval: list = field(default_factory=list)
    n: int = 0
    min_effect: str = ""
    rule: str = ""
    paper: str = ""       # the paper's number for this part, at its own scale (shown, never decides)
    parts_supported: list = field(default_factory=list)   # headline only: [k, n] over all parts
    core_supported: list = field(default_factory=list)    # headline only: [k, n] over the core parts

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {self.outcome!r}")


@dataclass
class Outcome:
    """What an experiment hands to the report: the headline verdict, its parts, the preconditions checked, the runs
    left out of the statistics (collapsed or diverged) and why, figure specs, our numbers, notes."""

    verdict: Verdict
    checks: list[Verdict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    preconditions: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------- experiment
class Experiment:
    """Base class of an experiment module. Subclasses set the class attributes and implement runs/analyze."""

    id: str = ""
    title: str = ""
    source: str = ""        # paper and figure/table, e.g. "Ioffe & Szegedy 2015, Fig. 1"
    claim: str = ""         # the paper's claim, in one or two sentences
    paper_numbers: str = ""  # what the paper reports (numbers), for the report's side-by-side
    setup_text: str = ""    # the paper's setup in words
    caveat: str = ""        # why a quick-scale result may differ from the paper (shown when not supported)
    scales: dict[str, Scale] = {}

    def scale(self, name: str) -> Scale:
        if name not in self.scales:
            raise ValueError(f"scale: expected one of {sorted(self.scales)} for {self.id}, got {name!r}")
        return self.scales[name]

    def seeds(self, scale: Scale, n: int | None) -> list[int]:
        n = scale.params.get("seeds", 3) if n is None else n
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"seeds: expected a positive int, got {n!r}")
        return list(range(n))

    def runs(self, scale: Scale, seeds: list[int], device: str = "cpu") -> list[Run]:
        raise NotImplementedError

    # How a run that is not a training run executes: a method execute(run, out_dir) -> summary (JSON-serializable)
    # writing records under out_dir, with config["procedure"] naming it. None: runner.py trains run.config["train"]
    # with its instruments (training.train_run).
    execute: Callable[[Run, Path], dict] | None = None

    def analyze(self, results: list[Result], scale: Scale) -> Outcome:
        raise NotImplementedError

    # Stand-in datasets on which this experiment's claim cannot be decided (e.g. no small-batch penalty on MNIST):
    # when one of them replaces the scale's dataset, every part is undecidable and the report says why.
    unfit_fallbacks: tuple[str, ...] = ()

    def dataset_of(self, scale: Scale) -> str:
        """The dataset the runs use: the scale's, or its offline stand-in (common.offline)."""
        return offline(str(scale.params.get("dataset", "")))

    def fallback(self, scale: Scale) -> tuple[str, str] | None:
        """(declared, used) when the scale's dataset is missing and a stand-in replaces it, else None."""
        declared = str(scale.params.get("dataset", ""))
        used = offline(declared)
        return (declared, used) if declared and used != declared else None


def finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]
