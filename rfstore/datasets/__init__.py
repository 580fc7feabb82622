"""Image folders as model inputs: scanning, robust decoding, preprocessing, batching.

* :func:`scan_image_folder` -> :class:`ImageFolderIndex` (sorted ids, labels, skipped files)
* :func:`load_rgb` -> upright 8-bit RGB ``PIL.Image`` or :class:`BadImageError`
* :class:`Preprocessing` -> (3, H, W) float32 network input, JSON round trip
* :class:`ImageFolderDataset` + :func:`collate_images` -> batches of good images plus
  a list of ``(image_index, reason)`` for bad ones
"""
from __future__ import annotations

from rfstore.datasets import reasons
from rfstore.datasets.image_folder import (
    IMAGE_EXTENSIONS,
    MASKS_DIRECTORY,
    ImageFolderIndex,
    SkippedFile,
    scan_image_folder,
)
from rfstore.datasets.image_loading import BadImageError, load_rgb
from rfstore.datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from rfstore.datasets.torch_dataset import (
    ImageBatch,
    ImageFolderDataset,
    ImageSizeMismatchError,
    collate_images,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MASKS_DIRECTORY",
    "BadImageError",
    "ImageBatch",
    "ImageFolderDataset",
    "ImageFolderIndex",
    "ImageSizeMismatchError",
    "Preprocessing",
    "SkippedFile",
    "collate_images",
    "load_rgb",
    "reasons",
    "scan_image_folder",
]
