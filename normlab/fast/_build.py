"""Compile the C kernels (kernels.h, bn.c, rows.c) once per machine into a cached shared library; load it with ctypes.

Plain C with no torch headers: gcc builds it in about a second (a torch C++ extension takes about a minute), and
OpenMP calls resolve to the libgomp that torch has already loaded, so the kernels share torch's thread pool.
Cache: $NORMLAB_CACHE/fast, else $XDG_CACHE_HOME/normlab/fast, else ~/.cache/normlab/fast; the file name hashes
the source, the flags, the compiler and the CPU, so a changed kernel or machine never loads a stale build.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = [HERE / "bn.c", HERE / "rows.c"]
HEADERS = [HERE / "kernels.h"]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-fno-math-errno"]

_P, _I, _D, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
SIGNATURES = {   # name: (argument types, return type)
    "scratch_bytes": ([_N, _I, _I, _I], _I),
    "ch_fwd": ([_P, _P, _I, _I, _I, _P, _P, _D, _P, _P, _P, _P, _N, _N], None),
    "ch_bwd": ([_P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _N, _N], None),
    "col_fwd": ([_P, _P, _I, _I, _P, _P, _D, _P, _P, _P, _P, _N, _N], None),
    "col_bwd": ([_P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _N, _N], None),
    "rows_fwd": ([_P, _P, _I, _I, _P, _P, _I, _I, _D, _P, _P, _P, _N, _N], None),
    "rows_bwd": ([_P, _P, _P, _I, _I, _P, _P, _P, _I, _I, _P, _P, _P, _N, _N], None),
}


def cache_dir() -> Path:
    if os.environ.get("NORMLAB_CACHE"):
        return Path(os.environ["NORMLAB_CACHE"]) / "fast"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "normlab" / "fast"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def library_path(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    code = [p.read_text() for p in HEADERS + SOURCES]
    key = "\0".join([*code, " ".join(FLAGS), version, _cpu_id(), platform.machine()])
    return cache_dir() / f"normlab_fast_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build() -> tuple[ctypes.CDLL, float]:
    """Load the cached library, compiling it first if needed. Returns (library, seconds spent compiling).

    Raises RuntimeError with the reason when there is no compiler or the build fails.
    """
    if platform.system() != "Linux":
        raise RuntimeError(f"fast kernels are built for Linux only, not {platform.system()}")
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    path = library_path(cc)
    seconds = 0.0
    if not path.exists():
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: parallel test workers never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True,
                                 timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"compiling the fast kernels failed: {res.stderr.strip()[-2000:]}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        seconds = time.perf_counter() - t0
    lib = ctypes.CDLL(str(path))
    for name, (args, ret) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ret
    return lib, seconds
