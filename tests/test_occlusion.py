"""Tests of the occlusion discrepancy engine (rfstore.core.occlusion)."""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from rfstore.core.occlusion import (
    LayerGeometry,
    OcclusionTarget,
    discrepancy_maps,
    naive_discrepancy_maps,
    occluder_positions,
    pixel_attribution,
)
from rfstore.core.occlusion_chain import build_steps, trace_chain
from rfstore.core.occlusion_plan import aligned_crop, overlap_mask, rf_pixel_bounds

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


# ----------------------------------------------------------------- helpers


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v[0], v[1]) if isinstance(v, tuple) else (v, v)


def seq_geometry(mods: nn.Sequential, prefix: str) -> dict[str, LayerGeometry]:
    """Theoretical RF of every module of a conv/pool/pad Sequential (test-local,
    independent of rfstore.core.rf_theory)."""
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
        elif isinstance(m, nn.ZeroPad2d):
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


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # keep recorded maps intact
    return model


def alexnet_forward(model: nn.Module, layers: Sequence[str]) -> Forward:
    conv_layers = [l for l in layers if l.startswith("features.")] or ["features.12"]
    feats = seq_forward(model.features, "features.", conv_layers)
    cls_layers = [l for l in layers if l.startswith("classifier.")]

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not cls_layers:
            return feats(x)
        out = {}
        for i, m in enumerate(model.features):
            x = m(x)
            if f"features.{i}" in layers:
                out[f"features.{i}"] = x
        x = torch.flatten(model.avgpool(x), 1)
        deepest = max(int(l.split(".")[1]) for l in cls_layers)
        for i, m in enumerate(model.classifier[: deepest + 1]):
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


def argmax_targets(
    forward: Forward, images: torch.Tensor, picks: Sequence[tuple[int, str, int]]
) -> list[OcclusionTarget]:
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


