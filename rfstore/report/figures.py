"""Per-unit pictures, drawn with PIL (colour maps from matplotlib): montage, discrepancy, RF.

* :func:`unit_montage`: Zhou et al.'s "top10" picture: the unit's top-K images in a
  row, each with the region outside its segmentation (``seg_mask``) dimmed, the
  segmentation's outline (yellow; NetDissect's ``seg_mask_dissect`` in magenta) and
  the unit's theoretical RF at that location (cyan box, cross at the centre).
* :func:`discrepancy_montage`: each top image's discrepancy map, spread over pixels
  as the ``rf`` stage does, in a diverging colour map over the greyed image.
* :func:`rf_heatmap`: the averaged, re-centred empirical RF (``rf_map``) with the
  theoretical RF box and the thresholded empirical RF's outline.
* :func:`unit_sheet`: all three with a title line, for ``rfstore show``.

Every function takes a :class:`~rfstore.results.layers.UnitData` and a function
``image -> (H, W, 3) uint8 or None`` (e.g. :class:`~rfstore.results.layers.ImageCache`),
and returns a :class:`PIL.Image.Image` (RGB), or None when there is nothing to draw.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rfstore.rf.empirical import rf_box, rf_mask
from rfstore.results.layers import UnitData

Pixels = Callable[[int], "np.ndarray | None"]

SEG_COLOUR = (255, 215, 0)
DISSECT_COLOUR = (255, 0, 255)
BOX_COLOUR = (0, 200, 255)
RF_OUTLINE = (255, 255, 255)
BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)
TEXT = (20, 20, 20)
DIM = 0.35  # brightness kept outside the segmentation
GAP = 4
LABEL_H = 16


@lru_cache(maxsize=4)
def font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (its fixed bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def tile_scale(input_hw: tuple[int, int], target: int = 128) -> float:
    """Scale of one tile: an integer zoom to at least ``target`` px for small inputs,
    1 up to ``2.5 * target``, and a shrink to ``2 * target`` px for bigger inputs."""
    side = max(input_hw)
    if side < target:
        return float(math.ceil(target / side))
    if side <= 2.5 * target:
        return 1.0
    return 2 * target / side


@lru_cache(maxsize=8)
def _lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """``(H, W)`` floats through a matplotlib colour map to ``(H, W, 3)`` uint8; NaN is grey."""
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0, 1)
    rgb = _lut(cmap)[(scaled * 255 + 0.5).astype(np.intp)]
    rgb[np.isnan(values)] = MISSING
    return rgb


def _resize(image: Image.Image, scale: float, smooth: bool) -> Image.Image:
    if scale == 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR if smooth and scale < 1 else Image.Resampling.NEAREST)


def boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` within ``width`` steps (4-neighbour) of a pixel outside it;
    the image border counts as inside."""
    mask = np.asarray(mask, dtype=bool)
    interior = mask
    for _ in range(width):
        padded = np.pad(interior, 1, mode="edge")
        interior = interior & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _mask_image(mask: np.ndarray, scale: float) -> Image.Image:
    """A bool ``(H, W)`` mask as a mode ``"L"`` image (255 inside), resized to ``scale``."""
    return _resize(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L"), scale, smooth=False)


def outline(mask: np.ndarray, scale: float) -> Image.Image:
    """The inner border of a bool ``(H, W)`` mask shown at ``scale``, as an ``"L"`` paste mask:
    1 px wide, 2 px from a zoom of 3, 3 px from a zoom of 12."""
    if scale >= 1:
        zoomed = np.asarray(_mask_image(mask, scale)) > 0
        width = 1 + int(scale >= 3) + int(scale >= 12)
        return Image.fromarray(boundary(zoomed, width).astype(np.uint8) * 255, "L")
    edge = Image.fromarray(boundary(mask).astype(np.uint8) * 255, "L")
    shrunk = edge.resize((max(1, round(edge.width * scale)), max(1, round(edge.height * scale))), Image.Resampling.BOX)
    return shrunk.point(lambda v: 255 if v > 0 else 0)


def _draw_rf_box(image: Image.Image, unit: UnitData, rank: int, scale: float) -> None:
    info = unit.info
    if info.theory_size is None or np.isnan(unit.centres[rank]).any():
        return
    centre = (float(unit.centres[rank, 0]), float(unit.centres[rank, 1]))
    ys, xs = rf_box(centre, info.theory_size, info.input_hw)
    draw = ImageDraw.Draw(image)
    if ys.stop > ys.start and xs.stop > xs.start:
        draw.rectangle([xs.start * scale, ys.start * scale, xs.stop * scale - 1, ys.stop * scale - 1],
                       outline=BOX_COLOUR, width=1)
    cy, cx = (math.floor(c) * scale + scale / 2 for c in centre)
    arm = max(3.0, min(scale, 16.0))
    draw.line([cx - arm, cy, cx + arm, cy], fill=BOX_COLOUR, width=1)
    draw.line([cx, cy - arm, cx, cy + arm], fill=BOX_COLOUR, width=1)


def _missing_tile(input_hw: tuple[int, int], scale: float, text: str) -> Image.Image:
    tile = Image.new("RGB", (max(1, round(input_hw[1] * scale)), max(1, round(input_hw[0] * scale))), MISSING)
    ImageDraw.Draw(tile).text((3, 3), text, fill=TEXT, font=font(10))
    return tile


def overlay_tile(unit: UnitData, rank: int, pixels: np.ndarray | None, scale: float) -> Image.Image:
    """One top image of a unit with its segmentation (dimmed outside, outlined) and theoretical RF box."""
    if pixels is None:
        return _missing_tile(unit.info.input_hw, scale, "image unavailable")
    tile = _resize(Image.fromarray(pixels, "RGB"), scale, smooth=True)
    if unit.seg_mask is not None and unit.seg_mask[rank].max() <= 1:
        inside = unit.seg_mask[rank] > 0
        dimmed = Image.fromarray((np.asarray(tile) * DIM).astype(np.uint8), "RGB")
        tile = Image.composite(tile, dimmed, _mask_image(inside, scale))
        tile.paste(SEG_COLOUR, mask=outline(inside, scale))
    if unit.seg_mask_dissect is not None and unit.seg_mask_dissect[rank].max() <= 1:
        tile.paste(DISSECT_COLOUR, mask=outline(unit.seg_mask_dissect[rank] > 0, scale))
    _draw_rf_box(tile, unit, rank, scale)
    return tile


def labelled_row(tiles: list[Image.Image], labels: list[str] | None = None, title: str | None = None) -> Image.Image:
    """Tiles side by side with ``GAP`` px between them, each with its label above it
    (no label band when ``labels`` is None), and an optional title line on top."""
    top = LABEL_H + 4 if title else 0
    label_h = LABEL_H if labels else 0
    width = sum(t.width for t in tiles) + GAP * (len(tiles) + 1)
    height = top + label_h + max(t.height for t in tiles) + (GAP if labels or title else 0)
    row = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(row)
    if title:
        draw.text((GAP, 2), title, fill=TEXT, font=font(12))
    x = GAP
    for n, tile in enumerate(tiles):
        if labels:
            draw.text((x, top + 2), labels[n], fill=TEXT, font=font(11))
        row.paste(tile, (x, top + label_h))
        x += tile.width + GAP
    return row


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}g}"


