"""Builders of small image folders in every common format, good and bad, for tests.

Import from test modules (``from image_fixtures import make_mixed_image_folder``).
Everything is generated from a seed in a few milliseconds; nothing is downloaded.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rfstore.datasets import reasons

EXIF_ORIENTATION_TAG = 0x0112

MIXED_CLASSES = ("class_a", "class_b")
"""The two class subfolders written by :func:`make_mixed_image_folder`."""

EXIF_ROTATED_IMAGE = "class_b/exif_rotated.jpg"
"""Stored 320 x 240 (W x H) with EXIF orientation 6: upright it is 240 x 320."""


def noisy_rgb_image(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Random noise with a few filled shapes on top, mode RGB, size (width, height)."""
    noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(value) for value in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, scanlines: bytes) -> bytes:
    """A PNG file built from raw chunks (PNG spec), for what Pillow cannot write.

    Parameters
    ----------
    width, height : int
        As declared in IHDR (may be 0 or huge: nothing checks them).
    bit_depth, colour_type : int
        IHDR fields, e.g. 16 and 2 for 48-bit RGB.
    scanlines : bytes
        Filtered image data (each row prefixed with its filter byte) before zlib.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def write_png_16bit_rgb(path: Path, values: np.ndarray) -> None:
    """Write a 48-bit RGB PNG from an array of shape (H, W, 3) of uint16."""
    height, width, _ = values.shape
    big_endian = values.astype(">u2")
    scanlines = b"".join(b"\x00" + row.tobytes() for row in big_endian)
    path.write_bytes(png_bytes(width, height, 16, 2, scanlines))


def write_png_16bit_gray(path: Path, values: np.ndarray) -> None:
    """Write a 16-bit grayscale PNG (Pillow mode I;16) from uint16 of shape (H, W)."""
    Image.fromarray(values.astype(np.uint16)).save(path, format="PNG")


def make_mixed_image_folder(root: Path, seed: int = 0) -> dict[str, str]:
    """Write one good image per format and mode into two class subfolders.

    Sizes vary (not all square, several smaller than 224 on a side). Formats: JPEG
    (RGB, grayscale, CMYK, EXIF orientation 6, upper-case extension), PNG (RGB,
    16-bit grayscale, 16-bit RGB, RGBA, LA, palette with transparency), GIF
    (palette, animated), TIFF (RGB, float32), WebP, BMP, PPM, PBM (1-bit).

    Parameters
    ----------
    root : Path
        Created if missing.
    seed : int
        Seed of the image content.

    Returns
    -------
    dict of str to str
        Relative POSIX path -> what kind of file it is (e.g. ``"png-16bit-gray"``).
    """
    rng = np.random.default_rng(seed)
    for name in MIXED_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(relative: str, kind: str, image: Image.Image, **options: object) -> None:
        image.save(root / relative, **options)
        written[relative] = kind

    save("class_a/jpeg_rgb.jpg", "jpeg-rgb", noisy_rgb_image(300, 200, rng), quality=90)
    save("class_a/png_rgb.png", "png-rgb", noisy_rgb_image(180, 260, rng))
    gray16 = (np.asarray(noisy_rgb_image(64, 48, rng).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    write_png_16bit_gray(root / "class_a/png16_gray.png", gray16)
    written["class_a/png16_gray.png"] = "png-16bit-gray"
    rgb16 = np.asarray(noisy_rgb_image(100, 80, rng), dtype=np.uint16) * 257
    write_png_16bit_rgb(root / "class_a/png16_rgb.png", rgb16)
    written["class_a/png16_rgb.png"] = "png-16bit-rgb"
    rgba = noisy_rgb_image(150, 150, rng).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, size=(150, 150), dtype=np.uint8)))
    save("class_a/rgba.png", "png-rgba", rgba)
    save("class_a/gray_alpha.png", "png-la", noisy_rgb_image(70, 90, rng).convert("LA"))
    palette = noisy_rgb_image(120, 90, rng).quantize(colors=16)
    save("class_a/palette_transparent.png", "png-palette-transparency", palette, transparency=0)
    save("class_a/palette.gif", "gif-palette", noisy_rgb_image(130, 100, rng).quantize(colors=32))
    save("class_a/rgb.ppm", "ppm-rgb", noisy_rgb_image(60, 40, rng))
    save("class_a/bilevel.pbm", "pbm-1bit", noisy_rgb_image(50, 30, rng).convert("1"))

    save("class_b/cmyk.jpg", "jpeg-cmyk", noisy_rgb_image(200, 240, rng).convert("CMYK"))
    save("class_b/rgb.tif", "tiff-rgb", noisy_rgb_image(260, 190, rng))
    float_values = rng.random((40, 50)).astype(np.float32)
    save("class_b/float32.tif", "tiff-float32", Image.fromarray(float_values))
    save("class_b/rgb.webp", "webp-rgb", noisy_rgb_image(230, 230, rng), quality=90)
    save("class_b/rgb.bmp", "bmp-rgb", noisy_rgb_image(90, 300, rng))
    save("class_b/gray.jpg", "jpeg-gray", noisy_rgb_image(240, 320, rng).convert("L"))
    save("class_b/UPPER.JPG", "jpeg-uppercase-extension", noisy_rgb_image(210, 250, rng))
    rotated = noisy_rgb_image(320, 240, rng)
    exif = rotated.getexif()
    exif[EXIF_ORIENTATION_TAG] = 6
    save(EXIF_ROTATED_IMAGE, "jpeg-exif-orientation-6", rotated, exif=exif.tobytes())
    frames = [noisy_rgb_image(100, 110, rng).quantize(colors=16) for _ in range(2)]
    save(
        "class_b/animated.gif",
        "gif-animated",
        frames[0],
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
    )
    return written


def make_bad_files(root: Path) -> dict[str, str]:
    """Write files that must be skipped at scan time or rejected at load time.

    Symlinks and FIFOs are left out where the platform cannot make them.

    Parameters
    ----------
    root : Path
        Created if missing. Files go directly into it.

    Returns
    -------
    dict of str to str
        Relative POSIX path -> the expected reason (the reason string, or its prefix,
        from :mod:`rfstore.datasets.reasons`).
    """
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    (root / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = reasons.EMPTY_FILE

    jpeg = io.BytesIO()
    noisy_rgb_image(256, 256, np.random.default_rng(1)).save(jpeg, format="JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    expected["truncated.jpg"] = reasons.TRUNCATED

    (root / "text.png").write_text("this is a text file, not a PNG\n")
    expected["text.png"] = reasons.NOT_AN_IMAGE

    (root / "directory.jpg").mkdir()
    expected["directory.jpg"] = reasons.DIRECTORY_WITH_IMAGE_EXTENSION

    (root / "._apple_double.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    expected["._apple_double.jpg"] = reasons.HIDDEN_FILE

    # Headers only: 30000 x 30000 exceeds twice Pillow's limit (error), 10000 x 10000 exceeds it once (warning).
    (root / "bomb.png").write_bytes(png_bytes(30_000, 30_000, 8, 0, b""))
    expected["bomb.png"] = reasons.DECOMPRESSION_BOMB
    (root / "bomb_warning.png").write_bytes(png_bytes(10_000, 10_000, 8, 0, b""))
    expected["bomb_warning.png"] = reasons.DECOMPRESSION_BOMB

    links = {
        "loop.jpg": ("loop.jpg", reasons.SYMLINK_LOOP),
        "broken.jpg": ("does_not_exist.jpg", reasons.BROKEN_SYMLINK),
        "up": (".", reasons.DIRECTORY_SYMLINK),  # a directory loop: up/up/up/...
    }
    for name, (target, reason) in links.items():
        try:
            os.symlink(target, root / name)
        except (OSError, NotImplementedError):
            continue
        expected[name] = reason

    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.jpg")
        expected["fifo.jpg"] = reasons.NOT_A_REGULAR_FILE
    return expected
