"""A procedurally generated scene dataset (seeded, deterministic), with concept masks.

Each scene shows, on a varied background (a two-colour gradient, a flat colour or
soft colour blotches, always with a little pixel noise), two or three objects of
the kind that defines its class, in random colours, sizes and places, and
sometimes one distractor of another kind:

=========  =========  ======================================================
class      concept    object
=========  =========  ======================================================
disks      disk       a filled disk
squares    square     a filled axis-aligned square
triangles  triangle   a filled upright triangle
bars       bar        a thin rectangle, horizontal or vertical
stripes    stripes    a square patch of two-colour stripes, any orientation
textures   texture    a square patch of a two-colour checkerboard or dots
=========  =========  ======================================================

Colours are drawn until they differ clearly from the background where the
object lands. Every scene gets a per-pixel concept mask (0 background, then one
index per object kind, the later object winning where two overlap).

The concept-mask convention (read by ``rfstore dissect``, for any dataset)
--------------------------------------------------------------------------
For an image folder ``DIR`` (images anywhere below it, subfolders are classes)::

    DIR/<relative path of an image>                      e.g. DIR/cats/img001.jpg
    DIR/masks/<same relative path, suffix .png>          e.g. DIR/masks/cats/img001.png
    DIR/concepts.json                                    {"0": "background", "1": "disk", ...}

Each mask is a single-channel PNG (mode ``L``, ``P`` or 16-bit ``I;16``) of the
image's own size whose pixel value is the index of the concept present there;
``concepts.json`` names the indices. Index 0 stands for "no concept"
(background): it is scored like the others but never given as a unit's label.
Values not listed in ``concepts.json`` belong to no concept. Images without a
mask file are left out of the dissection. The top-level ``masks/`` folder is
never scanned for images.

:func:`write_scene_folder` writes exactly this layout::

    DIR/<class>/<class>_<nnnn>.png        RGB image
    DIR/masks/<class>/<class>_<nnnn>.png  uint8 concept index per pixel
    DIR/concepts.json
    DIR/scenes.json                       the generation parameters (per class, seed, size)

Class folders sort in :data:`CLASSES` order, so the folder's class indices are
the trained network's output indices.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CONCEPTS = ("background", "disk", "square", "triangle", "bar", "stripes", "texture")
#: class names in sorted order, so that the image folder's class indices are the network's outputs.
CLASSES = ("bars", "disks", "squares", "stripes", "textures", "triangles")
#: the concept whose objects make a scene of each class.
CLASS_CONCEPT = {"bars": "bar", "disks": "disk", "squares": "square", "stripes": "stripes",
                 "textures": "texture", "triangles": "triangle"}

#: dataset splits: the demo's images, the training set and the held-out set never share a scene seed.
SPLITS = {"demo": 0, "train": 1, "heldout": 2}

_MIN_CONTRAST = 90.0  # minimum RGB distance between an object's colour and the background under it


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float RGB in [0, 255]: a gradient, a flat colour or soft blotches, plus noise."""
    kind = rng.integers(3)
    if kind == 0:  # two-colour linear gradient at a random angle
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == 1:  # flat colour
        img = np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)).astype(np.float64)
    else:  # soft blotches: a 4x4 grid of random colours, bilinearly enlarged
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.BILINEAR), dtype=np.float64)
    return img + 6.0 * rng.standard_normal((size, size, 3), dtype=np.float32)


