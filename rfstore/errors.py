"""Errors that the CLI turns into one clear sentence and exit code 1."""
from __future__ import annotations


class RfstoreError(RuntimeError):
    """Base class of every error rfstore reports to a user (no traceback needed)."""


class StageMismatchError(RfstoreError):
    """A stage was asked to run with parameters other than those it ran with."""


class MissingInputError(RfstoreError):
    """A stage needs the output of an earlier stage that is not there yet."""
