"""Files that survive crashes and concurrent users: one writer per directory, atomic writes, O(1) JSONL appends.

Bottom of the import stack (standard library only), so train, experiments and report can all use it.

- `DirLock(path)`: an advisory lock (fcntl.flock on DIR/.normlab.lock) held for as long as a run or a reproduction
  writes into DIR. A second process gets `InUseError` naming the holder's pid and command. The lock is re-entrant
  within one process (reproduce -> train into the same directory) and vanishes with the process (kill -9 included),
  so a crashed writer never leaves a stale lock behind.
- `atomic_write_bytes / atomic_write_text / atomic_write_json`: write to a unique temp file in the same directory,
  fsync it, rename it over the target, fsync the directory: a reader sees the old file or the new one, and after a
  power cut the new one is on disk once the call returned.
- `append_jsonl`: append rows with one write to a file opened in append mode (O(rows), not O(file)); `read_jsonl`
  tolerates a torn last line (a crash in the middle of an append) and names the file and line of any other bad line.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["InUseError", "DirLock", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_writer",
           "append_jsonl", "read_jsonl", "read_json", "fsync_dir", "describe_os_error", "LOCK_NAME"]

LOCK_NAME = ".normlab.lock"


class InUseError(RuntimeError):
    """Another process holds the directory's lock; the message names the directory, the pid and its command."""


def describe_os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """'PATH: No space left on device (free some space ...)' — the file and the cause in one line."""
    where = path if path is not None else (e.filename or "?")
    text = f"{where}: {e.strerror or e}"
    if e.errno == errno.ENOSPC:
        text += " (the disk is full: free some space and run the same command again; nothing was overwritten)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += " (no permission to write there: choose another --out)"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        text += " (a file is in the way where a folder is expected)"
    return text


# -- locks ---------------------------------------------------------------------------------------------------------
_HELD: dict[str, list] = {}   # resolved dir -> [fd, depth]: re-entrant within this process
_HELD_GUARD = threading.Lock()


class DirLock:
    """Context manager: hold DIR's writer lock (creating DIR). `what` names the writer in the error message."""

    def __init__(self, path: str | os.PathLike, what: str = "normlab") -> None:
        self.path = Path(path)
        self.what = what
        self.key: str | None = None

    def __enter__(self) -> "DirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)   # an OSError here names the path (describe_os_error)
        key = str(self.path.resolve())
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                self.key = key
                return
            lock_file = self.path / LOCK_NAME
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise InUseError(f"{self.path} is in use by {holder}; wait for it to finish, or write to another "
                                 f"folder (two writers would interleave their records)") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} ({self.what}: {' '.join(sys.argv)[:200]})\n".encode(), 0)
            _HELD[key] = [fd, 1]
            self.key = key

    def release(self) -> None:
        if self.key is None:
            return
        with _HELD_GUARD:
            entry = _HELD[self.key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[self.key]
                os.ftruncate(entry[0], 0)
                os.close(entry[0])   # closing the descriptor drops the flock
        self.key = None


# -- atomic whole-file writes --------------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:   # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:   # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class atomic_writer:
    """`with atomic_writer(path) as f: f.write(...)`: a binary file object on a unique temp file next to `path`,
    fsynced and renamed over `path` when the block ends without an exception (else removed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                if exc_type is None:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                if exc_type is None:
                    self.file.close()
                else:
                    try:
                        self.file.close()
                    except OSError:
                        pass   # the write already failed (e.g. disk full); that error is the one to report
            if exc_type is None:
                os.replace(self.tmp, self.path)
                fsync_dir(self.path.parent)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably (temp file, fsync, rename, fsync of the directory)."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Callable | None = str, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


# -- JSON and JSONL records ----------------------------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> Any:
    """json.load with the file's name in the error (ValueError) when it is empty, truncated or not JSON."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        what = "empty" if not text.strip() else "truncated or not JSON"
        raise ValueError(f"{path}: {what} ({e})") from None


def append_jsonl(path: str | os.PathLike, lines: Iterable[str], fsync: bool = False) -> None:
    """Append already-serialized rows (one JSON object per line, no newline) with one write in append mode.

    O(new rows): the file is never copied. A crash mid-write can leave a torn last line, which read_jsonl drops.
    fsync=True makes the rows durable before returning (done before a checkpoint refers to them).
    """
    data = "".join(line + "\n" for line in lines)
    if not data and not fsync:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The rows of a JSONL file; a last line cut short by a crash is skipped, any other bad line is a ValueError
    naming the file and the line number."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    torn_ok = len(lines) - 1   # index of the text after the final newline ("" when the file ends in one)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as e:
            if i == torn_ok:   # no newline after it: the write was interrupted
                return
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e}); the file is corrupt") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a JSONL file ([] when absent); see iter_jsonl."""
    return list(iter_jsonl(path)) if Path(path).exists() else []