def _region(kind: str, rng: np.random.Generator, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """``(size, size)`` bool: the pixels an object of ``kind`` centred at (cy, cx), half-size r covers."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=1)
    elif kind == "bar":
        w, h = (r * 2.4, r * 0.5) if rng.random() < 0.5 else (r * 0.5, r * 2.4)
        draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=1)
    else:  # square, and the square patches of stripes and texture
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """An RGB colour at least ``_MIN_CONTRAST`` away from ``under`` (the mean background colour)."""
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _fill(kind: str, rng: np.random.Generator, size: int, under: np.ndarray) -> np.ndarray:
    """``(size, size, 3)`` float RGB: what the object shows (a flat colour or a two-colour pattern)."""
    first = _colour(rng, under)
    if kind not in ("stripes", "texture"):
        return np.broadcast_to(first, (size, size, 3))
    second = _colour(rng, first)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5, 9)
        on = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period) > 0
    elif rng.random() < 0.5:  # checkerboard
        cell = int(rng.integers(3, 6))
        on = ((yy // cell + xx // cell) % 2) == 0
    else:  # dots on a square lattice
        step = int(rng.integers(5, 8))
        dy, dx = (yy % step) - step / 2, (xx % step) - step / 2
        on = dy ** 2 + dx ** 2 <= (step * 0.3) ** 2
    return np.where(on[..., None], first, second)


def make_scene(class_index: int, seed: int | Sequence[int], size: int = 96) -> tuple[Image.Image, Image.Image]:
    """One scene of class ``CLASSES[class_index]``.

    Parameters
    ----------
    class_index : int
        Index into :data:`CLASSES`.
    seed : int or sequence of int
        Seed of ``numpy.random.default_rng``: the same seed gives the same scene.
    size : int
        Side of the square image in pixels.

    Returns
    -------
    image : PIL.Image.Image
        Mode ``RGB``, ``(size, size)``.
    mask : PIL.Image.Image
        Mode ``L``, ``(size, size)``: the index into :data:`CONCEPTS` of each pixel.
    """
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    kind = CLASS_CONCEPT[CLASSES[class_index]]
    objects = [kind] * int(rng.integers(2, 4))
    if rng.random() < 0.35:
        others = [c for c in CONCEPTS[1:] if c != kind]
        objects.insert(int(rng.integers(0, len(objects) + 1)), others[int(rng.integers(len(others)))])
    placed: list[tuple[float, float, float]] = []
    for obj in objects:
        r = rng.uniform(0.08, 0.16) * size
        for _ in range(20):  # avoid heavy overlaps when there is room
            cy, cx = rng.uniform(r, size - r, 2)
            if all(np.hypot(cy - py, cx - px) >= 0.8 * (r + pr) for py, px, pr in placed):
                break
        placed.append((cy, cx, r))
        region = _region(obj, rng, size, cy, cx, r)
        under = image[region].mean(axis=0) if region.any() else image.mean(axis=(0, 1))
        image[region] = _fill(obj, rng, size, under)[region]
        mask[region] = CONCEPTS.index(obj)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), Image.fromarray(mask, "L")


def scene_seed(seed: int, split: str, class_index: int, n: int) -> list[int]:
    """The seed of scene ``n`` of a class in a split (:data:`SPLITS`): distinct for every tuple."""
    return [int(seed), SPLITS[split], int(class_index), int(n)]


def scene_arrays(per_class: int, seed: int = 0, split: str = "train", size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Scenes in memory, for training.

    Returns
    -------
    images : numpy.ndarray
        ``(len(CLASSES) * per_class, size, size, 3)`` uint8, class by class.
    labels : numpy.ndarray
        ``(len(CLASSES) * per_class,)`` int64 class indices.
    """
    images = np.zeros((len(CLASSES) * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
    for class_index in range(len(CLASSES)):
        for n in range(per_class):
            image, _ = make_scene(class_index, scene_seed(seed, split, class_index, n), size)
            images[class_index * per_class + n] = np.asarray(image)
    return images, labels


def _write_scene(job: tuple[Path, int, int, int, int]) -> Path:
    """Draw scene ``n`` of a class and write it and its mask; returns the image's path."""
    root, class_index, n, seed, size = job
    name = CLASSES[class_index]
    image, mask = make_scene(class_index, scene_seed(seed, "demo", class_index, n), size)
    rel = Path(name) / f"{name}_{n:04d}.png"
    image.save(root / rel)
    mask.save(root / "masks" / rel)
    return root / rel


SCENES_FILE = "scenes.json"  # what write_scene_folder wrote, to know when a folder must be written again
SCENES_VERSION = 2


def _scene_record(per_class: int, seed: int, size: int) -> dict[str, object]:
    return {"version": SCENES_VERSION, "per_class": per_class, "seed": seed, "size": size,
            "classes": list(CLASSES), "concepts": list(CONCEPTS)}


def scene_folder_matches(root: Path, per_class: int = 16, seed: int = 0, size: int = 96) -> bool:
    """Whether ``root`` holds the scenes :func:`write_scene_folder` writes with these arguments."""
    record = Path(root) / SCENES_FILE
    try:
        return json.loads(record.read_text()) == _scene_record(per_class, seed, size)
    except (OSError, ValueError):
        return False


def write_scene_folder(root: Path, per_class: int = 16, seed: int = 0, size: int = 96,
                       replace: bool = False, workers: int = 1) -> list[Path]:
    """Write ``per_class`` scenes of every class, their masks and ``concepts.json`` under ``root``.

    With ``replace``, everything :func:`write_scene_folder` may have written there
    before (class folders, ``masks/``, ``concepts.json``, ``scenes.json``) is
    removed first. ``workers`` > 1 draws the scenes in that many processes (each
    scene has its own seed, so the files are the same). Returns the image paths,
    class by class.
    """
    root = Path(root)
    if replace:
        for name in (*CLASSES, "masks"):
            shutil.rmtree(root / name, ignore_errors=True)
    jobs = [(root, class_index, n, seed, size) for class_index in range(len(CLASSES)) for n in range(per_class)]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            paths = list(pool.map(_write_scene, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        paths = [_write_scene(job) for job in jobs]
    (root / "concepts.json").write_text(json.dumps({str(i): c for i, c in enumerate(CONCEPTS)}, indent=1))
    (root / SCENES_FILE).write_text(json.dumps(_scene_record(per_class, seed, size)))
    return paths