def grid_targets(
    shapes: dict[str, torch.Size], n: int, layer: str, unit: int
) -> list[OcclusionTarget]:
    """Corners, edge midpoints and centre of a layer's map."""
    h, w = shapes[layer][-2:]
    ys, xs = sorted({0, h // 2, h - 1}), sorted({0, w // 2, w - 1})
    return [OcclusionTarget(n, layer, unit, y, x) for y in ys for x in xs]


def rf_mask(t: OcclusionTarget, g: LayerGeometry, hw: tuple[int, int], size: int, stride: int) -> np.ndarray:
    ly, hy = rf_pixel_bounds(g.size[0], g.jump[0], g.start[0], t.y)
    lx, hx = rf_pixel_bounds(g.size[1], g.jump[1], g.start[1], t.x)
    my = overlap_mask(occluder_positions(hw[0], size, stride), size, ly, hy)
    mx = overlap_mask(occluder_positions(hw[1], size, stride), size, lx, hx)
    return np.outer(my, mx)


def assert_matches_naive(
    maps: np.ndarray,
    ref: np.ndarray,
    targets: Sequence[OcclusionTarget],
    geo: dict[str, LayerGeometry],
    hw: tuple[int, int],
    size: int,
    stride: int,
    scale: np.ndarray,
    rtol: float = 1e-4,
) -> None:
    for i, t in enumerate(targets):
        err = np.abs(maps[i].astype(np.float64) - ref[i]).max()
        assert err <= rtol * max(scale[i], 1e-6), (t, err, scale[i])
        if geo[t.layer].kind == "conv":
            outside = ~rf_mask(t, geo[t.layer], hw, size, stride)
            assert np.all(maps[i][outside] == 0.0), t  # exact zeros, by construction
            assert np.all(ref[i][outside] == 0.0), t  # and the RF bound is right


def unit_scales(forward: Forward, images: torch.Tensor, targets: Sequence[OcclusionTarget]) -> np.ndarray:
    """max |activation| of each target's unit over its map on the original image."""
    with torch.inference_mode():
        acts = forward(images)
    return np.array([float(acts[t.layer][t.image, t.unit].abs().max()) for t in targets])


# ------------------------------------------------------------- unit tests


def test_occluder_positions() -> None:
    p = occluder_positions(224, 11, 3)
    assert p.size == 72 and p[0] == 0 and p[-1] == 213
    assert occluder_positions(97, 5, 5).tolist() == list(range(0, 93, 5))
    with pytest.raises(ValueError):
        occluder_positions(10, 11, 3)


@pytest.mark.parametrize(
    "lo,hi,length,align,ext",
    [(-5, 20, 99, 4, 1), (37, 90, 99, 16, 1), (50, 130, 99, 8, 1), (90, 95, 99, 4, 31), (3, 5, 99, 4, 31)],
)
def test_aligned_crop(lo: int, hi: int, length: int, align: int, ext: int) -> None:
    a, b = aligned_crop(lo, hi, length, align, ext)
    assert a % align == 0 and 0 <= a <= max(lo, 0) and min(hi, length - 1) < b <= length
    assert b - a >= min(ext, length)


def test_hand_weighted_conv() -> None:
    """3x3 all-ones conv on a constant image of 2: discrepancy = 3 channels x 2 x (# occluded RF pixels)."""
    conv = nn.Conv2d(3, 1, 3, bias=False)
    nn.init.ones_(conv.weight)
    fwd = seq_forward(nn.Sequential(conv), "l.", ["l.0"])
    geo = {"l.0": LayerGeometry((3, 3), (1, 1), (1.0, 1.0), "conv")}
    img = torch.full((1, 3, 8, 8), 2.0)
    t = OcclusionTarget(0, "l.0", 0, 2, 3)  # RF rows 2..4, cols 3..5
    for (size, stride), incremental in itertools.product([(1, 1), (2, 1), (2, 2)], (False, True)):
        maps, st = discrepancy_maps(fwd, img, torch.zeros(1, 3, 1, 1), [t], geo, size, stride, incremental=incremental)
        pos = occluder_positions(8, size, stride)
        ov_y = np.clip(np.minimum(pos + size - 1, 4) - np.maximum(pos, 2) + 1, 0, None)
        ov_x = np.clip(np.minimum(pos + size - 1, 5) - np.maximum(pos, 3) + 1, 0, None)
        expected = 3 * 2.0 * np.outer(ov_y, ov_x)
        assert np.array_equal(maps[0], expected.astype(np.float32))
        n_overlap = int((expected > 0).sum())
        # skipped positions cost nothing, on either path
        assert (st.incremental_inputs if incremental else st.occluded_inputs) == n_overlap
        assert st.incremental_targets == int(incremental)
        assert st.positions_skipped == pos.size**2 - n_overlap


# --------------------------------------------------------- captum oracle


def test_against_captum(alexnet: nn.Module) -> None:
    """Per-pixel attribution vs captum.attr.Occlusion (baselines=0).

    Captum uses ceil((H - size) / stride) + 1 windows per axis, the last one
    truncated at the border when (H - size) % stride != 0; we only place full
    windows.  With H - size divisible by the stride (68 = 11 + 3*19) both
    conventions give the same windows, so the attributions must agree.
    """
    from captum.attr import Occlusion

    size, stride, hw = 11, 3, 68
    torch.manual_seed(1)
    images = torch.randn(2, 3, hw, hw)
    geo = alexnet_geometry(alexnet)
    conv_layers = ["features.1", "features.4", "features.5", "features.11"]
    picks = [(0, "features.1", 7), (0, "features.4", 11), (0, "features.5", 3), (0, "features.11", 20)]
    picks += [(1, "classifier.1", 5)]
    fwd_all = alexnet_forward(alexnet, conv_layers + ["classifier.1"])
    targets = argmax_targets(fwd_all, images, picks)
    for t in targets:
        fwd = alexnet_forward(alexnet, [t.layer])
        maps, _ = discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), [t], geo, size, stride, batch_size=64)
        mine = pixel_attribution(maps, hw, hw, size, stride)[0]

        def scalar(x: torch.Tensor, t: OcclusionTarget = t, fwd: Forward = fwd) -> torch.Tensor:
            a = fwd(x)[t.layer][:, t.unit]
            return a if a.ndim == 1 else a[:, t.y, t.x]

        with torch.no_grad():
            attr = Occlusion(scalar).attribute(
                images[t.image : t.image + 1], sliding_window_shapes=(3, size, size),
                strides=(3, stride, stride), baselines=0, perturbations_per_eval=64,
            )[0, 0].double().numpy()
        scale = max(float(np.abs(attr).max()), unit_scales(fwd, images, [t])[0], 1e-6)
        assert np.abs(attr).max() > 0, t  # a live unit, or the check is vacuous
        assert np.abs(mine - attr).max() <= 1e-4 * scale, t


