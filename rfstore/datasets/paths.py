"""Image paths as a store records them: relative to the dataset root, and never leaving it.

A store names its images by POSIX paths relative to the dataset root
(``class_a/img01.png``). A store is data that may come from elsewhere, so before
any file is opened the recorded paths are checked (:func:`check_relative_paths`):
an absolute path, a ``..`` component, an empty name or a NUL byte is refused, so
``../../etc/passwd`` or ``/etc/passwd`` is never read. At read time
:func:`resolve_inside` also follows symlinks and refuses a file whose real
location is outside the root (a symlink planted after ``init``).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeImagePathError", "check_relative_path", "check_relative_paths", "resolve_inside"]

from rfstore.errors import InputError


class UnsafeImagePathError(InputError, ValueError):
    """A recorded image path that is not a plain relative path inside the dataset root."""


def check_relative_path(relative: str) -> str:
    """``relative`` if it is a safe relative POSIX path, else :class:`UnsafeImagePathError`."""
    text = str(relative)
    parts = PurePosixPath(text).parts
    unsafe = not text or "\x00" in text or PurePosixPath(text).is_absolute() or ".." in parts
    if unsafe:
        raise UnsafeImagePathError(
            f"image path {text!r} is not a relative path inside the dataset root; refusing to read it "
            f"(a store records paths like 'class/image.jpg': was this store edited or made elsewhere?)")
    return text


def check_relative_paths(paths: Iterable[str]) -> None:
    """Check every path with :func:`check_relative_path` (the first bad one raises)."""
    for path in paths:
        check_relative_path(path)


def resolve_inside(root: str | os.PathLike[str], relative: str, real_root: str | None = None) -> Path:
    """``root / relative``, after checking that it is, symlinks followed, inside ``root``.

    ``real_root`` is ``os.path.realpath(root)``, if the caller has it already.

    Raises
    ------
    UnsafeImagePathError
        ``relative`` is not a safe relative path, or its real location is outside ``root``.
    """
    path = Path(root) / check_relative_path(relative)
    real_root = real_root or os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeImagePathError(f"image {relative!r} leads outside the dataset root {root} "
                                   f"(to {real}); refusing to read it")
    return path
