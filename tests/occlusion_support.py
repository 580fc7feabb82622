"""Small networks, their theoretical RFs (worked out here, independently of rfstore.rf.theory) and checks
shared by the occlusion engine's tests."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

from rfstore.occlusion import LayerGeometry, Occluder, OcclusionTarget, plain_maps
from rfstore.occlusion.geometry import target_mask

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v[0], v[1]) if isinstance(v, tuple) else (v, v)


def seq_geometry(mods: nn.Sequential, prefix: str) -> dict[str, LayerGeometry]:
    """Theoretical RF of every module of a conv/pool/pad Sequential."""
    geo: dict[str, LayerGeometry] = {}
    r, j, s = [1, 1], [1, 1], [0.0, 0.0]
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, st, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            d = _pair(getattr(m, "dilation", 1))
            for a in (0, 1):
                r[a] += (k[a] - 1) * d[a] * j[a]
                s[a] += ((k[a] - 1) * d[a] / 2 - p[a]) * j[a]
                j[a] *= st[a]
        elif isinstance(m, nn.ConstantPad2d):  # ZeroPad2d too
            left, _, top, _ = m.padding
            s[0] -= top * j[0]
            s[1] -= left * j[1]
        geo[f"{prefix}{i}"] = LayerGeometry((r[0], r[1]), (j[0], j[1]), (s[0], s[1]), "conv")
    return geo


def seq_forward(mods: nn.Sequential, prefix: str, layers: Sequence[str]) -> Forward:
    """Forward returning the requested layers of a Sequential, stopping at the deepest."""
    deepest = max(int(name.rsplit(".", 1)[1]) for name in layers)

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, m in enumerate(mods[: deepest + 1]):
            x = m(x)
            if f"{prefix}{i}" in layers:
                out[f"{prefix}{i}"] = x
        return out

    return forward


def alexnet(inplace: bool = False) -> nn.Module:
    """torchvision AlexNet, random init (seed 0), eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = inplace
    return model


def alexnet_forward(model: nn.Module, layers: Sequence[str]) -> Forward:
    """AlexNet's forward (features, avgpool, flatten, classifier) returning ``layers``."""

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, m in enumerate(model.features):
            x = m(x)
            if f"features.{i}" in layers:
                out[f"features.{i}"] = x
        if not any(name.startswith("classifier.") for name in layers):
            return out
        x = torch.flatten(model.avgpool(x), 1)
        for i, m in enumerate(model.classifier):
            x = m(x)
            if f"classifier.{i}" in layers:
                out[f"classifier.{i}"] = x
        return out

    return forward


def alexnet_geometry(model: nn.Module) -> dict[str, LayerGeometry]:
    geo = seq_geometry(model.features, "features.")
    for i in range(len(model.classifier)):
        geo[f"classifier.{i}"] = LayerGeometry((0, 0), (1, 1), (0.0, 0.0), "linear")
    return geo


def tiny_net() -> nn.Sequential:
    """Asymmetric padding, ceil-mode max and average pooling, dilation, an even kernel."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.ZeroPad2d((2, 0, 1, 0)),  # asymmetric: left 2, top 1
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 5, 3, dilation=2, padding=2),
        nn.Tanh(),
        nn.Conv2d(5, 6, 2, stride=2),  # even kernel: half-integer RF centres
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
    ).eval()


def argmax_targets(forward: Forward, images: torch.Tensor,
                   picks: Sequence[tuple[int, str, int]]) -> list[OcclusionTarget]:
    """Targets at each unit's argmax location (the method's choice of (y, x))."""
    with torch.inference_mode():
        acts = forward(images)
    out = []
    for n, layer, unit in picks:
        a = acts[layer][n, unit]
        if a.ndim == 0:
            out.append(OcclusionTarget(n, layer, unit, 0, 0))
        else:
            idx = int(a.argmax())
            out.append(OcclusionTarget(n, layer, unit, idx // a.shape[-1], idx % a.shape[-1]))
    return out


def grid_targets(shapes: dict[str, torch.Size], n: int, layer: str, unit: int) -> list[OcclusionTarget]:
    """Corners, edge midpoints and centre of a layer's map."""
    h, w = shapes[layer][-2:]
    ys, xs = sorted({0, h // 2, h - 1}), sorted({0, w // 2, w - 1})
    return [OcclusionTarget(n, layer, unit, y, x) for y in ys for x in xs]


def plain_reference(forward: Forward, images: torch.Tensor, fills: torch.Tensor, targets: Sequence[OcclusionTarget],
                    occluder: Occluder) -> np.ndarray:
    """Full re-inference maps of ``targets`` (every occluded full image through ``forward``)."""
    fills = torch.broadcast_to(fills, images.shape)
    out = np.zeros((len(targets), *(occluder.positions(int(n)).size for n in images.shape[-2:])), np.float32)
    for n in sorted({t.image for t in targets}):
        idx = [i for i, t in enumerate(targets) if t.image == n]
        out[idx] = plain_maps(forward, images[n], fills[n], [targets[i] for i in idx], occluder)
    return out


def unit_scales(forward: Forward, images: torch.Tensor, targets: Sequence[OcclusionTarget]) -> np.ndarray:
    """max |activation| of each target's unit over its map on the original image."""
    with torch.inference_mode():
        acts = forward(images)
    return np.array([float(acts[t.layer][t.image, t.unit].abs().max()) for t in targets])


def assert_matches(maps: np.ndarray, ref: np.ndarray, targets: Sequence[OcclusionTarget],
                   geo: dict[str, LayerGeometry], occluder: Occluder, hw: tuple[int, int], scale: np.ndarray,
                   rtol: float = 1e-4) -> None:
    """Within ``rtol`` of the unit's scale everywhere, and exact zeros outside the theoretical RF."""
    for i, t in enumerate(targets):
        err = np.abs(maps[i].astype(np.float64) - ref[i]).max()
        assert err <= rtol * max(scale[i], 1e-6), (t, err, scale[i])
        outside = ~target_mask(t, geo[t.layer], occluder, hw)
        assert np.all(maps[i][outside] == 0.0), t  # exact zeros, by construction
        assert np.all(ref[i][outside] == 0.0), t  # and the RF bound is right
