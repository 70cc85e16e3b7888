# normlab set-up: every target creates .venv and installs what it needs, pinned.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The shared MNIST beside the checkout, when there is one; otherwise normlab's default data dir.
SHARED_DATA := $(abspath ../shared/data)
export NORMLAB_DATA ?= $(if $(wildcard $(SHARED_DATA)/mnist.npz),$(SHARED_DATA),)
# OMP_NUM_THREADS is not set here: `normlab reproduce`/`demo` read it as torch threads *per worker* (default:
# cores // workers), so a global value would oversubscribe the cores. The bench sets its own.
# demo/bench run on tcmalloc (Debian libtcmalloc-minimal4) when it is installed: glibc malloc page-faults every fresh
# tensor over 32 MB again (docs/performance.md). NORMLAB_TCMALLOC=0 keeps glibc.
NORMLAB_TCMALLOC ?= 1
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
              /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
PRELOAD := $(if $(and $(TCMALLOC),$(filter-out 0,$(NORMLAB_TCMALLOC))),LD_PRELOAD="$(strip $(TCMALLOC) $(LD_PRELOAD))")

.PHONY: setup demo test bench train reproduce clean

$(VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.stamp

demo: setup
	$(PRELOAD) $(PY) -m normlab.cli demo

# normlab's other commands with the Makefile's data dir and allocator, e.g.
#   make train ARGS="--model mlp --norm bn --dataset mnist --steps 2000"
train: setup
	$(PRELOAD) $(PY) -m normlab.cli train $(ARGS)

reproduce: setup
	$(PRELOAD) $(PY) -m normlab.cli reproduce $(ARGS)

# The layer tests run twice: as users get them (the fast path wherever it fits) and on the eager core alone.
# --dist loadgroup: the Ray backend tests (xdist_group "ray") run in one worker, so the suite starts one local Ray.
test: setup
	$(PY) -m pytest -n 2 --dist loadgroup tests
	NORMLAB_FAST=0 $(PY) -m pytest -n 2 tests/test_layers_conformance.py tests/test_core.py tests/test_variants.py \
	    tests/test_reference.py tests/test_bad_input.py tests/test_dropin.py

# On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE make bench keeps spinning OpenMP threads from
# stalling 2-thread timings; it makes small ops (the training-loop rows) 2-5x slower, so it is not the default
# (docs/performance.md)
bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PRELOAD) $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) *.egg-info
