"""Index a folder of images: which files are images, in what order, with which class.

:func:`scan_image_folder` walks a user's folder once, cheaply (one ``stat`` per
candidate file, no decoding), and returns an :class:`ImageFolderIndex`: the sorted
image ids (POSIX paths relative to the root), their class labels following
torchvision's ``ImageFolder`` convention, and every file it left out with the
reason. Files that look fine here but fail to decode are caught later by
:func:`~rfstore.datasets.image_loading.load_rgb`, which is re-exported here.

Rules of the scan
-----------------
* Candidates are files whose lowercase extension is in :data:`IMAGE_EXTENSIONS`.
* Order is the sorted relative POSIX path string (the same on every platform).
* Skipped and recorded: empty files, directories named like images (their contents
  are still scanned), broken symlinks, symlink loops, symlinks that resolve outside
  the root, directory symlinks (never followed: this rules out loops and images
  counted twice), special files such as FIFOs, unreadable files and directories,
  hidden files with an image extension (e.g. macOS ``._photo.jpg``) and hidden
  directories (not descended into).
* A top-level ``masks/`` directory is reserved for concept masks and not scanned.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfstore.datasets import reasons
from rfstore.datasets.image_loading import BadImageError, load_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASKS_DIRECTORY",
    "BadImageError",
    "ImageFolderIndex",
    "SkippedFile",
    "load_rgb",
    "scan_image_folder",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
"""Lowercase file extensions that :func:`scan_image_folder` treats as images."""

MASKS_DIRECTORY = "masks"
"""Top-level directory name reserved for concept masks; never scanned for images."""

_DIGEST_FORMAT = "rfstore.image-folder-index.v1"


@dataclass(frozen=True)
class SkippedFile:
    """A path that :func:`scan_image_folder` left out, and why.

    Parameters
    ----------
    path : str
        POSIX path relative to the root folder.
    reason : str
        A short, stable string from :mod:`rfstore.datasets.reasons`.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class ImageFolderIndex:
    """The images of one folder, in a fixed order, with class labels.

    Parameters
    ----------
    root : Path
        The folder, absolute and resolved.
    paths : tuple of str, length N
        Image ids: POSIX paths relative to ``root``, sorted as strings.
    labels : numpy.ndarray of int64, shape (N,)
        ``labels[i]`` indexes ``classes`` for image ``i``; -1 for an image directly in
        ``root`` (and for every image when there are no class subfolders).
        Stored read-only.
    classes : tuple of str, length C
        Sorted names of the first-level subdirectories that contain images.
    skipped : tuple of SkippedFile
        Paths left out by the scan, sorted by path.
    """

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[SkippedFile, ...] = ()

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64, copy=True).reshape(-1)
        if labels.shape != (len(self.paths),):
            raise ValueError(f"labels has shape {labels.shape}, expected ({len(self.paths)},)")
        if labels.size and (labels.min() < -1 or labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [-1, {len(self.classes) - 1}]")
        labels.setflags(write=False)
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageFolderIndex):
            return NotImplemented
        return (
            self.root == other.root
            and self.paths == other.paths
            and self.classes == other.classes
            and self.skipped == other.skipped
            and np.array_equal(self.labels, other.labels)
        )

    def __hash__(self) -> int:
        return hash((self.root, self.paths, self.classes))

    def image_path(self, index: int) -> Path:
        """The absolute path of image ``index``."""
        return self.root / self.paths[index]

    def digest(self) -> str:
        """A fingerprint of the image list, to detect that a folder has changed.

        Returns
        -------
        str
            SHA-256 hex digest of the image ids, labels and class names. It does not
            depend on ``root`` (a moved folder keeps its digest), on ``skipped``, or
            on file contents.
        """
        payload = {
            "format": _DIGEST_FORMAT,
            "paths": list(self.paths),
            "labels": self.labels.tolist(),
            "classes": list(self.classes),
        }
        encoded = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def scan_image_folder(root: str | os.PathLike[str]) -> ImageFolderIndex:
    """Find every image under ``root``, recursively, without decoding any.

    Parameters
    ----------
    root : str or Path
        The folder. Class subfolders are optional.

    Returns
    -------
    ImageFolderIndex
        N images sorted by relative POSIX path, with labels and skipped paths.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    NotADirectoryError
        If ``root`` is not a directory.
    """
    resolved_root = Path(root).resolve(strict=True)
    if not resolved_root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root))
    paths: list[str] = []
    skipped: list[SkippedFile] = []
    pending_directories = [""]
    while pending_directories:
        relative_directory = pending_directories.pop()
        absolute_directory = os.path.join(resolved_root, relative_directory)
        try:
            with os.scandir(absolute_directory) as scanner:
                entries = list(scanner)
        except OSError as error:
            skipped.append(SkippedFile(relative_directory, reasons.unreadable(error)))
            continue
        for entry in entries:
            relative = f"{relative_directory}/{entry.name}" if relative_directory else entry.name
            verdict = _classify_entry(entry, relative, resolved_root)
            if verdict is _IMAGE:
                paths.append(relative)
            elif verdict is _DIRECTORY:
                pending_directories.append(relative)
                if _has_image_extension(entry.name):
                    skipped.append(SkippedFile(relative, reasons.DIRECTORY_WITH_IMAGE_EXTENSION))
            elif isinstance(verdict, str):
                skipped.append(SkippedFile(relative, verdict))
    paths.sort()
    skipped.sort(key=lambda skipped_file: skipped_file.path)
    classes, labels = _class_labels(paths)
    return ImageFolderIndex(
        root=resolved_root,
        paths=tuple(paths),
        labels=labels,
        classes=classes,
        skipped=tuple(skipped),
    )


