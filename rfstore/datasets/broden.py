"""Broden-layout datasets (Bau et al. 2017, Network Dissection), read as they are.

A Broden folder ``DIR`` holds::

    DIR/index.csv        image,split,ih,iw,sh,sw,<one column per category>
    DIR/category.csv     name,...                  the categories, in order
    DIR/label.csv        number,name,...           every label; numbers are global over all categories
    DIR/c_<category>.csv code,number,name,frequency,coverage   the labels of one category (code 0: none)
    DIR/images/...       the images and the segmentation PNGs, paths relative to DIR/images

In ``index.csv`` each category cell is a ``;``-separated list, possibly empty. An
item that is a number is an image-level label (scene, texture: it covers the
whole image); any other item is a segmentation PNG (relative to ``images/``)
whose pixel ``(y, x)`` carries label ``R + 256 * G`` (label 0: no label). A
category may list several PNGs (several labels per pixel: parts, materials).
The segmentations are ``sh x sw`` pixels; the image is ``ih x iw``.

A label's *category* (its primary category, NetDissect-Lite's ``labelcat``) is
the category of highest ``coverage`` among those whose ``c_<category>.csv``
lists it with a nonzero code (ties: the later category in ``category.csv``),
among the categories chosen for a dissection; a label no chosen category lists
(label 0 among them) has none (-1).

:func:`read_broden` reads the CSV files only (no image is decoded);
:meth:`BrodenDataset.annotation` decodes one image's segmentations.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rfstore.stats.netdissect import Annotation
from rfstore.datasets.image_folder import ImageFolderIndex, SkippedFile
from rfstore.datasets.paths import UnsafeImagePathError, check_relative_path
from rfstore.errors import InputError

INDEX_FILE, LABEL_FILE, CATEGORY_FILE = "index.csv", "label.csv", "category.csv"
IMAGES_DIR = "images"
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
MISSING_IMAGE = "listed in index.csv but missing"


class BrodenError(InputError):
    """A Broden folder that cannot be read as one (a missing file or column, a bad value)."""


@dataclass(frozen=True)
class BrodenRow:
    """One image of ``index.csv``.

    Attributes
    ----------
    image : str
        Path relative to ``DIR/images``.
    split : str
        Its split (``train``, ``val``, ...).
    seg_size : tuple of int
        ``(sh, sw)``: the size of its segmentations.
    items : tuple of tuple
        Per category (``category.csv`` order): its PNG paths (str) and image-level labels (int).
    """

    image: str
    split: str
    seg_size: tuple[int, int]
    items: tuple[tuple[str | int, ...], ...]

    def has_data(self, categories: Sequence[int]) -> bool:
        """Whether any of the chosen categories (indices) annotates this image."""
        return any(self.items[c] for c in categories)


@dataclass(frozen=True)
class BrodenDataset:
    """The tables of a Broden folder.

    Attributes
    ----------
    root : Path
        The folder.
    categories : tuple of str
        Category names in ``category.csv`` order.
    label_names : tuple of str
        ``(L,)``: the name of label number ``l`` ("" for numbers ``label.csv`` skips).
    coverage : numpy.ndarray
        ``(C, L)`` float64: each label's coverage in each category, NaN where the category does not list it.
    rows : tuple of BrodenRow
        Every image of ``index.csv``, in its order.
    digest : str
        sha256 of the CSV files: changes when the annotations do.
    """

    root: Path
    categories: tuple[str, ...]
    label_names: tuple[str, ...]
    coverage: np.ndarray
    rows: tuple[BrodenRow, ...]
    digest: str

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def splits(self) -> list[str]:
        return sorted({row.split for row in self.rows})

    def category_indices(self, names: Sequence[str] = ()) -> list[int]:
        """Indices of the named categories (all when none is named), in ``category.csv`` order."""
        unknown = sorted(set(names) - set(self.categories))
        if unknown:
            raise BrodenError(f"no category {', '.join(unknown)} in {self.root / CATEGORY_FILE} "
                              f"(it has {', '.join(self.categories)})")
        return [i for i, name in enumerate(self.categories) if not names or name in names]

    def primary_categories(self, chosen: Sequence[int] | None = None) -> np.ndarray:
        """``(L,)`` int64: each label's category as a position in ``chosen`` (category indices, default
        all of them); -1 where no chosen category lists the label."""
        chosen = list(range(len(self.categories))) if chosen is None else list(chosen)
        primary = np.full(self.n_labels, -1, dtype=np.int64)
        best = np.full(self.n_labels, -np.inf)
        for position, c in enumerate(chosen):  # later categories win ties, as max((coverage, index)) does
            listed = ~np.isnan(self.coverage[c])
            better = listed & (self.coverage[c] >= best)
            primary[better], best[better] = position, self.coverage[c][better]
        return primary

    def image_index(self, split: str | None = None) -> ImageFolderIndex:
        """The images of ``split`` (every image when None) as ``init`` records them: paths
        ``images/<image>`` relative to the folder in ``index.csv`` order, no classes; images the
        folder lacks are left out and listed as skipped."""
        if split is not None and split not in self.splits():
            raise BrodenError(f"no split {split!r} in {self.root / INDEX_FILE} (it has {', '.join(self.splits())})")
        paths, skipped = [], []
        for row in self.rows:
            if split is None or row.split == split:
                path = f"{IMAGES_DIR}/{row.image}"
                if (self.root / path).is_file():
                    paths.append(path)
                else:
                    skipped.append(SkippedFile(path, MISSING_IMAGE))
        return ImageFolderIndex(self.root, tuple(paths), np.full(len(paths), -1), (), tuple(skipped))

    def rows_by_path(self) -> dict[str, BrodenRow]:
        """Each row by the image path ``init`` records (``images/<image>``)."""
        return {f"{IMAGES_DIR}/{row.image}": row for row in self.rows}

    def annotation(self, row: BrodenRow, chosen: Sequence[int]) -> Annotation:
        """One image's labels in the chosen categories: PNG layers and image-level labels."""
        layers, image_labels = [], []
        for c in chosen:
            for item in row.items[c]:
                if isinstance(item, int):
                    image_labels.append(item)
                else:
                    layers.append(self._read_png(item, row.seg_size))
        pixels = np.stack(layers) if layers else np.zeros((0, *row.seg_size), dtype=np.int64)
        return Annotation(pixels, np.asarray(image_labels, dtype=np.int64), row.seg_size)

    def _read_png(self, relative: str, size: tuple[int, int]) -> np.ndarray:
        path = self.root / IMAGES_DIR / relative
        try:
            with Image.open(path) as png:
                if png.mode == "P":
                    png = png.convert("RGB")
                values = np.asarray(png).astype(np.int64)
        except OSError as err:
            raise BrodenError(f"cannot read the segmentation {path}: {err}") from err
        if values.ndim == 3:
            values = values[:, :, 0] + 256 * values[:, :, 1]
        if values.shape != size:
            raise BrodenError(f"segmentation {path} is {values.shape[0]}x{values.shape[1]}, but index.csv gives "
                              f"sh x sw = {size[0]}x{size[1]}")
        return values


