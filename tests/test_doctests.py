"""The Examples in the docstrings users read (layers, tools, instruments, experiments) run and print what they say.

Each module below must hold at least one example, and every example must pass: an example that drifts from the code
fails here. The examples use tiny tensors, so the whole file runs in seconds.
"""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = (
    "normlab.layers.batchnorm", "normlab.layers.groupnorm", "normlab.layers.variants", "normlab.layers.renorm",
    "normlab.layers.frozen", "normlab.layers.sync", "normlab.layers.ws",
    "normlab.tools", "normlab.layers.factory",
    "normlab.diagnostics.distributions", "normlab.diagnostics.ics", "normlab.diagnostics.landscape",
    "normlab.diagnostics.hessian", "normlab.diagnostics.bound", "normlab.diagnostics.summary",
    "normlab.diagnostics.hooks",
    "normlab.experiments.base", "normlab.experiments.variants", "normlab.experiments.rows",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    state = torch.random.get_rng_state()
    try:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    finally:
        torch.random.set_rng_state(state)   # the examples seed torch; leave the global stream as it was
    assert result.attempted > 0, f"{name}: no docstring example (Examples:: with >>> lines)"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring example lines failed"