def overlay_tiles(unit: UnitData, pixels: Pixels, scale: float | None = None) -> list[Image.Image]:
    """:func:`overlay_tile` of every rank that has an image."""
    scale = scale or tile_scale(unit.info.input_hw)
    return [overlay_tile(unit, int(r), pixels(int(unit.image[r])), scale) for r in unit.ranks]


def unit_montage(unit: UnitData, pixels: Pixels, scale: float | None = None, title: str | None = None,
                 tiles: list[Image.Image] | None = None, labels: bool = True) -> Image.Image | None:
    """Zhou's top-K picture of one unit with overlays; None before ``topk``.

    ``tiles`` from :func:`overlay_tiles` saves redrawing them; ``labels`` puts the
    rank and activation above each image.
    """
    tiles = overlay_tiles(unit, pixels, scale) if tiles is None else tiles
    if not tiles:
        return None
    text = [f"#{r + 1}  act {_fmt(unit.value[r])}" for r in unit.ranks] if labels else None
    return labelled_row(tiles, text, title)


def pixel_discrepancy(unit: UnitData) -> np.ndarray | None:
    """``(K, H, W)`` discrepancy per pixel (mean over the covering occluder windows), NaN for missing ranks."""
    if unit.discrepancy is None or unit.info.occluder is None:
        return None
    from rfstore.rf.empirical import discrepancy_to_pixels

    size, stride = unit.info.occluder
    pixels = discrepancy_to_pixels(unit.discrepancy, size, stride, unit.info.input_hw)
    missing = np.isnan(unit.discrepancy.reshape(len(unit.discrepancy), -1)).all(axis=1)
    pixels[missing] = np.nan
    return pixels


def discrepancy_montage(unit: UnitData, pixels: Pixels, scale: float | None = None, labels: bool = True
                        ) -> Image.Image | None:
    """Each top image's discrepancy (red: occluding there lowers the unit) over the greyed image,
    in one colour scale per unit (symmetric about 0); ``labels`` puts each map's largest drop above it."""
    maps = pixel_discrepancy(unit)
    if maps is None:
        return None
    scale = scale or tile_scale(unit.info.input_hw)
    bound = float(np.nanmax(np.abs(maps))) if not np.isnan(maps).all() else 0.0
    bound = bound if bound > 0 else 1.0
    tiles, text = [], []
    for rank in unit.ranks:
        heat = colorize(maps[rank], "RdBu_r", -bound, bound)
        base = pixels(int(unit.image[rank]))
        if base is not None:
            grey = np.asarray(Image.fromarray(base, "RGB").convert("L").convert("RGB"), dtype=np.float32)
            heat = (0.6 * heat + 0.4 * grey).astype(np.uint8)
        tile = _resize(Image.fromarray(heat, "RGB"), scale, smooth=True)
        _draw_rf_box(tile, unit, int(rank), scale)
        tiles.append(tile)
        peak = float(np.nanmax(maps[rank])) if not np.isnan(maps[rank]).all() else float("nan")
        text.append(f"#{rank + 1}  drop {_fmt(peak)}")
    return labelled_row(tiles, text if labels else None) if tiles else None