def is_broden(root: str | Path) -> bool:
    """Whether ``root`` has Broden's tables (``index.csv`` with its columns, ``label.csv``, ``category.csv``)."""
    root = Path(root)
    if not all((root / name).is_file() for name in (INDEX_FILE, LABEL_FILE, CATEGORY_FILE)):
        return False
    with open(root / INDEX_FILE, newline="") as handle:
        header = next(csv.reader(handle), [])
    return tuple(header[:len(INDEX_COLUMNS)]) == INDEX_COLUMNS


def read_broden(root: str | Path) -> BrodenDataset:
    """Read the tables of the Broden folder ``root`` (see the module docstring)."""
    root = Path(root).expanduser().resolve()
    if not is_broden(root):
        raise BrodenError(f"{root} is not a Broden folder: it needs {INDEX_FILE} (columns "
                          f"{','.join(INDEX_COLUMNS)},<categories>), {LABEL_FILE} and {CATEGORY_FILE}")
    categories = tuple(row["name"] for row in _table(root / CATEGORY_FILE, ("name",)))
    labels = _labels(root)
    coverage = np.full((len(categories), len(labels)), np.nan)
    files = [root / INDEX_FILE, root / LABEL_FILE, root / CATEGORY_FILE]
    for c, name in enumerate(categories):
        files.append(root / f"c_{name}.csv")
        for row in _table(files[-1], ("code", "number", "coverage")):
            number, code = _integer(row["number"], files[-1]), _integer(row["code"], files[-1])
            if code and 0 <= number < len(labels):
                coverage[c, number] = float(row["coverage"] or 0)
    rows = _index_rows(root, categories)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return BrodenDataset(root, categories, labels, coverage, rows, digest.hexdigest())


def _table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise BrodenError(f"the Broden folder lacks {path.name} ({path})")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise BrodenError(f"{path} has no column {', '.join(missing)}")
        return list(reader)


def _integer(text: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise BrodenError(f"{path}: {text!r} is not a whole number") from None


def _labels(root: Path) -> tuple[str, ...]:
    path = root / LABEL_FILE
    table = {_integer(row["number"], path): row["name"] for row in _table(path, ("number", "name"))}
    if not table or min(table) < 0:
        raise BrodenError(f"{path} must list labels numbered from 0")
    return tuple(table.get(number, "") for number in range(max(table) + 1))


def _index_rows(root: Path, categories: tuple[str, ...]) -> tuple[BrodenRow, ...]:
    path = root / INDEX_FILE
    table = _table(path, (*INDEX_COLUMNS, *categories))
    rows = []
    for line, row in enumerate(table, start=2):
        try:
            image = check_relative_path(row["image"])
            size = (int(row["sh"]), int(row["sw"]))
            items = tuple(tuple(_item(text) for text in (row[name] or "").split(";") if text) for name in categories)
        except (ValueError, UnsafeImagePathError) as err:
            raise BrodenError(f"{path} line {line}: {err}") from None
        rows.append(BrodenRow(image, row["split"], size, items))
    return tuple(rows)


def _item(text: str) -> str | int:
    """An image-level label number, or a segmentation path (checked to stay inside the folder)."""
    return int(text) if text.isdigit() else check_relative_path(text)
