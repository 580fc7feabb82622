"""Short, stable reason strings for images that are skipped or fail to load.

Every file that rfstore leaves out of a run is reported with one of these strings,
either in :attr:`ImageFolderIndex.skipped` (found cheaply while scanning, without
decoding) or as the ``reason`` of a :class:`BadImageError` (found while decoding).
Reasons that carry a detail (``"unreadable: Permission denied"``) always start with
one of the prefixes below, so callers can group them with ``str.startswith``.
"""
from __future__ import annotations

import re

# Found while scanning (no decoding).
EMPTY_FILE = "empty file"
NOT_A_REGULAR_FILE = "not a regular file"
DIRECTORY_WITH_IMAGE_EXTENSION = "directory with an image extension"
BROKEN_SYMLINK = "broken symlink"
SYMLINK_LOOP = "symlink loop"
SYMLINK_OUTSIDE_ROOT = "symlink to outside the root folder"
DIRECTORY_SYMLINK = "directory symlink (not followed)"
HIDDEN_FILE = "hidden file"
HIDDEN_DIRECTORY = "hidden directory (not scanned)"
UNREADABLE = "unreadable"  # prefix: "unreadable: <errno text>"

# Found while decoding.
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression bomb"  # prefix: "decompression bomb (N pixels)"
ZERO_SIZE_IMAGE = "zero-size image"
UNSUPPORTED_MODE = "unsupported image mode"  # prefix: "unsupported image mode <mode>"
CORRUPT_IMAGE = "corrupt image"  # prefix: "corrupt image: <decoder message>"

# Found while preprocessing a decoded image.
PREPROCESSING_FAILED = "preprocessing failed"  # prefix: "preprocessing failed: <message>"

_MAX_DETAIL_CHARS = 120


def unreadable(error: OSError) -> str:
    """Reason for a file the operating system refuses to open or stat.

    Parameters
    ----------
    error : OSError
        The error raised by ``os.stat``, ``os.scandir`` or ``open``.

    Returns
    -------
    str
        ``"unreadable: <errno text>"``, e.g. ``"unreadable: Permission denied"``.
    """
    detail = error.strerror or type(error).__name__
    return f"{UNREADABLE}: {detail}"


def decompression_bomb(n_pixels: int | None) -> str:
    """Reason for an image whose pixel count exceeds ``PIL.Image.MAX_IMAGE_PIXELS``.

    Parameters
    ----------
    n_pixels : int or None
        Width times height as declared in the file header, if known.

    Returns
    -------
    str
        ``"decompression bomb (N pixels)"``, or ``"decompression bomb"`` if N is unknown.
    """
    if n_pixels is None:
        return DECOMPRESSION_BOMB
    return f"{DECOMPRESSION_BOMB} ({n_pixels} pixels)"


def pixel_count_in_message(message: str) -> int | None:
    """The pixel count in one of Pillow's decompression-bomb messages, if present.

    Parameters
    ----------
    message : str
        For example ``"Image size (900000000 pixels) exceeds limit of ..."``.

    Returns
    -------
    int or None
        ``900000000`` for the example, ``None`` if the message has no such number.
    """
    match = re.search(r"\((\d+) pixels\)", message)
    return int(match.group(1)) if match else None


def unsupported_mode(mode: str) -> str:
    """Reason for an image whose Pillow mode cannot be converted to RGB."""
    return f"{UNSUPPORTED_MODE} {mode}"


def corrupt_image(error: BaseException) -> str:
    """Reason for any other decoder failure, with the decoder's message shortened.

    Parameters
    ----------
    error : BaseException
        What the decoder raised.

    Returns
    -------
    str
        ``"corrupt image: <message>"``; the message is cut to 120 characters.
    """
    return f"{CORRUPT_IMAGE}: {_short_message(error)}"


def preprocessing_failed(error: BaseException) -> str:
    """Reason for a decoded image that the preprocessing could not transform.

    Returns
    -------
    str
        ``"preprocessing failed: <message>"``; the message is cut to 120 characters.
    """
    return f"{PREPROCESSING_FAILED}: {_short_message(error)}"


def _short_message(error: BaseException) -> str:
    detail = " ".join(str(error).split()) or type(error).__name__
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return detail
