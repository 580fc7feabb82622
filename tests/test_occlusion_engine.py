"""The occlusion engine (rfstore.occlusion): exact against full re-inference and Captum, and the same bits
whatever the batch size, the other targets, the strategy or the order of the work."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from occlusion_support import (
    alexnet,
    alexnet_forward,
    alexnet_geometry,
    argmax_targets,
    assert_matches,
    grid_targets,
    plain_reference,
    seq_forward,
    seq_geometry,
    tiny_net,
    unit_scales,
)
from rfstore.occlusion import (
    LayerGeometry,
    Method,
    Occluder,
    OccluderError,
    OcclusionEngine,
    OcclusionTarget,
    occlusion_maps,
)
from rfstore.rf.attribution import pixel_attribution
from rfstore.occlusion.chain import GEMM_ALIGN, build_steps, trace_chain
from rfstore.occlusion.geometry import aligned_crop
from rfstore.occlusion.incremental import check_steps

ZERO = torch.zeros(1, 3, 1, 1)
INCREMENTAL = (None, Method.CONE, Method.SHARED)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return alexnet()


# ----------------------------------------------------------------- value objects


def test_occluder_positions_and_checks() -> None:
    p = Occluder(11, 3).positions(224)
    assert p.size == 72 and p[0] == 0 and p[-1] == 213
    assert Occluder(5, 5).positions(97).tolist() == list(range(0, 93, 5))
    with pytest.raises(OccluderError):
        Occluder(11, 3).positions(10)
    for bad in ({"size": 0}, {"stride": 0}, {"fill": "blue"}):
        with pytest.raises(OccluderError):
            Occluder(**bad)
    assert Occluder(fill="0.5").fill == "0.5"


@pytest.mark.parametrize("lo,hi,length,align,ext",
                         [(-5, 20, 99, 4, 1), (37, 90, 99, 16, 1), (50, 130, 99, 8, 1), (90, 95, 99, 4, 31),
                          (3, 5, 99, 4, 31)])
def test_aligned_crop(lo: int, hi: int, length: int, align: int, ext: int) -> None:
    a, b = aligned_crop(lo, hi, length, align, ext)
    assert a % align == 0 and 0 <= a <= max(lo, 0) and min(hi, length - 1) < b <= length
    assert b - a >= min(ext, length)


# ----------------------------------------------------------------- worked out by hand


@pytest.mark.parametrize("method", [None, Method.CONE, Method.SHARED, Method.CROP, Method.PLAIN])
def test_hand_weighted_conv(method: Method | None) -> None:
    """3x3 all-ones conv on a constant image of 2: discrepancy = 3 channels x 2 x (occluded RF pixels)."""
    conv = nn.Conv2d(3, 1, 3, bias=False)
    nn.init.ones_(conv.weight)
    seq = nn.Sequential(conv)
    fwd = seq_forward(seq, "l.", ["l.0"])
    geo = {"l.0": LayerGeometry((3, 3), (1, 1), (1.0, 1.0), "conv")}
    img = torch.full((1, 3, 8, 8), 2.0)
    t = OcclusionTarget(0, "l.0", 0, 2, 3)  # RF rows 2..4, cols 3..5
    for size, stride in [(1, 1), (2, 1), (2, 2)]:
        occluder = Occluder(size, stride)
        maps, st = occlusion_maps(fwd, img, ZERO, [t], geo, occluder, method=method)
        pos = occluder.positions(8)
        ov_y = np.clip(np.minimum(pos + size - 1, 4) - np.maximum(pos, 2) + 1, 0, None)
        ov_x = np.clip(np.minimum(pos + size - 1, 5) - np.maximum(pos, 3) + 1, 0, None)
        assert np.array_equal(maps[0], (3 * 2.0 * np.outer(ov_y, ov_x)).astype(np.float32))
        assert st.target_positions == int((np.outer(ov_y, ov_x) > 0).sum())


# ----------------------------------------------------------------- Captum


def test_against_captum(net: nn.Module) -> None:
    """Per-pixel attribution vs captum.attr.Occlusion (baselines=0), conv, pool and linear units.

    With ``H - size`` divisible by the stride (68 = 11 + 3*19) Captum's windows are ours.
    """
    from captum.attr import Occlusion

    size, stride, hw = 11, 3, 68
    images = torch.randn(2, 3, hw, hw, generator=torch.Generator().manual_seed(1))
    geo = alexnet_geometry(net)
    picks = [(0, "features.1", 7), (0, "features.5", 3), (0, "features.11", 20), (1, "classifier.1", 5)]
    layers = [layer for _, layer, _ in picks]
    targets = argmax_targets(alexnet_forward(net, layers), images, picks)
    maps, _ = occlusion_maps(alexnet_forward(net, layers), images, ZERO, targets, geo, Occluder(size, stride))
    for i, t in enumerate(targets):
        fwd = alexnet_forward(net, [t.layer])

        def scalar(x: torch.Tensor, t: OcclusionTarget = t, fwd=fwd) -> torch.Tensor:
            a = fwd(x)[t.layer][:, t.unit]
            return a if a.ndim == 1 else a[:, t.y, t.x]

        with torch.no_grad():
            attr = Occlusion(scalar).attribute(images[t.image: t.image + 1], sliding_window_shapes=(3, size, size),
                                               strides=(3, stride, stride), baselines=0,
                                               perturbations_per_eval=64)[0, 0].double().numpy()
        mine = pixel_attribution(maps[i: i + 1], hw, hw, size, stride)[0]
        scale = max(float(np.abs(attr).max()), unit_scales(fwd, images, [t])[0], 1e-6)
        assert np.abs(attr).max() > 0, t  # a live unit, or the check is vacuous
        assert np.abs(mine - attr).max() <= 1e-4 * scale, t


# ----------------------------------------------------------------- full re-inference


@pytest.mark.parametrize("hw,size,stride", [((67, 67), 7, 2), ((97, 131), 5, 5)])
def test_alexnet_every_route_against_plain(net: nn.Module, hw: tuple[int, int], size: int, stride: int) -> None:
    """Conv, ReLU, pool and linear targets at corners, borders and the interior, noise fill, every route."""
    layers = ["features.1", "features.2", "features.4", "features.5", "features.7", "features.11", "features.12",
              "classifier.1", "classifier.5"]
    fwd = alexnet_forward(net, layers)
    geo = alexnet_geometry(net)
    g = torch.Generator().manual_seed(2)
    images, fills = torch.randn(2, 3, *hw, generator=g), torch.randn(2, 3, *hw, generator=g)
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fwd(images).items()}
    targets = grid_targets(shapes, 0, "features.1", 3) + grid_targets(shapes, 1, "features.4", 8)
    targets += grid_targets(shapes, 0, "features.5", 9) + [OcclusionTarget(1, "features.2", 5, 3, 4)]
    targets += argmax_targets(fwd, images, [(0, "features.7", 30), (1, "features.11", 7), (0, "features.12", 100)])
    targets += [OcclusionTarget(n, "classifier.1", u, 0, 0) for n, u in ((0, 4), (1, 9))]
    targets += [OcclusionTarget(1, "classifier.5", 17, 0, 0)]
    occluder = Occluder(size, stride)
    ref = plain_reference(fwd, images, fills, targets, occluder)
    scale = unit_scales(fwd, images, targets)
    runs = {}
    for method in (None, Method.CONE, Method.SHARED, Method.CROP):
        maps, st = occlusion_maps(fwd, images, fills, targets, geo, occluder, method=method, batch_size=100)
        assert_matches(maps, ref, targets, geo, occluder, hw, scale)
        assert st.fallbacks == 0
        runs[method] = maps
    # cones and the shared pass recompute the same cells the same way: the same bits
    assert np.array_equal(runs[Method.CONE], runs[Method.SHARED]) and np.array_equal(runs[None], runs[Method.SHARED])


def bn_net() -> nn.Sequential:
    """Batch norm (eval), grouped and depthwise convolutions, average pooling, LRN, padding."""
    torch.manual_seed(21)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), nn.LocalResponseNorm(3), nn.ReLU6(),
        nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ConstantPad2d(1, 0.5), nn.Conv2d(8, 5, 3),
    ).eval()
    with torch.no_grad():
        seq[1].running_mean.uniform_(-0.5, 0.5)
        seq[1].running_var.uniform_(0.5, 2.0)
    return seq


@pytest.mark.parametrize("build,layers,hw,size,stride", [
    (tiny_net, ["t.1", "t.3", "t.5", "t.6", "t.7"], (45, 38), 3, 2),
    (tiny_net, ["t.1", "t.3", "t.5", "t.6", "t.7"], (50, 50), 7, 3),
    (tiny_net, ["t.1", "t.3", "t.5", "t.6", "t.7"], (41, 53), 4, 4),
    (bn_net, ["t.2", "t.5", "t.6", "t.8", "t.9"], (36, 30), 5, 2),
])
def test_small_networks_every_unit_against_plain(build, layers: list[str], hw: tuple[int, int], size: int,
                                                  stride: int) -> None:
    seq = build()
    fwd = seq_forward(seq, "t.", layers)
    geo = seq_geometry(seq, "t.")
    g = torch.Generator().manual_seed(4)
    images, fills = torch.randn(1, 3, *hw, generator=g), torch.randn(1, 3, *hw, generator=g)
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fwd(images).items()}
    targets = [OcclusionTarget(0, layer, u % shapes[layer][1], y, x)
               for u, layer in enumerate(layers) for y in range(shapes[layer][-2]) for x in range(shapes[layer][-1])]
    occluder = Occluder(size, stride)
    ref = plain_reference(fwd, images, fills, targets, occluder)
    scale = unit_scales(fwd, images, targets)
    runs = []
    for method in INCREMENTAL + (Method.CROP,):
        maps, st = occlusion_maps(fwd, images, fills, targets, geo, occluder, method=method, batch_size=64)
        assert st.fallbacks == 0
        assert_matches(maps, ref, targets, geo, occluder, hw, scale)
        runs.append(maps)
    assert all(np.array_equal(runs[0], r) for r in runs[1:3])


def test_float64() -> None:
    seq = tiny_net().double()
    fwd = seq_forward(seq, "t.", ["t.4"])
    geo = seq_geometry(seq, "t.")
    images = torch.randn(1, 3, 30, 33, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    targets = [OcclusionTarget(0, "t.4", 2, y, x) for y in (0, 3, 7) for x in (0, 4, 8)]
    occluder = Occluder(3, 2)
    ref = plain_reference(fwd, images, ZERO.double(), targets, occluder)
    for method in INCREMENTAL:
        maps, _ = occlusion_maps(fwd, images, ZERO.double(), targets, geo, occluder, dtype=torch.float64,
                                 method=method)
        assert np.abs(maps - ref).max() <= 1e-6 * max(np.abs(ref).max(), 1e-6)


# ----------------------------------------------------------------- the same bits


def test_bits_do_not_depend_on_batch_size_selection_or_order(net: nn.Module) -> None:
    """Every target's map is a function of its image and unit alone (the checkpoints and Dask tasks rely on it)."""
    layers = ["features.4", "features.7", "features.12", "classifier.2"]
    fwd = alexnet_forward(net, layers)
    geo = alexnet_geometry(net)
    images = torch.randn(3, 3, 71, 71, generator=torch.Generator().manual_seed(6))
    picks = [(n, layer, u) for n in range(3) for layer in layers for u in (1, 2, 40)]
    targets = argmax_targets(fwd, images, picks)
    occluder = Occluder(11, 4, "zero")
    whole, _ = occlusion_maps(fwd, images, ZERO, targets, geo, occluder, batch_size=256)
    assert np.abs(whole).max() > 0
    for batch in (2, 7):
        assert np.array_equal(occlusion_maps(fwd, images, ZERO, targets, geo, occluder, batch_size=batch)[0], whole)
    for i in (0, 4, 10, len(targets) - 1):  # one target alone, through a forward that computes only its layer
        alone, _ = occlusion_maps(alexnet_forward(net, [targets[i].layer]), images, ZERO, targets[i: i + 1], geo,
                                  occluder)
        assert np.array_equal(alone[0], whole[i]), targets[i]
    order = list(reversed(range(len(targets))))
    shuffled, _ = occlusion_maps(fwd, images, ZERO, [targets[i] for i in order], geo, occluder)
    assert np.array_equal(shuffled, whole[order])


