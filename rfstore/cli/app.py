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
    """Turn rfstore's errors into one clear sentence and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, typer.BadParameter):  # bad usage: exit 2
            raise
        except KeyboardInterrupt:
            say("interrupted: finished work is kept; run the same command again to resume")
            raise typer.Exit(130)
        except Exception as err:  # noqa: BLE001 - the CLI's one place that reports any failure
            if os.environ.get("RFSTORE_DEBUG"):
                raise
            from rfstore.errors import RfstoreError

            expected = isinstance(err, (RfstoreError, ValueError, FileNotFoundError, PermissionError, OSError))
            text = str(err) or type(err).__name__
            if isinstance(err, OSError) and err.errno is not None and err.filename:  # e.g. a full disk
                from rfstore.store.base import NO_SPACE_ERRNOS, write_failure_message

                if err.errno in NO_SPACE_ERRNOS:
                    text = write_failure_message(err.filename, err)
            if not expected:
                text = f"{type(err).__name__}: {text} (set RFSTORE_DEBUG=1 to see the traceback)"
            say(f"error: {text}")
            raise typer.Exit(1)

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
