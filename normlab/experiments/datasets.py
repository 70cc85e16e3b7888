"""Which dataset an experiment runs on offline: the scale's, or its stand-in when that is not installed."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .. import data


@lru_cache(maxsize=None)
def available(name: str) -> bool:
    """Whether dataset `name` is on disk (its files found where `data.load` looks; nothing is read)."""
    return not data.identity(name).get("missing", False)


def pick_dataset(preferred: Sequence[str]) -> str:
    """The first of `preferred` that is available offline (the report names the one used)."""
    for name in preferred:
        if available(name):
            return name
    raise RuntimeError(f"dataset: none of {list(preferred)} is available offline; see docs/experiments.md")


# MNIST is carried by the package; Fashion-MNIST comes from Debian. When it is missing, MNIST stands in and the
# report says so in a banner (Experiment.fallback).
_FALLBACKS = {"fashion-mnist": ["fashion-mnist", "mnist"]}


def offline(name: str) -> str:
    """`name`, or the first available stand-in for it (fashion-mnist -> mnist); others unchanged."""
    return pick_dataset(_FALLBACKS[name]) if name in _FALLBACKS else name
