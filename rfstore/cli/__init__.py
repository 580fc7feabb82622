"""The thin Typer command line.

``app`` holds the Typer app and error handling; ``stage_commands`` (init,
activations, topk, validate, status, rf-theory), ``method_commands`` (occlude,
rf, segment), ``pipeline_commands`` (run, demo), ``report_commands`` (report, show),
``dissect_commands`` (dissect, export) and ``compare_commands`` (compare) register their commands.
"""
from __future__ import annotations

from rfstore.cli import stage_commands as _stage_commands  # noqa: F401 - registers commands
from rfstore.cli import method_commands as _method_commands  # noqa: F401 - registers commands
from rfstore.cli import pipeline_commands as _pipeline_commands  # noqa: F401 - registers commands
from rfstore.cli import report_commands as _report_commands  # noqa: F401 - registers commands
from rfstore.cli import dissect_commands as _dissect_commands  # noqa: F401 - registers commands
from rfstore.cli import compare_commands as _compare_commands  # noqa: F401 - registers commands
from rfstore.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
