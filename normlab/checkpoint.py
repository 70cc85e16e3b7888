"""Atomic files for training runs: checkpoints (torch.save, loadable with weights_only=True), JSON and JSONL.

A write goes to a temp file in the same directory and is renamed over the target (os.replace is atomic on POSIX),
so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from . import records


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: the message names the file and the cause."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) to path via a unique temp file, fsync and rename; obj must hold only tensors and primitive
    containers. A full disk raises OSError(ENOSPC) naming `path` and leaves the old file intact."""
    path = Path(path)
    try:
        with records.atomic_writer(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        # torch's zip writer turns a failed write into "enforce fail at inline_container.cc"; the OSError behind it
        # (ENOSPC, EIO, ...) is the cause to report, with the checkpoint's path rather than the temp file's
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from e


CHECKPOINT_KEYS = ("version", "step", "model", "optimizer", "rng", "config")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", normlab: bool = True) -> dict:
    """torch.load with weights_only=True (no arbitrary code from the file).

    Raises CheckpointError naming the file when it is empty, truncated, not a torch file, or (normlab=True) a torch
    file that is not a checkpoint written by normlab.train (e.g. a bare state_dict)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (e.g. {path / 'checkpoint.pt'})")
    size = path.stat().st_size   # FileNotFoundError (an OSError naming the file) when it is missing
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; the run that wrote it was probably "
                              f"killed before normlab wrote checkpoints atomically: delete it and start over")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:   # weights_only refused a global: never load such a file
        raise CheckpointError(f"{path}: refused, the file holds Python objects other than tensors and plain "
                              f"containers ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({size} bytes; truncated, corrupt or "
                              f"another format: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
                              ) from None
    if normlab:
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            held = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path}: not a normlab checkpoint (no {', '.join(repr(k) for k in missing)}; it "
                                  f"holds {held}); normlab reads the checkpoint.pt that `normlab train` writes")
    return state


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
    """Write JSON atomically and durably (unique temp file, fsync, rename)."""
    records.atomic_write_json(path, obj, default=jsonable)


def append_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict], rewrite: bool = False,
                        fsync: bool = False) -> None:
    """Append rows (one JSON object per line) in O(rows): one write in append mode. Every row is serialized before
    anything is written, so a row that cannot be serialized leaves the file as it was.
    rewrite=True replaces the file's content with `rows` atomically (temp file + rename)."""
    lines = [dumps(r) for r in rows]
    if rewrite:
        records.atomic_write_text(path, "".join(line + "\n" for line in lines))
    else:
        records.append_jsonl(path, lines, fsync=fsync)


def read_json(path: str | os.PathLike) -> Any:
    return records.read_json(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file ([] when absent); a torn last line (crash mid-append) is dropped."""
    return records.read_jsonl(path)


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