# ----------------------------------------------------------- naive oracle


@pytest.mark.parametrize("hw,size,stride", [((67, 67), 7, 2), ((97, 131), 5, 5)])
def test_alexnet_against_naive(alexnet: nn.Module, hw: tuple[int, int], size: int, stride: int) -> None:
    layers = ["features.1", "features.2", "features.4", "features.5", "features.7", "features.9", "features.11"]
    fwd = alexnet_forward(alexnet, layers)
    geo = alexnet_geometry(alexnet)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, *hw, generator=g)
    fill = torch.randn(2, 3, *hw, generator=g)  # noise occluder, per image
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fwd(images).items()}
    targets = grid_targets(shapes, 0, "features.1", 3) + grid_targets(shapes, 1, "features.4", 8)
    targets += grid_targets(shapes, 0, "features.5", 9) + [OcclusionTarget(1, "features.2", 5, 3, 4)]
    targets += argmax_targets(fwd, images, [(0, "features.7", 30), (1, "features.11", 7), (0, "features.11", 100)])
    targets += grid_targets(shapes, 1, "features.9", 4) + grid_targets(shapes, 0, "features.11", 7)
    ref, st_naive = naive_discrepancy_maps(fwd, images, fill, targets, size, stride, batch_size=128)
    scale = unit_scales(fwd, images, targets)
    # incremental inference for every target: corners, borders, interior; conv, ReLU, pool
    maps, st = discrepancy_maps(fwd, images, fill, targets, geo, size, stride, batch_size=128, incremental=True)
    assert st.incremental_targets == len(targets) and st.occluded_inputs == 0
    assert_matches_naive(maps, ref, targets, geo, hw, size, stride, scale)
    # crops only, all targets at once (deep RFs cover these small images: mostly whole-image groups) ...
    maps, st = discrepancy_maps(fwd, images, fill, targets, geo, size, stride, batch_size=128, incremental=False)
    assert st.fallbacks == 0 and st.incremental_targets == 0
    assert_matches_naive(maps, ref, targets, geo, hw, size, stride, scale)
    # ... and one layer at a time, where shallow layers run on crops
    for layer in layers[:4]:
        idx = [i for i, t in enumerate(targets) if t.layer == layer]
        sub = [targets[i] for i in idx]
        maps, st = discrepancy_maps(fwd, images, fill, sub, geo, size, stride, batch_size=128, incremental=False)
        assert st.fallbacks == 0
        if layer == "features.1":
            assert st.occluded_pixels < st_naive.occluded_pixels / 4
        assert_matches_naive(maps, ref[idx], sub, geo, hw, size, stride, scale[idx])


def tiny_net() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.ZeroPad2d((2, 0, 1, 0)),  # asymmetric: left 2, top 1
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 5, 3, dilation=2, padding=2),
        nn.Tanh(),
        nn.Conv2d(5, 6, 2, stride=2),  # even kernel: half-integer RF centres
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
    ).eval()
    return net


