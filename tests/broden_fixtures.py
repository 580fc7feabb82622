"""A tiny Broden-layout folder made from the demo's scenes, for the netdissect tests.

Categories (``category.csv`` order): ``object`` and ``color`` label pixels, ``scene``
labels whole images. Each image is a 96x96 demo scene; its segmentations are 48x48
(every other pixel of the scene's concept mask, as Broden's are half the image size):

* ``object``: layer 1, the shape under each pixel (labels 1-6); on every other image
  a second layer, ``edge`` (7), on the pixels whose right or lower neighbour has
  another shape: those pixels carry two object labels;
* ``color``: layer 1, ``bright`` (8) where the pixel's mean > 150; layer 2,
  ``reddish`` (300, so its PNG needs the green channel: 300 = 44 + 256 * 1) where
  red exceeds green and blue by 30;
* ``scene``: the scene's class (labels 10-15), an image-level label.

``bright`` is listed by ``object`` too, with a smaller coverage: its category is
``color``. The last image has only a scene label. Images 0-5 are ``train``, the
rest ``val``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfstore.demo.scenes import CLASSES, CONCEPTS, make_scene

SHAPES = {name: number for number, name in enumerate(CONCEPTS) if number}  # disk 1 ... texture 6
EDGE, BRIGHT, REDDISH = 7, 8, 300
SCENES = {name: 10 + i for i, name in enumerate(CLASSES)}
CATEGORIES = ("object", "color", "scene")


def label_png(path: Path, labels: np.ndarray) -> None:
    """Broden's encoding: label = R + 256 * G."""
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb, "RGB").save(path)


def _layers(image: np.ndarray, concepts: np.ndarray, with_edge: bool) -> dict[str, list[np.ndarray]]:
    """The 48x48 label layers of one scene, by category."""
    seg = concepts[::2, ::2].astype(np.int64)
    pixels = image[::2, ::2].astype(np.int64)
    layers = {"object": [seg], "color": []}
    if with_edge:
        edge = np.zeros_like(seg)
        edge[:, :-1] |= (seg[:, :-1] != seg[:, 1:]) * EDGE
        edge[:-1, :] |= (seg[:-1, :] != seg[1:, :]) * EDGE
        layers["object"].append(edge)
    layers["color"].append(np.where(pixels.mean(axis=2) > 150, BRIGHT, 0))
    red = (pixels[..., 0] > pixels[..., 1] + 30) & (pixels[..., 0] > pixels[..., 2] + 30)
    layers["color"].append(np.where(red, REDDISH, 0))
    return layers


def write_broden(root: Path, n_images: int = 10, seed: int = 0) -> Path:
    """Write the folder (see the module docstring); returns ``root``."""
    (root / "images" / "scenes").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        class_index = i % len(CLASSES)
        image, mask = make_scene(class_index, [seed, i])
        name = f"scenes/scene_{i:03d}"
        image.save(root / "images" / f"{name}.jpg", quality=95)
        cells = {"object": [], "color": [], "scene": [str(SCENES[CLASSES[class_index]])]}
        if i < n_images - 1:
            pixels = np.asarray(Image.open(root / "images" / f"{name}.jpg").convert("RGB"))
            for category, layers in _layers(pixels, np.asarray(mask), i % 2 == 0).items():
                for n, layer in enumerate(layers):
                    label_png(root / "images" / f"{name}_{category}_{n}.png", layer)
                    cells[category].append(f"{name}_{category}_{n}.png")
        rows.append([f"{name}.jpg", "train" if i < 6 else "val", 96, 96, 48, 48,
                     *(";".join(cells[c]) for c in CATEGORIES)])
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], rows)
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
         [[c, 0, 0, 0, n_images] for c in CATEGORIES])
    labels = {0: "-", **{n: s for s, n in SHAPES.items()}, EDGE: "edge", BRIGHT: "bright", REDDISH: "reddish",
              **{n: s for s, n in SCENES.items()}}
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[n, name, "", 1, 0.1, ""] for n, name in sorted(labels.items())])
    members = {"object": [*SHAPES.values(), EDGE, BRIGHT], "color": [BRIGHT, REDDISH], "scene": list(SCENES.values())}
    coverage = {("object", BRIGHT): 0.05, ("color", BRIGHT): 0.2}
    for category, numbers in members.items():
        _csv(root / f"c_{category}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[0, 0, "-", 0, 0.0]] + [[code, n, labels[n], 1, coverage.get((category, n), 0.1)]
                                      for code, n in enumerate(numbers, start=1)])
    return root


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


#: the demo network's layers that :func:`tiny_alexnet_half` rounds.
HALF_LAYERS = ("features.4", "features.7", "features.11")


def _round_to_half(module: object, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return output.half().float()


def tiny_alexnet_half() -> torch.nn.Module:
    """The demo's trained network with the outputs of :data:`HALF_LAYERS` rounded to float16 as it runs.

    ``activations --maps`` stores maps in float16; with this network the stored maps are
    exactly the float32 activations the netdissect stage sees, so a computation from the
    stored maps must give the stage's numbers (with the plain network, float16 rounding
    moves thresholds by ~3e-4 relative and IoUs by up to ~2e-3).
    """
    from rfstore.demo.network import tiny_alexnet_trained

    model = tiny_alexnet_trained()
    for name in HALF_LAYERS:
        model.get_submodule(name).register_forward_hook(_round_to_half)
    return model
