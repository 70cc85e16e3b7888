"""The variants the experiments compare, declared once.

A variant is what the seeds of one run group share: a NamedTuple, so that it is the group's key (a tuple: hashable,
ordered, equal by value) and analyze() reads its fields by name instead of parsing a string. Its display string,
`name`, is derived from the fields: it is what the records (run.json's "group"), the report, the figure labels and the
run facts show, and it is not part of a run's identity (the config hash).

    >>> v = NormLR("bn", 0.1)
    >>> v.norm, v.lr, v.name, v == ("bn", 0.1)
    ('bn', 0.1, 'bn lr=0.1', True)
    >>> Net("linear", "bn", 1e-3).name, Net("vgg", "bn").name
    ('linear bn lr=0.001', 'vgg bn')
"""
from __future__ import annotations

from typing import NamedTuple


class Norm(NamedTuple):
    """One normalization ("bn", "none", "noisy-bn"); shown as itself."""

    norm: str

    @property
    def name(self) -> str:
        return self.norm


class NormLR(NamedTuple):
    """A normalization at a learning rate: "bn lr=0.1"."""

    norm: str
    lr: float

    @property
    def name(self) -> str:
        return f"{self.norm} lr={self.lr:g}"


class NormMult(NamedTuple):
    """A normalization at a multiple of the base learning rate: "bn x30"."""

    norm: str
    mult: int

    @property
    def name(self) -> str:
        return f"{self.norm} x{self.mult}"


class NormBatch(NamedTuple):
    """A normalization (a norm spec such as "gn:8" or "ghost-bn:2") at a training batch size: "gn:8 b=2"."""

    norm: str
    batch: int

    @property
    def name(self) -> str:
        return f"{self.norm} b={self.batch}"


class Net(NamedTuple):
    """A network ("vgg" or "linear") with a normalization, optionally at a learning rate: "vgg bn", "linear bn
    lr=0.01"."""

    net: str
    norm: str
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.net} {self.norm}" + ("" if self.lr is None else f" lr={self.lr:g}")