@pytest.mark.parametrize("hw,size,stride", [((45, 38), 3, 2), ((50, 50), 7, 3), ((41, 53), 4, 4)])
def test_tiny_net_against_naive(hw: tuple[int, int], size: int, stride: int) -> None:
    net = tiny_net()
    layers = ["t.1", "t.3", "t.5", "t.6", "t.7"]
    fwd = seq_forward(net, "t.", layers)
    geo = seq_geometry(net, "t.")
    g = torch.Generator().manual_seed(4)
    images = torch.randn(1, 3, *hw, generator=g)
    fill = torch.randn(1, 3, *hw, generator=g)
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fwd(images).items()}
    targets = [
        OcclusionTarget(0, layer, u, y, x)
        for layer, u in [("t.1", 1), ("t.3", 2), ("t.5", 0), ("t.6", 4), ("t.7", 5)]
        for y in range(shapes[layer][-2])
        for x in range(shapes[layer][-1])
    ]
    ref, _ = naive_discrepancy_maps(fwd, images, fill, targets, size, stride, batch_size=100)
    scale = unit_scales(fwd, images, targets)
    maps, st = discrepancy_maps(fwd, images, fill, targets, geo, size, stride, batch_size=100, incremental=False)
    assert st.fallbacks == 0
    assert_matches_naive(maps, ref, targets, geo, hw, size, stride, scale)
    # incremental: every layer, except t.7 where its ceil-mode average pooling has a last
    # window overhanging the padding (another divisor: the crop path takes over)
    maps, st = discrepancy_maps(fwd, images, fill, targets, geo, size, stride, batch_size=100, incremental=True)
    avg_ok = len(build_steps(list(net), hw, 3)[0]) == 6
    assert avg_ok or hw != (50, 50)  # (45, 38): unsupported, so the fallback is exercised
    assert not avg_ok or hw != (45, 38)
    reached = [(avg_ok or t.layer != "t.7") and rf_mask(t, geo[t.layer], hw, size, stride).any() for t in targets]
    assert st.incremental_targets == sum(reached) and st.incremental_rejected == 0
    assert_matches_naive(maps, ref, targets, geo, hw, size, stride, scale)


def test_guard_falls_back_on_size_dependent_forward() -> None:
    """A forward that is not translation-equivariant on crops (depends on input width)
    fails the guard and is recomputed on full images, still exactly."""
    net = tiny_net()
    base = seq_forward(net, "t.", ["t.5"])

    def fwd(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t.5": base(x)["t.5"] + 0.01 * x.shape[-1]}

    geo = seq_geometry(net, "t.")
    images = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    targets = [OcclusionTarget(0, "t.5", 1, 2, 3), OcclusionTarget(0, "t.5", 2, 9, 9)]
    maps, st = discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), targets, geo, 3, 1)
    ref, _ = naive_discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), targets, 3, 1)
    assert st.fallbacks == 2 and st.guard_inputs > 0
    assert_matches_naive(maps, ref, targets, geo, (40, 40), 3, 1, unit_scales(fwd, images, targets))


# ------------------------------------------------------ batching & sharing


@pytest.mark.parametrize("incremental", [False, True])
def test_batch_size_invariance(alexnet: nn.Module, incremental: bool) -> None:
    # features.7 (conv3): PyTorch's CPU conv gives other last bits for a batch of one
    # on small maps; the engine never sends N=1 (see Runner), so bits must agree.
    # Incremental: windows do not depend on the batch, matrix products run on fixed row counts.
    layers = ["features.4", "features.7"]
    fwd = alexnet_forward(alexnet, layers)
    geo = alexnet_geometry(alexnet)
    images = torch.randn(2, 3, 67, 67, generator=torch.Generator().manual_seed(6))
    targets = argmax_targets(fwd, images, [(0, "features.4", 1), (1, "features.4", 2), (1, "features.7", 3)])
    zero = torch.zeros(1, 3, 1, 1)
    runs = [discrepancy_maps(fwd, images, zero, targets, geo, 11, 6, batch_size=b, incremental=incremental)
            for b in (1, 7, 256)]
    assert all(st.incremental_targets == (3 if incremental else 0) for _, st in runs)
    runs = [m for m, _ in runs]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    assert np.abs(runs[0]).max() > 0


