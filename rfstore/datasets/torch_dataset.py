"""A PyTorch Dataset over image files that reports bad images instead of raising.

A run over 100k user images must not stop at image 73,512 because one file is
truncated. :class:`ImageFolderDataset` therefore returns, for every item, the image
index, the tensor and an error string (empty for good images), and
:func:`collate_images` stacks the good images and lists the bad ones.

The dataset keeps its image ids in two numpy arrays (one byte buffer, one offset
array) rather than a list of Python strings, so forked DataLoader workers share them
without copy-on-write growth, and it never caches decoded images.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from rfstore.errors import InputError
from rfstore.datasets import reasons
from rfstore.datasets.image_folder import ImageFolderIndex
from rfstore.datasets.image_loading import BadImageError, load_rgb
from rfstore.datasets.paths import UnsafeImagePathError, check_relative_paths, resolve_inside
from rfstore.datasets.preprocess import Preprocessing

__all__ = [
    "ImageBatch",
    "ImageFolderDataset",
    "ImageSizeMismatchError",
    "collate_images",
]

_UNKNOWN_SIZE = (1, 1)

ImageItem = tuple[int, torch.Tensor, str]
"""One dataset item: (image_index, tensor of shape (C, H, W), error or ""); C = preprocessing.channels."""


class ImageSizeMismatchError(InputError, ValueError):
    """Good images in one batch have different sizes, so they cannot be stacked.

    Happens with a :class:`Preprocessing` without ``crop`` on images of mixed sizes;
    use a crop or ``batch_size=1``. The message names two offending images.

    Parameters
    ----------
    message : str
        The description (a single string, so DataLoader workers can re-raise it).
    image_ids : tuple of str
        The two offending images.
    sizes : tuple of tuple of int
        Their tensor shapes, each (C, H, W).
    """

    def __init__(
        self,
        message: str,
        image_ids: tuple[str, ...] = (),
        sizes: tuple[tuple[int, ...], ...] = (),
    ) -> None:
        super().__init__(message)
        self.image_ids = image_ids
        self.sizes = sizes


class ImageBatch(NamedTuple):
    """A collated batch; unpacks as ``indices, images, errors``.

    Attributes
    ----------
    indices : torch.Tensor
        Int64, shape (B,): the image index of every item of the batch, good or bad,
        in batch order.
    images : torch.Tensor
        Float32, shape (G, C, H, W): the good images only, in batch order; row ``r``
        is the ``r``-th index of ``indices`` that is not in ``errors``.
    errors : list of (int, str)
        ``(image_index, reason)`` for each bad image of the batch, in batch order.
    """

    indices: torch.Tensor
    images: torch.Tensor
    errors: list[tuple[int, str]]


class _PackedStrings(Sequence[str]):
    """An immutable sequence of N strings stored as one byte buffer and (N + 1,) offsets."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [string.encode("utf-8", "surrogateescape") for string in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")


