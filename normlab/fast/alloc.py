"""tcmalloc: find it, tell whether this process runs on it, and build the environment that preloads it.

glibc's malloc hands every block over 32 MB back to the kernel on free, so each fresh large tensor page-faults
again (a 33.6 MB clone: 12 ms under glibc, 1.7 ms under tcmalloc). tcmalloc keeps the pages. It has to be loaded
before the process starts (LD_PRELOAD); the Makefile does that for `make demo` / `make bench` when the library is
present, NORMLAB_TCMALLOC=0 turns it off. By hand:

    LD_PRELOAD=$(python -m normlab.fast.alloc) normlab reproduce ...
"""
from __future__ import annotations

import glob
import os

CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
              "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
              "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
              "/usr/local/lib/libtcmalloc_minimal.so.4")


def tcmalloc_path() -> str | None:
    """Path of libtcmalloc_minimal (Debian: libtcmalloc-minimal4), or None when it is not installed."""
    for path in (*CANDIDATES, *sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4"))):
        if os.path.exists(path):
            return path
    return None


def tcmalloc_loaded() -> bool:
    """Whether this process runs on tcmalloc (preloaded)."""
    try:
        with open("/proc/self/maps") as f:
            return "libtcmalloc" in f.read()
    except OSError:
        return False


def environ(use: bool = True, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (os.environ) that preloads tcmalloc when `use` and it exists, and never preloads it else."""
    env = dict(os.environ if base is None else base)
    kept = [p for p in env.get("LD_PRELOAD", "").split() if "tcmalloc" not in p]
    path = tcmalloc_path()
    if use and path is not None:
        kept.append(path)
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


if __name__ == "__main__":   # prints the path for LD_PRELOAD=$(python -m normlab.fast.alloc); empty when absent
    print(tcmalloc_path() or "")