@pytest.mark.parametrize("k,n", [(27, 5), (75, 10), (363, 64), (1728, 192), (576, 20)])
def test_matrix_product_rows_do_not_depend_on_their_place(k: int, n: int) -> None:
    """What the cell arithmetic relies on: with the columns padded to GEMM_ALIGN, a row's product does not
    depend on where it sits in a call of fixed size (it did for 5 or 10 columns unpadded)."""
    g = torch.Generator().manual_seed(k)
    cols = -(-n // GEMM_ALIGN) * GEMM_ALIGN
    a, w, b = torch.randn(256, k, generator=g), torch.randn(k, cols, generator=g), torch.randn(cols, generator=g)
    out = torch.addmm(b, a, w)
    for seed in range(3):
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.addmm(b, a[perm], w), out[perm])
        other = torch.randn(256, k, generator=g)
        other[:50] = a[:50]
        assert torch.equal(torch.addmm(b, other, w)[:50], out[:50])


# ----------------------------------------------------------------- structure


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class _ShiftedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


class _Head(nn.Module):
    """conv stem, a residual block, a pooled linear head: the prefix ends at the residual addition."""

    def __init__(self, odd: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
        self.odd = odd
        self.tail = nn.Sequential(nn.Conv2d(4, 5, 3), nn.ReLU())
        self.fc = nn.Linear(5 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tail(self.odd(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


@pytest.mark.parametrize("kind", ["residual", "subclass"])
def test_targets_after_the_prefix(kind: str) -> None:
    """Past a residual addition or a module of unknown type: crops for small RFs, the tail of the shared
    pass for linear units; every route exact, and the injection point found before the odd module."""
    from rfstore.models import FeatureExtractor

    torch.manual_seed(13)
    odd = _Residual(4) if kind == "residual" else _ShiftedConv(4, 4, 3, padding=1)
    model = _Head(odd).eval()
    layers = ["stem.1", "odd", "tail.1", "fc"]
    fe = FeatureExtractor(model, layers)
    same_rf = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                            nn.Conv2d(4, 5, 3), nn.ReLU())
    g = seq_geometry(same_rf, "n.")
    geo = {"stem.1": g["n.1"], "odd": g["n.2"], "tail.1": g["n.4"], "fc": LayerGeometry((0, 0), (1, 1), (0, 0), "linear")}
    images = torch.randn(1, 3, 33, 35, generator=torch.Generator().manual_seed(14))
    with torch.inference_mode():
        shapes = {k: v.shape for k, v in fe(images).items()}
    targets = [t for i, layer in enumerate(layers[:3]) for t in grid_targets(shapes, 0, layer, i)]
    targets += [OcclusionTarget(0, "fc", u, 0, 0) for u in (0, 5)]
    occluder = Occluder(3, 2)
    ref = plain_reference(fe, images, ZERO, targets, occluder)
    engine = OcclusionEngine(fe, geo, occluder, truncated=lambda layer: FeatureExtractor(model, [layer]))
    maps, st, plan = engine.image_maps(images[0], torch.zeros(3, 33, 35), targets)
    assert_matches(maps, ref, targets, geo, occluder, (33, 35), unit_scales(fe, images, targets))
    assert list(engine.prefix.layer_step) == ["stem.1"] and engine.tail is not None
    assert engine.tail.index == 1 and st.crop_inputs > 0 and st.tail_rows > 0
    assert plan.methods[Method.SHARED] >= sum(t.layer in ("stem.1", "fc") for t in targets)
    assert plan.methods[Method.CROP] > 0


def test_guard_sends_a_size_dependent_forward_to_full_images() -> None:
    """A forward that is not translation-equivariant on crops fails the crop guard: full images, still exact."""
    seq = tiny_net()

    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.01 * x.shape[-1]

    model = nn.Sequential(*seq[:5], Odd()).eval()
    fwd = seq_forward(model, "t.", ["t.5"])
    geo = {"t.5": seq_geometry(seq, "t.")["t.4"]}
    images = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    targets = [OcclusionTarget(0, "t.5", 1, 2, 3), OcclusionTarget(0, "t.5", 2, 9, 9)]
    occluder = Occluder(3, 1)
    maps, st = occlusion_maps(fwd, images, ZERO, targets, geo, occluder)
    assert st.fallbacks == 2
    ref = plain_reference(fwd, images, ZERO, targets, occluder)
    assert_matches(maps, ref, targets, geo, occluder, (40, 40), unit_scales(fwd, images, targets))


def test_trace_chain_and_step_check() -> None:
    """The chain follows module calls until functional code intervenes; the step check finds the first step
    whose cell arithmetic differs from the module."""
    seq = tiny_net()
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(15))

    def fwd(v: torch.Tensor) -> dict[str, torch.Tensor]:
        a = seq[:4](v)
        return {"t.3": a, "t.5": seq[5](seq[4](a) * 2.0)}

    with torch.inference_mode():
        chain, _ = trace_chain(fwd, x, ["t.3", "t.5", "missing"])
        assert [type(m) for m in chain.modules] == [type(m) for m in seq[:5]]  # stops at "* 2.0"
        assert chain.layers == {"t.3": 3}
        steps, _, ends = build_steps(list(seq), (40, 40), 3)
        assert ends == [0, 2, 3, 5, 6, 7]
        assert check_steps(list(seq), steps, ends, x[0], 1e-5) == len(steps)
        broken = list(steps)
        broken[3] = dataclasses.replace(steps[3], bias=steps[3].bias + 1e-3)
        assert check_steps(list(seq), broken, ends, x[0], 1e-5) == 3
        cut, _, cut_ends = build_steps(list(seq), (40, 40), 3, cuts=[4])
        assert cut_ends == [0, 2, 3, 4, 5, 6, 7] and cut[4].kind == "copy"


def test_inplace_relu_through_a_feature_extractor() -> None:
    """The stage's path: torchvision AlexNet with in-place ReLUs; pre-ReLU conv outputs (overwritten in place
    later), the last pool and a linear layer, against full re-inference."""
    from rfstore.models import FeatureExtractor

    model = alexnet(inplace=True)
    layers = ["features.3", "features.10", "features.12", "classifier.4"]
    images = torch.randn(1, 3, 83, 83, generator=torch.Generator().manual_seed(11))
    fill = torch.rand(1, 3, 83, 83, generator=torch.Generator().manual_seed(12))
    occluder = Occluder(9, 4, "noise")
    with FeatureExtractor(model, layers) as fe:
        with torch.inference_mode():
            shapes = {k: v.shape for k, v in fe(images).items()}
        targets = [t for layer, unit in zip(layers[:3], (5, 17, 3)) for t in grid_targets(shapes, 0, layer, unit)]
        targets += [OcclusionTarget(0, "classifier.4", 7, 0, 0)]
        maps, st = occlusion_maps(fe, images, fill, targets, alexnet_geometry(model), occluder,
                                  truncated=lambda layer: FeatureExtractor(model, [layer]))
        ref = plain_reference(fe, images, fill, targets, occluder)
        scale = unit_scales(fe, images, targets)
    assert st.shared_images == 1 and st.crop_inputs == 0 and st.plain_inputs == 0
    assert_matches(maps, ref, targets, alexnet_geometry(model), occluder, (83, 83), scale)


# ----------------------------------------------------------------- the planner


def test_planner_takes_cones_for_few_targets_and_one_pass_for_many(net: nn.Module) -> None:
    fwd = alexnet_forward(net, ["features.4", "features.11"])
    geo = alexnet_geometry(net)
    image = torch.randn(3, 99, 99, generator=torch.Generator().manual_seed(16))
    occluder = Occluder(11, 3, "zero")
    engine = OcclusionEngine(fwd, geo, occluder)
    one = [OcclusionTarget(0, "features.4", 3, 5, 6)]
    _, st, plan = engine.image_maps(image, torch.zeros_like(image), one)
    assert plan.methods == {Method.CONE: 1} and st.cone_groups == 1 and plan.cost < plan.alternative
    many = [OcclusionTarget(0, layer, u, y, x) for layer, side in (("features.4", 5), ("features.11", 5))
            for u in range(0, 64, 8) for y, x in itertools.product(range(0, side, 2), repeat=2)]
    _, st, plan = engine.image_maps(image, torch.zeros_like(image), many)
    assert plan.methods == {Method.SHARED: len(many)} and st.shared_images == 1 and plan.cost < plan.alternative