class ImageFolderDataset(Dataset[ImageItem]):
    """Decoded, preprocessed images of a folder, one item per image.

    Parameters
    ----------
    root : str or Path
        The folder the image ids are relative to.
    paths : sequence of str, length N
        Image ids (POSIX paths relative to ``root``), e.g. ``ImageFolderIndex.paths``.
    preprocessing : Preprocessing
        Applied to every decoded RGB image.
    indices : sequence of int, optional
        The subset of image indices (into ``paths``) this dataset serves, in order;
        all N images when None.

    Notes
    -----
    Item ``i`` is ``(image_index, tensor, error)``: ``image_index`` is
    ``indices[i]``; for a good image ``tensor`` is float32 (C, H, W) and ``error`` is
    ``""``; for a bad one ``tensor`` is zeros of shape (C, crop, crop), or (C, 1, 1)
    when the output size is not fixed, and ``error`` is the reason. Never raises for
    a bad image. C is ``preprocessing.channels`` (3, or 1 for grayscale input).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        paths: Sequence[str],
        preprocessing: Preprocessing,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.preprocessing = preprocessing
        check_relative_paths(paths)  # a store's paths never leave the root (UnsafeImagePathError)
        self._real_root = os.path.realpath(self.root)
        self._image_ids = _PackedStrings(paths)
        n_images = len(self._image_ids)
        if indices is None:
            self._indices = np.arange(n_images, dtype=np.int64)
        else:
            self._indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self._indices.size and (self._indices.min() < 0 or self._indices.max() >= n_images):
                raise IndexError(f"indices must lie in [0, {n_images}), got a value outside")
        self._indices.setflags(write=False)

    @classmethod
    def from_index(
        cls,
        index: ImageFolderIndex,
        preprocessing: Preprocessing,
        indices: Sequence[int] | None = None,
    ) -> ImageFolderDataset:
        """The dataset of a scanned folder (see :func:`scan_image_folder`)."""
        return cls(index.root, index.paths, preprocessing, indices)

    @property
    def image_ids(self) -> Sequence[str]:
        """All N image ids (not only the subset in ``indices``)."""
        return self._image_ids

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, position: int) -> ImageItem:
        image_index = int(self._indices[position])
        try:  # a symlink put in after init may lead out of the root: never follow it there
            path = resolve_inside(self.root, self._image_ids[image_index], self._real_root)
        except UnsafeImagePathError:
            return image_index, self._placeholder(), reasons.SYMLINK_OUTSIDE_ROOT
        try:
            image = load_rgb(path)
        except BadImageError as error:
            return image_index, self._placeholder(), error.reason
        try:
            tensor = self.preprocessing(image)
        except MemoryError:
            raise
        except Exception as error:  # one odd image must not end a 100k-image run
            return image_index, self._placeholder(), reasons.preprocessing_failed(error)
        return image_index, tensor, ""

    def collate(self, batch: Sequence[ImageItem]) -> ImageBatch:
        """:func:`collate_images` naming image ids (not indices) in size errors."""
        return collate_images(batch, image_ids=self._image_ids)

    def _placeholder(self) -> torch.Tensor:
        height, width = self.preprocessing.output_size() or _UNKNOWN_SIZE
        return torch.zeros((self.preprocessing.channels, height, width), dtype=torch.float32)


def collate_images(batch: Sequence[ImageItem], image_ids: Sequence[str] | None = None) -> ImageBatch:
    """Stack the good images of a batch and list the bad ones.

    Parameters
    ----------
    batch : sequence of (int, torch.Tensor, str), length B
        Items of :class:`ImageFolderDataset`.
    image_ids : sequence of str, optional
        All image ids, to name files in errors (``ImageFolderDataset.collate`` passes
        them); images are named ``"image #<index>"`` otherwise.

    Returns
    -------
    ImageBatch
        ``(indices (B,) int64, images (G, C, H, W) float32, errors)``: the indices of
        all B items, the G <= B good images stacked in batch order, and
        ``(image_index, reason)`` for each of the B - G bad ones.

    Raises
    ------
    ImageSizeMismatchError
        If two good images have different shapes.
    """
    all_indices: list[int] = []
    good_indices: list[int] = []
    good_tensors: list[torch.Tensor] = []
    errors: list[tuple[int, str]] = []
    for image_index, tensor, error in batch:
        all_indices.append(int(image_index))
        if error:
            errors.append((int(image_index), error))
            continue
        if good_tensors and tensor.shape != good_tensors[0].shape:
            raise _size_mismatch(good_indices[0], good_tensors[0], int(image_index), tensor, image_ids)
        good_indices.append(int(image_index))
        good_tensors.append(tensor)
    indices = torch.tensor(all_indices, dtype=torch.int64)
    if good_tensors:
        images = torch.stack(good_tensors)
    else:
        item_shape = tuple(batch[0][1].shape) if batch else (3, *_UNKNOWN_SIZE)
        images = torch.zeros((0, *item_shape), dtype=torch.float32)
    return ImageBatch(indices, images, errors)


def _size_mismatch(
    first_index: int,
    first: torch.Tensor,
    second_index: int,
    second: torch.Tensor,
    image_ids: Sequence[str] | None,
) -> ImageSizeMismatchError:
    def name(index: int) -> str:
        return repr(image_ids[index]) if image_ids is not None else f"image #{index}"

    first_size, second_size = tuple(first.shape), tuple(second.shape)
    message = (
        f"images in one batch have different sizes: {name(first_index)} is {first_size} but "
        f"{name(second_index)} is {second_size}; use a Preprocessing with crop "
        "(e.g. Preprocessing.imagenet()) or batch_size=1"
    )
    ids = (
        (image_ids[first_index], image_ids[second_index])
        if image_ids is not None
        else (f"image #{first_index}", f"image #{second_index}")
    )
    return ImageSizeMismatchError(message, image_ids=ids, sizes=(first_size, second_size))
