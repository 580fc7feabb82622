"""The demo's settings (no heavy import: the command line shows them in its help)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoConfig"]


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings: every stage on the trained network's five conv layers, sized to run in about a
    minute on a 2-core CPU (occlusion dominates)."""

    store: Path = Path("demo-out/demo.zarr")
    per_class: int = 24
    seed: int = 0
    layers: str = "features.1,features.4,features.7,features.9,features.11"
    k: int = 5
    occluder: tuple[int, int] = (10, 5)  # size, stride in pixels: 18 x 18 positions on the 96 x 96 scenes
    retrain: bool = False
    weights_out: Path | None = None
    force: bool = False
