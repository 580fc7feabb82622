"""The ``rfstore`` command line (Typer): build a config, open the store, call a stage.

Exit codes: 0 done, 1 failed (one sentence on stderr, no traceback unless
``RFSTORE_DEBUG=1``), 2 bad usage.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

app = typer.Typer(
    name="rfstore",
    help="Empirical receptive fields of CNN units (Zhou et al. 2015), computed into one HDF5 or Zarr store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


def progress_bar(description: str) -> Callable[[Iterator, int], Iterator]:
    """A tqdm bar over a DataLoader counted in images (off when stderr is not a terminal)."""
    from tqdm import tqdm

    def wrap(batches: Iterator, total: int) -> Iterator:
        bar = tqdm(total=total, desc=description, unit="img", disable=None, file=sys.stderr)
        try:
            for batch in batches:
                yield batch
                bar.update(len(batch[0]))
        finally:
            bar.close()

    return wrap