def colour_bar(cmap: str, width: int, height: int = 10) -> Image.Image:
    """A horizontal colour bar of ``cmap`` from 0 to 1."""
    ramp = np.tile(np.linspace(0, 1, width), (height, 1))
    return Image.fromarray(colorize(ramp, cmap, 0.0, 1.0), "RGB")


def rf_heatmap(unit: UnitData, target: int = 200) -> Image.Image | None:
    """The unit's empirical RF (``rf_map`` / max, inferno) with the theoretical RF box (cyan)
    and the outline of ``rf_map >= threshold * max`` (white); None before ``rf``."""
    if unit.rf_map is None:
        return None
    rf_map = unit.rf_map
    peak = float(np.nanmax(rf_map)) if not np.isnan(rf_map).all() else 0.0
    rgb = colorize(rf_map, "inferno", 0.0, peak if peak > 0 else 1.0)
    height, width = rf_map.shape
    scale = tile_scale((height, width), target)
    heat = _resize(Image.fromarray(rgb, "RGB"), scale, smooth=True)
    if peak > 0 and unit.info.rf_threshold is not None:
        inside = rf_mask(np.nan_to_num(rf_map), unit.info.rf_threshold)
        heat.paste(RF_OUTLINE, mask=outline(inside, scale))
    if unit.info.theory_size is not None:
        ty, tx = unit.info.theory_size
        ys, xs = rf_box(((height - 1) / 2, (width - 1) / 2), (ty, tx), (height, width))
        ImageDraw.Draw(heat).rectangle([xs.start * scale, ys.start * scale, xs.stop * scale - 1, ys.stop * scale - 1],
                                       outline=BOX_COLOUR, width=2)
    label = f"RF {_fmt(unit.rf_size, 3)} px (theory {unit.info.theory_label})"
    out = Image.new("RGB", (max(heat.width, 150) + 2 * GAP, heat.height + LABEL_H + 42), BACKGROUND)
    draw = ImageDraw.Draw(out)
    draw.text((GAP, 2), label, fill=TEXT, font=font(11))
    out.paste(heat, (GAP, LABEL_H))
    bar_y = LABEL_H + heat.height + 4
    out.paste(colour_bar("inferno", heat.width), (GAP, bar_y))
    draw.text((GAP, bar_y + 11), "0", fill=TEXT, font=font(10))
    peak_text = _fmt(peak)
    draw.text((GAP + heat.width - draw.textlength(peak_text, font=font(10)), bar_y + 11), peak_text, fill=TEXT,
              font=font(10))
    draw.text((out.width // 2, bar_y + 23), "mean activation drop (rf_map)", fill=TEXT, font=font(10), anchor="ma")
    return out


def thumbnail(unit: UnitData, pixels: Pixels, side: int = 56, tiles: list[Image.Image] | None = None
              ) -> Image.Image | None:
    """The rank-1 overlay tile, ``side`` px on its long side, for the layer page's list."""
    if tiles is None:
        ranks = unit.ranks
        if not len(ranks):
            return None
        scale = max(1.0, math.floor(side / max(unit.info.input_hw)))
        tiles = [overlay_tile(unit, int(ranks[0]), pixels(int(unit.image[ranks[0]])), scale)]
    if not tiles:
        return None
    tile = tiles[0].copy()
    tile.thumbnail((side, side), Image.Resampling.BILINEAR)
    return tile


def unit_title(unit: UnitData) -> str:
    """``"net / layer  unit 7   concept disk (IoU 0.31)   RF 12.1 px (theory 27)"``."""
    parts = [f"{unit.info.network} / {unit.info.layer}  unit {unit.unit}"]
    if unit.concept:
        parts.append(f"concept {unit.concept} (IoU {_fmt(unit.iou, 2)})")
    parts.append(f"RF {_fmt(unit.rf_size)} px (theory {unit.info.theory_label})")
    return "   ".join(parts)


def unit_sheet(unit: UnitData, pixels: Pixels, scale: float | None = None) -> Image.Image:
    """Montage, discrepancy maps and RF heat map of one unit in one picture (``rfstore show``)."""
    parts = [p for p in (unit_montage(unit, pixels, scale, title=unit_title(unit)),
                         discrepancy_montage(unit, pixels, scale), rf_heatmap(unit)) if p is not None]
    if not parts:
        sheet = Image.new("RGB", (420, 40), BACKGROUND)
        ImageDraw.Draw(sheet).text((GAP, 4), unit_title(unit) + "   (no top images yet: run topk)",
                                   fill=TEXT, font=font(12))
        return sheet
    sheet = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), BACKGROUND)
    y = 0
    for part in parts:
        sheet.paste(part, (0, y))
        y += part.height
    return sheet
