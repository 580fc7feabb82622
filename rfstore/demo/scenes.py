"""A procedurally generated scene dataset (seeded, deterministic), with concept masks.

Each image shows, on a textured background, one to three objects of the kind
that defines its class (disks, squares, triangles, bars) in random colours,
sizes and places, plus sometimes a distractor of another kind. Every image gets
a per-pixel concept mask: 0 background, then one index per object kind.

Layout written by :func:`write_scene_folder` (the ImageFolder convention, plus
the concept-mask convention used by later stages)::

    DIR/<class>/<class>_<nnnn>.png        RGB image
    DIR/masks/<class>/<class>_<nnnn>.png  uint8 concept index per pixel
    DIR/concepts.json                     {"0": "background", "1": "disk", ...}
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CONCEPTS = ("background", "disk", "square", "triangle", "bar")
CLASSES = ("disks", "squares", "triangles", "bars")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A two-colour gradient with low-amplitude noise, or a stripe texture."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    if rng.random() < 0.3:
        period = rng.uniform(6, 16)
        img += 25 * np.sin(2 * np.pi * (xx * size) / period)[..., None]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, kind: str, rng: np.random.Generator,
          size: int, colour: tuple[int, int, int]) -> None:
    r = rng.uniform(0.08, 0.18) * size
    cy, cx = rng.uniform(r, size - r, 2)
    concept = CONCEPTS.index(kind)
    if kind == "disk":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=colour)
        mask.ellipse(box, fill=concept)
    elif kind == "square":
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.rectangle(box, fill=colour)
        mask.rectangle(box, fill=concept)
    elif kind == "triangle":
        pts = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
        draw.polygon(pts, fill=colour)
        mask.polygon(pts, fill=concept)
    else:  # bar: a thin long rectangle, horizontal or vertical
        w, h = (r * 2.2, r * 0.45) if rng.random() < 0.5 else (r * 0.45, r * 2.2)
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        draw.rectangle(box, fill=colour)
        mask.rectangle(box, fill=concept)


def make_scene(class_index: int, seed: int, size: int = 96) -> tuple[Image.Image, Image.Image]:
    """One RGB scene of class ``CLASSES[class_index]`` and its concept mask (mode L)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    mask = Image.new("L", (size, size), 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    kind = CONCEPTS[class_index + 1]
    objects = [kind] * int(rng.integers(1, 4))
    if rng.random() < 0.4:
        others = [c for c in CONCEPTS[1:] if c != kind]
        objects.insert(int(rng.integers(0, len(objects) + 1)), others[int(rng.integers(len(others)))])
    for obj in objects:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw(draw, mask_draw, obj, rng, size, colour)
    return image, mask


def write_scene_folder(root: Path, per_class: int = 16, seed: int = 0, size: int = 96) -> list[Path]:
    """Write ``per_class`` scenes of every class under ``root``; returns the image paths."""
    root = Path(root)
    paths = []
    for class_index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            image, mask = make_scene(class_index, seed * 1_000_003 + class_index * 10_007 + n, size)
            rel = Path(name) / f"{name}_{n:04d}.png"
            image.save(root / rel)
            mask.save(root / "masks" / rel)
            paths.append(root / rel)
    (root / "concepts.json").write_text(json.dumps({str(i): c for i, c in enumerate(CONCEPTS)}, indent=1))
    return paths