def test_sharing_same_location(alexnet: nn.Module) -> None:
    """Several units/layers over one spot share crops and passes, matching separate runs."""
    layers = ["features.1", "features.2", "features.4"]
    fwd = alexnet_forward(alexnet, layers)
    geo = alexnet_geometry(alexnet)
    images = torch.randn(1, 3, 83, 83, generator=torch.Generator().manual_seed(7))
    # RF centres, pixel (47, 47) or near: features.1 (start 3, jump 4) at (11, 11),
    # features.2 (start 7, jump 8) at (5, 5), features.4 (start 7, jump 8) at (4, 5)
    targets = [OcclusionTarget(0, "features.1", u, 11, 11) for u in (1, 3)]
    targets += [OcclusionTarget(0, "features.2", 2, 5, 5)]
    targets += [OcclusionTarget(0, "features.4", u, 4, 5) for u in (0, 1, 2)]
    zero = torch.zeros(1, 3, 1, 1)
    joint, st = discrepancy_maps(fwd, images, zero, targets, geo, 11, 3, incremental=False)
    sep = [discrepancy_maps(fwd, images, zero, [t], geo, 11, 3, incremental=False) for t in targets]
    scale = unit_scales(fwd, images, targets)
    for i, (m, _) in enumerate(sep):
        assert np.abs(m[0]).max() > 0
        assert np.abs(joint[i] - m[0]).max() <= 1e-5 * scale[i]
        outside = ~rf_mask(targets[i], geo[targets[i].layer], (83, 83), 11, 3)
        assert np.all(joint[i][outside] == 0.0) and np.all(m[0][outside] == 0.0)
    assert st.groups == 1 and st.guard_inputs == 1  # one shared crop, not the whole image
    assert st.occluded_inputs < sum(s.occluded_inputs for _, s in sep)
    assert st.occluded_pixels < sum(s.occluded_pixels for _, s in sep)


# ------------------------------------------------- the alignment argument


def _check_crops(
    fwd: Forward, geo: dict[str, LayerGeometry], images: torch.Tensor, layers: Sequence[str], ext: int
) -> int:
    """Every unit of ``layers``: all channels on its planned crop == full image."""
    from rfstore.core.occlusion_plan import make_member, plan_image

    hw = (images.shape[-2], images.shape[-1])
    pos_y, pos_x = occluder_positions(hw[0], 1, 1), occluder_positions(hw[1], 1, 1)
    checked = 0
    with torch.inference_mode():
        full = fwd(images)
        for layer in layers:
            c, h, w = full[layer].shape[1:]
            for y in range(h):
                for x in range(w):
                    t = OcclusionTarget(0, layer, 0, y, x)
                    m = make_member(0, t, geo[layer], pos_y, pos_x, 1, hw)
                    if not m.mask.any():  # RF entirely in padding: no pixel matters
                        assert min(m.hi) < 0 or m.lo[0] >= hw[0] or m.lo[1] >= hw[1]
                        continue
                    (g,) = plan_image(0, [m], hw, ext)
                    y0, y1, x0, x1 = g.crop
                    assert y0 % geo[layer].jump[0] == 0 and x0 % geo[layer].jump[1] == 0
                    uy, ux = g.unit_index(g.members[0])
                    got = fwd(images[:, :, y0:y1, x0:x1])[layer][0, :, uy, ux]
                    want = full[layer][0, :, y, x]
                    tol = 1e-5 * max(float(full[layer].abs().max()), 1e-6)
                    assert torch.allclose(got, want, rtol=0, atol=tol), (layer, y, x, g.crop)
                    checked += 1
    return checked