class _Verdict:
    """A marker for what the scan does with one directory entry."""


_IMAGE = _Verdict()
_DIRECTORY = _Verdict()
_IGNORED = _Verdict()


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _classify_entry(entry: os.DirEntry[str], relative: str, resolved_root: Path) -> _Verdict | str:
    """Image, directory to descend into, ignored, or a skip reason."""
    is_image_name = _has_image_extension(entry.name)
    if entry.name.startswith("."):
        if is_image_name:
            return reasons.HIDDEN_FILE
        if entry.is_dir(follow_symlinks=False):
            return reasons.HIDDEN_DIRECTORY
        return _IGNORED
    if "/" not in relative and entry.name == MASKS_DIRECTORY and entry.is_dir(follow_symlinks=False):
        return _IGNORED
    if entry.is_symlink():
        return _classify_symlink(entry, is_image_name, resolved_root)
    if entry.is_dir(follow_symlinks=False):
        return _DIRECTORY
    if not is_image_name:
        return _IGNORED
    try:
        file_stat = entry.stat(follow_symlinks=False)
    except OSError as error:
        return reasons.unreadable(error)
    return _classify_file(entry.path, file_stat)


def _classify_symlink(entry: os.DirEntry[str], is_image_name: bool, resolved_root: Path) -> _Verdict | str:
    try:
        target_stat = os.stat(entry.path)
    except OSError as error:
        if not is_image_name:
            return _IGNORED
        if error.errno == errno.ELOOP:
            return reasons.SYMLINK_LOOP
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return reasons.BROKEN_SYMLINK
        return reasons.unreadable(error)
    if stat.S_ISDIR(target_stat.st_mode):
        return reasons.DIRECTORY_SYMLINK
    if not is_image_name:
        return _IGNORED
    if not Path(os.path.realpath(entry.path)).is_relative_to(resolved_root):
        return reasons.SYMLINK_OUTSIDE_ROOT
    return _classify_file(entry.path, target_stat)


def _classify_file(path: str, file_stat: os.stat_result) -> _Verdict | str:
    if not stat.S_ISREG(file_stat.st_mode):
        return reasons.NOT_A_REGULAR_FILE
    if file_stat.st_size == 0:
        return reasons.EMPTY_FILE
    if not os.access(path, os.R_OK):
        return reasons.unreadable(PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    return _IMAGE


def _class_labels(sorted_paths: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Classes = sorted first-level subdirectories holding images; labels of shape (N,)."""
    first_components = [path.split("/", 1)[0] if "/" in path else None for path in sorted_paths]
    classes = tuple(sorted({component for component in first_components if component is not None}))
    class_index = {name: index for index, name in enumerate(classes)}
    labels = np.array(
        [-1 if component is None else class_index[component] for component in first_components],
        dtype=np.int64,
    )
    return classes, labels
