"""Decode one image file of any common format into an upright 8-bit RGB image.

:func:`load_rgb` follows torchvision's ``ImageFolder`` loader (``convert("RGB")``)
with three deliberate differences:

* **EXIF orientation is applied**, so photos taken with a rotated phone come out
  upright (torchvision's ``pil_loader`` ignores the orientation tag, which gives
  sideways images and swapped width/height).
* **High-bit-depth integer images are scaled, not clipped.** Pillow's
  ``convert("RGB")`` clips 16-bit values to 255, turning almost every 16-bit image
  white. Here modes ``I;16``, ``I;16L``, ``I;16B`` and ``I;16N`` are divided by 257
  (65535 -> 255, 32768 -> 128). Mode ``I`` (32-bit signed storage) uses the bit
  depth the file declares: TIFF ``BitsPerSample`` (with ``SampleFormat``; signed
  data uses its positive range), and 16 bits for every other format (Pillow opens
  16-bit PNG/PGM data as ``I`` in some versions, and rescales PGM/PPM ``maxval``
  to 16 bits). Negative values become 0.
* **Float images (mode ``F``) are taken to hold intensities in [0, 1]**, the usual
  convention for float image data; they are clipped to [0, 1], multiplied by 255
  and rounded. NaN becomes 0. (Pillow would truncate them to 0 or 1.)

Alpha channels are dropped, not composited (as ``convert("RGB")`` does), palette
images are expanded, CMYK is converted with Pillow's naive formula, ICC profiles
are ignored, and multi-frame files (animated GIF/WebP, multi-page TIFF) give their
first frame.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from rfstore.errors import InputError
from rfstore.datasets import reasons

__all__ = ["BadImageError", "load_rgb"]

_SIXTEEN_BIT_MAX = 2**16 - 1
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED_INTEGER = 2

# EXIF orientation value -> the transposition that makes the image upright (EXIF 2.3, tag 0x0112).
_UPRIGHTING_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImageError(InputError, ValueError):
    """An image file that cannot be decoded into an RGB image.

    Parameters
    ----------
    path : str or Path
        The file.
    reason : str
        A short, stable string from :mod:`rfstore.datasets.reasons`,
        e.g. ``"truncated"`` or ``"decompression bomb (900000000 pixels)"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadImageError], tuple[Path, str]]:
        return (type(self), (self.path, self.reason))


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open, fully decode and convert one image file to upright 8-bit RGB.

    Parameters
    ----------
    path : str or Path
        An image file in any format Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP,
        PPM/PGM/PBM, ...).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, size (W, H) after EXIF orientation; detached from the file,
        which is closed.

    Raises
    ------
    BadImageError
        With ``reason`` one of: ``"unreadable: <errno text>"``, ``"not a regular
        file"``, ``"empty file"``, ``"not an image"``, ``"truncated"``,
        ``"decompression bomb (N pixels)"`` (more than ``PIL.Image.MAX_IMAGE_PIXELS``,
        read at call time; ``None`` disables the check), ``"zero-size image"``,
        ``"unsupported image mode <mode>"`` or ``"corrupt image: <message>"``.

    Notes
    -----
    Truncated files are only detected while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
    is False (Pillow's default); this function never changes it. Pillow's
    ``DecompressionBombWarning`` is turned into an error with
    ``warnings.catch_warnings``, which is process-wide, and the pixel count is also
    checked explicitly, so the limit holds in threads too.
    """
    path = Path(path)
    try:
        file_stat = os.stat(path)
    except OSError as error:
        raise BadImageError(path, reasons.unreadable(error)) from error
    if not stat.S_ISREG(file_stat.st_mode):
        raise BadImageError(path, reasons.NOT_A_REGULAR_FILE)
    if file_stat.st_size == 0:
        raise BadImageError(path, reasons.EMPTY_FILE)
    try:
        with open(path, "rb") as file:
            return _decode_upright_rgb(file, path)
    except BadImageError:
        raise
    except MemoryError:
        raise
    except UnidentifiedImageError as error:
        raise BadImageError(path, reasons.NOT_AN_IMAGE) from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        n_pixels = reasons.pixel_count_in_message(str(error))
        raise BadImageError(path, reasons.decompression_bomb(n_pixels)) from error
    except OSError as error:
        if error.errno is not None:
            raise BadImageError(path, reasons.unreadable(error)) from error
        if "truncated" in str(error):
            raise BadImageError(path, reasons.TRUNCATED) from error
        raise BadImageError(path, reasons.corrupt_image(error)) from error
    except Exception as error:  # decoders raise SyntaxError, ValueError, EOFError, struct.error, ...
        raise BadImageError(path, reasons.corrupt_image(error)) from error


def _decode_upright_rgb(file: BinaryIO, path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(file) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise BadImageError(path, reasons.ZERO_SIZE_IMAGE)
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise BadImageError(path, reasons.decompression_bomb(width * height))
            image.load()
            orientation = _exif_orientation(image)
            rgb = _convert_to_rgb(image, path)
    transpose = _UPRIGHTING_TRANSPOSE.get(orientation)
    if transpose is None:
        return rgb
    upright = rgb.transpose(transpose)
    for key in ("exif", "xmp", "XML:com.adobe.xmp"):  # they still say "rotate me"
        upright.info.pop(key, None)
    return upright


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 to 8), or 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value)
    except Exception:  # a broken EXIF block should not cost the image
        return 1


def _convert_to_rgb(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        return _scaled_to_rgb(np.asarray(image), _SIXTEEN_BIT_MAX)
    if mode == "I":
        return _scaled_to_rgb(np.asarray(image), _declared_integer_max(image))
    if mode == "F":
        return _scaled_to_rgb(np.asarray(image), 1.0)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise BadImageError(path, reasons.unsupported_mode(mode)) from error


def _declared_integer_max(image: Image.Image) -> int:
    """The largest value a mode-"I" image's file format can store for one sample."""
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:
        bits = tags.get(_TIFF_BITS_PER_SAMPLE)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 1 < bits <= 32:
            sample_format = tags.get(_TIFF_SAMPLE_FORMAT, 1)
            if isinstance(sample_format, tuple):
                sample_format = sample_format[0] if sample_format else 1
            if sample_format == _TIFF_SIGNED_INTEGER:
                return 2 ** (bits - 1) - 1
            return 2**bits - 1
    return _SIXTEEN_BIT_MAX


def _scaled_to_rgb(values: np.ndarray, max_value: float) -> Image.Image:
    """Map one channel of shape (H, W) from [0, max_value] to 8 bits, as RGB."""
    as_float = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=max_value, neginf=0.0)
    as_uint8 = np.clip(np.rint(as_float * (255.0 / max_value)), 0, 255).astype(np.uint8)
    return Image.fromarray(as_uint8).convert("RGB")
