"""The C kernels under AddressSanitizer + UndefinedBehaviorSanitizer: a subprocess builds them with
-fsanitize=address,undefined (its own cache dir), preloads libasan and runs the fast path on odd shapes, strides,
channels_last, tiny and wrong-size parameters; any out-of-bounds access or UB aborts it. Skipped, with the reason,
where the toolchain has no sanitizer runtime."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from normlab.fast import _build

SCRIPT = textwrap.dedent('''
    import torch, normlab
    from normlab import fast
    from normlab.fast import _build
    _build.FLAGS = [f for f in _build.FLAGS if f != "-O3"] + ["-O1", "-g", "-fsanitize=address,undefined",
                                                              "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    assert fast.prepare(), fast.status()
    torch.manual_seed(0)
    cases = [(normlab.BatchNorm2d(3), (5, 3, 7, 1)), (normlab.BatchNorm2d(3), (2, 3, 3, 3), torch.channels_last),
             (normlab.BatchNorm1d(5), (3, 5)), (normlab.BatchNorm1d(5), (2, 5, 1)), (normlab.BatchNorm3d(2), (2, 2, 1, 3, 5)),
             (normlab.GroupNorm(3, 6), (1, 6, 5)), (normlab.LayerNorm(7), (3, 1, 7)), (normlab.LayerNorm((2, 3)), (1, 2, 3)),
             (normlab.InstanceNorm1d(4, affine=True), (2, 4, 9)), (normlab.BatchNorm2d(3), (70, 3, 33, 31))]
    for case in cases:
        m, shape = case[0], case[1]
        x = torch.randn(shape)
        if len(case) > 2:
            x = x.contiguous(memory_format=case[2])
        x.requires_grad_()
        y = m(x)
        y.backward(torch.randn_like(y))
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # strided input (a view): the kernels see a contiguous copy or the eager path
    bn = normlab.BatchNorm2d(4)
    bn(torch.randn(4, 8, 5, 5)[:, ::2]).sum().backward()
    # wrong-size parameters are refused before any kernel runs
    for size in (1, 5, 7):
        for which in ("weight", "bias"):
            for m, shape in ((normlab.BatchNorm2d(6), (4, 6, 3, 3)), (normlab.LayerNorm(6), (4, 6)),
                             (normlab.GroupNorm(3, 6), (4, 6, 3))):
                setattr(m, which, torch.nn.Parameter(torch.ones(size)))
                try:
                    m(torch.randn(shape))
                    raise SystemExit(f"no error for a {size}-element {which}")
                except ValueError:
                    pass
    # the op called directly with a short bias falls back instead of reading past it
    x = torch.randn(4, 6, 3, 3)
    torch.ops.normlab.norm_fwd(x, torch.ones(6), torch.ones(1), [0, 2, 3], [1, -1, 1, 1], 1e-5)
    print("SANITIZED-OK", fast.status()["available"])
''')


def _asan_runtime() -> str | None:
    cc = _build.compiler()
    if cc is None:
        return None
    out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def test_kernels_clean_under_asan_and_ubsan(tmp_path):
    lib = _asan_runtime()
    if lib is None:
        pytest.skip("no C compiler with an AddressSanitizer runtime (libasan.so) here")
    env = dict(os.environ, NORMLAB_CACHE=str(tmp_path), LD_PRELOAD=lib, NORMLAB_FAST="1",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
               OMP_NUM_THREADS="2")
    env.pop("PYTHONMALLOC", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0 and "SANITIZED-OK True" in res.stdout, res.stderr[-4000:]
