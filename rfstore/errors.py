"""The errors rfstore reports to a person: one root, a few kinds.

The command line turns an :class:`RfstoreError` into one sentence and an exit code
(:attr:`RfstoreError.exit_code`: 2 for bad usage, 1 for the rest); any other exception is a bug
in rfstore and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["RfstoreError", "UsageError", "InputError", "StoreError", "ModelError", "MissingInputError",
           "StageMismatchError"]


class RfstoreError(Exception):
    """Base class of every error rfstore reports to a person: the message says what failed and what to do."""

    exit_code = 1


class UsageError(RfstoreError):
    """An option or configuration value that cannot work (exit code 2).

    ``option`` names the configuration field at fault (``"dtype"``); the command line shows it
    as its flag (``--dtype``).
    """

    exit_code = 2

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message, self.option = message, option

    def __str__(self) -> str:
        return f"{self.option}: {self.message}" if self.option else self.message

    @property
    def flag(self) -> str | None:
        """The command-line flag of :attr:`option` (``--occlude-batch-size`` for ``occlude_batch_size``)."""
        return None if self.option is None else "--" + self.option.replace("_", "-")


class InputError(RfstoreError):
    """Input data that cannot be used: an image folder, a dataset's tables or masks, a file given by path."""


class StoreError(RfstoreError):
    """A store that cannot be opened, written or used as asked (another schema, another writer, a full disk)."""


class ModelError(RfstoreError):
    """A network that cannot be loaded, run or analysed as asked (its weights, layers, inputs or outputs)."""


class MissingInputError(InputError):
    """A stage needs the output of an earlier stage that is not there yet."""


class StageMismatchError(StoreError):
    """A stage was asked to run with parameters other than those the store recorded for it."""
