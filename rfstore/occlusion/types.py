"""Value objects of the occlusion engine: the occluder, layer geometry, targets, plans, counters.

This module is the engine's leaf: it imports nothing else of rfstore.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads in seconds; the value objects do not need it
    import torch

__all__ = [
    "FILLS", "Occluder", "LayerGeometry", "OcclusionTarget", "Method", "ImagePlan", "OcclusionStats",
    "OccluderError",
]

FILLS = ("noise", "zero", "mean")
"""Named occluder contents; any number is accepted as a constant too."""

from rfstore.errors import UsageError


class OccluderError(UsageError, ValueError):
    """An occluder that cannot be used (size, stride or fill out of range)."""


@dataclass(frozen=True)
class Occluder:
    """A square occluder sliding over the preprocessed input.

    Attributes
    ----------
    size : int
        Side in input pixels (the paper's 11).
    stride : int
        Step between positions in input pixels (the paper's 3).
    fill : str
        ``"noise"`` (uniform pixel noise drawn from ``(seed, image index)``, normalised
        like the images), ``"zero"`` (0 in input space), ``"mean"`` (the image's
        channel means) or a number (that constant in input space).
    seed : int
        Seed of the noise fill.
    """

    size: int = 11
    stride: int = 3
    fill: str = "zero"
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.size) < 1 or int(self.stride) < 1:
            raise OccluderError(f"occluder size and stride must be at least 1, not {self.size} and {self.stride}")
        if self.fill not in FILLS:
            try:
                float(self.fill)
            except ValueError:
                raise OccluderError(f"occluder fill must be noise, zero, mean or a number, not {self.fill!r}") from None

    def positions(self, length: int) -> np.ndarray:
        """``(n,)`` int64 top-left positions along an axis: ``0, stride, ...`` while ``p + size <= length``."""
        if self.size > length:
            raise OccluderError(f"an occluder of {self.size} px does not fit in {length} px")
        return np.arange(0, length - self.size + 1, self.stride, dtype=np.int64)

    def uncovered(self, length: int) -> int:
        """Pixels at the end of an axis of ``length`` that no position covers (``(length - size) % stride``)."""
        positions = self.positions(length)
        return int(length - (positions[-1] + self.size)) if len(positions) else length

    def grid(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(pos_y (n_oy,), pos_x (n_ox,))`` on an ``(H, W)`` input."""
        return self.positions(int(hw[0])), self.positions(int(hw[1]))

    def content(self, image: torch.Tensor, image_index: int,
                from_pixels: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """What the occluder puts over ``image`` ``(C, H, W)``, in the network's input space.

        ``from_pixels`` maps ``[0, 1]`` pixel values to input space (the preprocessing's
        normalisation); only the noise fill uses it.  The noise depends on ``(seed,
        image_index)`` only, never on batching or resumption.
        """
        import torch

        if self.fill == "noise":
            generator = torch.Generator().manual_seed(noise_seed(self.seed, image_index))
            return from_pixels(torch.rand(image.shape, generator=generator, dtype=torch.float32))
        if self.fill == "zero":
            return torch.zeros_like(image)
        if self.fill == "mean":
            return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        return torch.full_like(image, float(self.fill))


def noise_seed(seed: int, image_index: int) -> int:
    """A 63-bit generator seed for one image, stable across runs and platforms."""
    return (int(seed) * 1_000_003 + int(image_index) * 7_919 + 0x5EED) % (2**63 - 1)


@dataclass(frozen=True)
class LayerGeometry:
    """Theoretical RF of a layer, per axis ``(y, x)``, in input pixels.

    Attributes
    ----------
    size : tuple of int
        RF size.
    jump : tuple of int
        Effective stride (product of strides up to the layer).
    start : tuple of float
        Centre of unit ``(0, 0)`` in pixel-centre coordinates (may be negative or half-integer).
    kind : str
        ``"conv"`` (units have a location) or ``"linear"`` (units see the whole input).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    kind: str


@dataclass(frozen=True)
class OcclusionTarget:
    """One (image, unit, location) whose discrepancy map is wanted.

    Attributes
    ----------
    image : int
        Index into the ``images`` of the call.
    layer : str
        Layer name, a key of the forward's output dict.
    unit : int
        Channel (conv) or feature (linear).
    y, x : int
        Location in the layer's feature map (0 for linear layers).
    """

    image: int
    layer: str
    unit: int
    y: int
    x: int


class Method(str, enum.Enum):
    """How a target's occluded activations are computed.  Every method is exact.

    ``CONE``: incremental recomputation of the changed cells inside the target's
    dependency cone, on the network's sequential prefix.  ``SHARED``: the changed cells
    of whole maps, shared by every target of the image (then the rest of the network
    in full, for layers after the prefix).  ``CROP``: the network on an input crop that
    covers the target's receptive field.  ``PLAIN``: the network on every occluded
    full image (the reference).
    """

    CONE = "cone"
    SHARED = "shared"
    CROP = "crop"
    PLAIN = "plain"


@dataclass
class ImagePlan:
    """What the planner chose for one image.

    Attributes
    ----------
    image : int
    methods : dict
        ``Method -> number of targets`` computed that way.
    cost : float
        Estimated multiply-add equivalents of the chosen plan.
    alternative : float
        Estimated cost of the other incremental choice (cone groups vs one shared pass),
        ``inf`` when there was no choice.
    """

    image: int
    methods: dict[Method, int] = field(default_factory=dict)
    cost: float = 0.0
    alternative: float = float("inf")


@dataclass
class OcclusionStats:
    """Work done by the engine (summed over images with :meth:`add`).

    Attributes
    ----------
    images, targets : int
        Images processed and targets computed.
    positions : int
        Occluder positions per image (``n_oy * n_ox``).
    target_positions : int
        Sum over targets of the positions that can change them (the rest are exact zeros).
    shared_images, cone_images : int
        Images whose prefix targets ran on one shared pass, or on cone groups.
    cone_groups : int
        Cone groups evaluated.
    incremental_positions : int
        Positions evaluated by incremental passes (shared or cone).
    incremental_cells : int
        Feature-map cells recomputed by those passes, all steps.
    tail_rows : int
        Occluded maps run through the rest of the network after the prefix.
    crop_inputs, plain_inputs : int
        Occluded crops and occluded full images run through the network.
    reference_inputs : int
        Unoccluded images and crops run through the network (references and checks).
    fallbacks : int
        Targets whose crop failed its check and ran on the full image.
    estimated_cost : float
        The planner's multiply-add equivalents for the work done.
    """

    images: int = 0
    targets: int = 0
    positions: int = 0
    target_positions: int = 0
    shared_images: int = 0
    cone_images: int = 0
    cone_groups: int = 0
    incremental_positions: int = 0
    incremental_cells: int = 0
    tail_rows: int = 0
    crop_inputs: int = 0
    plain_inputs: int = 0
    reference_inputs: int = 0
    fallbacks: int = 0
    estimated_cost: float = 0.0

    def add(self, other: OcclusionStats) -> None:
        """Add ``other``'s counters into this one (``positions`` is kept, not summed)."""
        for f in fields(self):
            if f.name != "positions":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.positions = self.positions or other.positions

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
