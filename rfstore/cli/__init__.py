"""The thin Typer command line: ``app`` (errors, progress), ``options`` (every option once), ``commands`` (the
pipeline's commands, each a :func:`~rfstore.pipeline.run.run_pipeline` call) and ``results`` (commands that read)."""
from __future__ import annotations

from rfstore.cli import commands as _commands  # noqa: F401 - registers the pipeline's commands
from rfstore.cli import results as _results  # noqa: F401 - registers the commands that read a store
from rfstore.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
