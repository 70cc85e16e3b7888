"""The experiments of the papers (SPEC §2) and normlab's own, and `reproduce`, the main job.

One module per experiment id declares the paper's setup and a quick one derived from it, the runs, the instruments,
the figures and the verdict rule; runner.py runs them with hashing, caching and resume; normlab.report writes the
report.
"""
from .base import Experiment, Outcome, Result, Run, Scale, Verdict, run_hash
from .registry import DEMO, EXPERIMENTS, get, ids, resolve
from .runner import reproduce, verdict_table

__all__ = ["Experiment", "Outcome", "Result", "Run", "Scale", "Verdict", "run_hash", "DEMO", "EXPERIMENTS", "get",
           "ids", "resolve", "reproduce", "verdict_table"]
