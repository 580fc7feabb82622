"""Exceptions raised while loading a model (re-exported by :mod:`rfstore.models.spec`)."""
from __future__ import annotations

from rfstore.errors import ModelError

__all__ = ["ModelLoadError", "UntrustedPickleError", "short_error"]


class ModelLoadError(ModelError, ValueError):
    """A model spec could not be turned into a module.

    The message is one sentence saying what failed and what to do about it.
    """


class UntrustedPickleError(ModelLoadError):
    """A ``pickle:PATH`` spec was given without ``trust_pickle=True``.

    Unpickling executes arbitrary code stored in the file, so it is only done for
    files the user has explicitly marked as trusted (``--trust-pickle``).
    """


def short_error(exc: BaseException, limit: int = 300) -> str:
    """Summarise an exception as ``"Type: first line"``, at most `limit` characters.

    Parameters
    ----------
    exc : BaseException
        The underlying error.
    limit : int
        Maximum length of the message part.

    Returns
    -------
    str
        A one-line description suitable for embedding in a sentence.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