def test_crop_alignment_alexnet_every_unit(alexnet: nn.Module) -> None:
    """Interior, border and corner units of conv, ReLU and (stride-2) pool layers."""
    from rfstore.core.occlusion_exec import Runner, min_extent

    layers = ["features.2", "features.5", "features.7", "features.9", "features.12"]
    images = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(8))
    for layer in layers:  # forward stops at the tested layer: crops as small as possible
        fwd = alexnet_forward(alexnet, [layer])
        ext = min_extent(Runner(fwd, torch.device("cpu"), torch.float32), (97, 131), 3)
        assert _check_crops(fwd, alexnet_geometry(alexnet), images, [layer], ext) > 0


@pytest.mark.parametrize("hw", [(45, 38), (50, 51)])
def test_crop_alignment_tiny_net_every_unit(hw: tuple[int, int]) -> None:
    """Asymmetric padding, ceil_mode max/avg pooling, dilation, even kernel."""
    net = tiny_net()
    layers = ["t.1", "t.3", "t.4", "t.6", "t.7"]
    images = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(9))
    for layer in layers:
        assert _check_crops(seq_forward(net, "t.", [layer]), seq_geometry(net, "t."), images, [layer], 1) > 0


def test_float64_and_empty() -> None:
    net = tiny_net().double()
    fwd = seq_forward(net, "t.", ["t.4"])
    geo = seq_geometry(net, "t.")
    images = torch.randn(1, 3, 30, 33, generator=torch.Generator().manual_seed(10))
    targets = [OcclusionTarget(0, "t.4", 2, y, x) for y in (0, 3, 7) for x in (0, 4, 8)]
    ref, _ = naive_discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), targets, 3, 2, dtype=torch.float64)
    for incremental in (False, True):
        maps, st = discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), targets, geo, 3, 2,
                                    dtype=torch.float64, incremental=incremental)
        assert st.fallbacks == 0 and np.abs(maps - ref).max() <= 1e-6 * max(np.abs(ref).max(), 1e-6)
        assert st.incremental_targets == (len(targets) if incremental else 0)
    empty, st = discrepancy_maps(fwd, images, torch.zeros(1, 3, 1, 1), [], geo, 3, 2)
    assert empty.shape == (0, 14, 16) and st.forward_calls == 0


# ------------------------------------------------- incremental inference


def test_incremental_feature_extractor_inplace_relu() -> None:
    """The stage's path: a FeatureExtractor over torchvision AlexNet with in-place ReLUs.
    Pre-ReLU conv outputs (later overwritten in place) and the last pool are located in
    the traced chain and evaluated incrementally, matching full re-inference."""
    from rfstore.models import FeatureExtractor

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()  # ReLU(inplace=True)
    layers = ["features.3", "features.10", "features.12"]
    images = torch.randn(1, 3, 83, 83, generator=torch.Generator().manual_seed(11))
    fill = torch.rand(1, 3, 83, 83, generator=torch.Generator().manual_seed(12))
    with FeatureExtractor(model, layers) as fe:
        with torch.inference_mode():
            shapes = {k: v.shape for k, v in fe(images).items()}
        targets = [t for layer, unit in zip(layers, (5, 17, 3)) for t in grid_targets(shapes, 0, layer, unit)]
        maps, st = discrepancy_maps(fe, images, fill, targets, alexnet_geometry(model), 9, 4, incremental=True)
        ref, _ = naive_discrepancy_maps(fe, images, fill, targets, 9, 4)
        scale = unit_scales(fe, images, targets)
    assert st.incremental_targets == len(targets) and st.occluded_inputs == 0
    assert_matches_naive(maps, ref, targets, alexnet_geometry(model), (83, 83), 9, 4, scale)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class _ShiftedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


