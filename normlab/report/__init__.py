"""Figures and the report (report.md, self-contained report.html) from saved records; never runs a model."""
from .compare import compare, format_compare
from .figures import draw, render
from .spec import figure, panel, series
from .writer import load_results, write_report

__all__ = ["compare", "format_compare", "draw", "render", "figure", "panel", "series", "load_results", "write_report"]
