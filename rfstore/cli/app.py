"""The ``rfstore`` command line (Typer): the app, one-line errors, progress bars, the store path check.

Exit codes: 0 done, 1 failed (one sentence on stderr; ``RFSTORE_DEBUG=1`` shows the traceback), 2 bad usage.
Anything but an :class:`~rfstore.errors.RfstoreError` is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from rfstore.version import __version__

PIPELINE, RESULTS = "Pipeline (in order)", "Results"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rfstore {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="rfstore",
    help="Empirical receptive fields of CNN units (Zhou et al. 2015), computed into one HDF5 or Zarr store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print rfstore's version and exit.")) -> None:
    """Empirical receptive fields of CNN units (Zhou et al. 2015), computed into one HDF5 or Zarr store."""


F = TypeVar("F", bound=Callable[..., Any])


def say(message: str) -> None:
    typer.echo(message, err=True)


def handle_errors(func: F) -> F:
    """rfstore's errors as one sentence: exit 2 for bad usage, 1 for the rest; any other exception is a bug
    and keeps its traceback. Ctrl-C says that finished work is kept (exit 130)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rfstore.errors import RfstoreError, UsageError

        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            say("interrupted: finished work is kept; run the same command again to resume")
            raise typer.Exit(130)
        except RfstoreError as err:
            if os.environ.get("RFSTORE_DEBUG"):
                raise
            if isinstance(err, UsageError) and err.flag:
                say(f"error: {err.flag}: {err.message}")
            else:
                say(f"error: {err}")
            raise typer.Exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


def progress(description: str, total: int, unit: str) -> Callable[[int], None]:
    """A tqdm bar (off when stderr is not a terminal) that closes itself when full."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit=unit, disable=None, file=sys.stderr)

    def tick(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return tick


def check_store_path(path: Path, must_exist: bool = False) -> None:
    """A store path's kind and, with ``must_exist``, its presence, checked before anything heavy is loaded."""
    from rfstore.store import StoreError, backend_for

    backend_for(path)  # a StoreError for any other suffix
    if must_exist and not path.exists():
        raise StoreError(f"no store at {path}: create it with 'rfstore init' (or 'rfstore run --model ... --data ...')")
