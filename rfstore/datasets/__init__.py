"""Image folders as model inputs: scanning, robust decoding, preprocessing, batching.

* :func:`scan_image_folder` -> :class:`ImageFolderIndex` (sorted ids, labels, skipped files)
* :func:`load_rgb` -> upright 8-bit RGB ``PIL.Image`` or :class:`BadImageError`
* :class:`Preprocessing` -> (C, H, W) float32 network input (RGB or grayscale), JSON round trip
* :class:`ImageFolderDataset` + :func:`collate_images` -> batches of good images plus
  a list of ``(image_index, reason)`` for bad ones
* :func:`check_relative_paths`, :func:`resolve_inside` -> a store's image paths never
  leave the dataset root
"""
from __future__ import annotations

from typing import Any

from rfstore.datasets import reasons
from rfstore.datasets.image_folder import (
    IMAGE_EXTENSIONS,
    MASKS_DIRECTORY,
    ImageFolderIndex,
    SkippedFile,
    scan_image_folder,
)
from rfstore.datasets.image_loading import BadImageError, load_rgb
from rfstore.datasets.paths import UnsafeImagePathError, check_relative_paths, resolve_inside

# torch and torchvision take seconds to import: the names that need them load on first use,
# so that store-only code (status, path checks) stays fast
_LAZY = {
    "IMAGENET_MEAN": "preprocess", "IMAGENET_STD": "preprocess", "Preprocessing": "preprocess",
    "ImageBatch": "torch_dataset", "ImageFolderDataset": "torch_dataset",
    "ImageSizeMismatchError": "torch_dataset", "collate_images": "torch_dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"rfstore.datasets.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rfstore.datasets' has no attribute {name!r}")


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
    "UnsafeImagePathError",
    "check_relative_paths",
    "collate_images",
    "load_rgb",
    "reasons",
    "resolve_inside",
    "scan_image_folder",
]