@pytest.mark.parametrize("kind", ["residual", "subclass"])
def test_incremental_stops_where_the_chain_does(kind: str) -> None:
    """Targets past a residual addition (not a chain) or a module of an unknown type
    (an nn.Conv2d subclass) go to the crop path; those before it stay incremental."""
    torch.manual_seed(13)
    odd = _Residual(4) if kind == "residual" else _ShiftedConv(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), odd, nn.Conv2d(4, 5, 3), nn.ReLU()).eval()
    layers = ["n.1", "n.2", "n.4"]
    fwd = seq_forward(net, "n.", layers)
    same_rf = nn.Sequential(*net[:2], nn.Conv2d(4, 4, 3, padding=1), *net[3:])
    geo = seq_geometry(same_rf, "n.")
    images = torch.randn(1, 3, 33, 35, generator=torch.Generator().manual_seed(14))
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fwd(images).items()}
    targets = [t for i, layer in enumerate(layers) for t in grid_targets(shapes, 0, layer, i)]
    zero = torch.zeros(1, 3, 1, 1)
    maps, st = discrepancy_maps(fwd, images, zero, targets, geo, 3, 2, incremental=True)
    ref, _ = naive_discrepancy_maps(fwd, images, zero, targets, 3, 2)
    assert st.incremental_targets == sum(t.layer == "n.1" for t in targets) and st.occluded_inputs > 0
    assert_matches_naive(maps, ref, targets, geo, (33, 35), 3, 2, unit_scales(fwd, images, targets))


def test_trace_chain_and_emulation_check() -> None:
    """trace_chain follows module calls until functional code intervenes; build_cache
    reports the first step whose padding-free emulation differs from the module."""
    import dataclasses

    from rfstore.core.occlusion_patches import build_cache

    net = tiny_net()
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(15))

    def fwd(v: torch.Tensor) -> dict[str, torch.Tensor]:
        a = net[:4](v)
        return {"t.3": a, "t.5": net[5](net[4](a) * 2.0)}

    with torch.inference_mode():
        chain, _ = trace_chain(fwd, x, ["t.3", "t.5", "t.6", "missing"])
        assert [type(m) for m in chain.modules] == [type(m) for m in net[:5]]  # stops at "* 2.0"
        assert chain.layers == {"t.3": 3}
        steps, _, ends = build_steps(list(net), (40, 40), 3)
        assert ends == [0, 2, 3, 5, 6, 7]
        img, fill = x[:1], torch.zeros(1, 3, 40, 40)
        _, ok, _ = build_cache(list(net), steps, ends, img, fill, [0] * 6, {}, True, 1e-5)
        assert ok == len(steps)
        broken = list(steps)
        broken[3] = dataclasses.replace(steps[3], op=lambda v, op=steps[3].op: op(v) + 1e-3)
        _, ok, _ = build_cache(list(net), broken, ends, img, fill, [0] * 6, {}, True, 1e-5)
        assert ok == 3


def test_incremental_shares_one_location(alexnet: nn.Module) -> None:
    """Units of one layer at one spot of one image share every recomputed patch."""
    fwd = alexnet_forward(alexnet, ["features.7"])
    geo = alexnet_geometry(alexnet)
    images = torch.randn(1, 3, 99, 99, generator=torch.Generator().manual_seed(16))
    targets = [OcclusionTarget(0, "features.7", u, 3, 2) for u in (0, 5, 9, 40)]
    zero = torch.zeros(1, 3, 1, 1)
    joint, st = discrepancy_maps(fwd, images, zero, targets, geo, 11, 4, incremental=True)
    one = discrepancy_maps(fwd, images, zero, targets[:1], geo, 11, 4, incremental=True)[1]
    assert st.incremental_targets == 4 and st.incremental_inputs == one.incremental_inputs
    ref, _ = naive_discrepancy_maps(fwd, images, zero, targets, 11, 4)
    assert_matches_naive(joint, ref, targets, geo, (99, 99), 11, 4, unit_scales(fwd, images, targets))
