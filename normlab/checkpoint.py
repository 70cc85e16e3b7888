"""Atomic files for training runs: checkpoints (torch.save, loadable with weights_only=True), JSON and JSONL.

A write goes to a temp file in the same directory and is renamed over the target (os.replace is atomic on POSIX),
so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) to path via temp file + rename; obj must hold only tensors and primitive containers."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True (no arbitrary code from the file)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def jsonable(value: Any) -> Any:
    """Tensors, NumPy values and paths -> plain JSON values (for rows that hooks return)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"row value of type {type(value).__name__} is not JSON serializable")


def dumps(row: dict) -> str:
    return json.dumps(row, default=jsonable)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    tmp = _tmp(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=jsonable) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def append_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict], rewrite: bool = False) -> None:
    """Append rows (one JSON object per line) by copying the file to a temp file, appending, and renaming.
    rewrite=True replaces the file's content with `rows`."""
    path = Path(path)
    lines = "".join(dumps(r) + "\n" for r in rows)
    if not lines and not rewrite:
        return
    tmp = _tmp(path)
    try:
        if path.exists() and not rewrite:
            shutil.copyfile(path, tmp)
        with open(tmp, "a") as f:
            f.write(lines)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- random states as tensors and primitives (weights_only-safe) ---------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

