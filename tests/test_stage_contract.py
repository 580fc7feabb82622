"""The stage contract, written once and applied to every stage of :data:`rfstore.pipeline.registry.STAGES`.

Every stage, run through :func:`rfstore.run_pipeline` (the one way stages run), must:

* **skip when done**: run again, with the recorded parameters left out or given again, it
  changes nothing in the store and loads no model;
* **resume after an interruption to identical bits**: interrupted (Ctrl-C) once some of its
  work is flagged done, a rerun keeps that work (it flags done exactly what was not, and starts
  none of its records with work done afresh) and leaves the store exactly as an uninterrupted
  run does;
* **refuse an explicit different parameter**: a value that contradicts the recorded one is a
  :class:`StageMismatchError` (or :class:`UsageError`) naming the parameter, and nothing is
  written;
* **``force`` invalidates downstream**: a forced stage recomputes and forgets the records of
  every stage downstream of it (transitively), no other; running those again recomputes them
  and gives back the same store.

and on both backends, every stage writes the same bits.

The stores are tiny: the hand-weighted CNN of ``tiny_nets.py`` on eight 8x8 images with concept
masks (``test_dissect.write_masked_folder``), and for ``netdissect`` the demo network on a
six-image Broden folder (``broden_fixtures.py``); small blocks and checkpoints (:func:`small_blocks`) so
that a stage flags work done several times where it can. Each store is built once per backend, one stage at a time, with a
snapshot before and after each stage; every test starts from a copy of a snapshot.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broden_fixtures import write_broden
from conftest import HAND_CNN, TESTS
from rfstore import PipelineConfig, run_pipeline
from rfstore.datasets import Preprocessing
from rfstore.errors import StageMismatchError, UsageError
from rfstore.models import ModelSpec
from rfstore.pipeline.registry import STAGES
from rfstore.pipeline.stages import dissect as dissect_stage
from rfstore.pipeline.stages import occlude as occlude_stage
from rfstore.pipeline.stages import segment as segment_stage
from rfstore.pipeline.stages.init import InitConfig
from rfstore.recorded.network import NetworkContext
from rfstore.store import Store, layout, open_store
from rfstore.store.layout import INTERNAL
from support.faults import Faults
from support.stores import assert_same_store, store_contents
from test_dissect import write_masked_folder

NETWORK = "net"
BACKENDS = ("zarr", "h5")
HALF_NET = f"{TESTS / 'broden_fixtures.py'}:tiny_alexnet_half"


@dataclass(frozen=True)
class Case:
    """How the contract runs one stage.

    Attributes
    ----------
    dataset : str
        ``masked`` (image folder with concept masks) or ``broden``.
    speed : mapping
        Options that only decide how the work runs (given on every run).
    params : mapping
        The stage's parameters for the store's run (the rest: defaults).
    other : tuple, optional
        ``(field, value)``: an explicit value contradicting the recorded one; None for a stage
        without a parameter of its own.
    """

    dataset: str
    speed: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    other: tuple[str, Any] | None = None


CPU = {"device": "cpu"}
CASES: dict[str, Case] = {
    "activations": Case("masked", {"batch_size": 4, "num_workers": 0, **CPU}, {}, ("maps", ("1",))),
    "topk": Case("masked", {}, {"k": 3}, ("k", 2)),
    "occlude": Case("masked", CPU, {"size": 2, "stride": 1, "fill": "zero"}, ("size", 3)),
    "rf": Case("masked", CPU, {}, ("threshold", 0.6)),
    "segment": Case("masked"),  # no parameter of its own
    "dissect": Case("masked", {}, {}, ("min_iou", 0.1)),
    "validate": Case("masked", {"batch_size": 8, "num_workers": 0, **CPU}, {}, ("class_map", {"a": 1, "b": 0})),
    "netdissect": Case("broden", {"batch_size": 2, "num_workers": 0, "checkpoint_seconds": 0, **CPU}, {},
                       ("categories", ("object",))),
}
HDF5_SCALES = ("bug in HDF5Store.create_array (store contract: TestHDF5Store."
               "test_a_coordinate_created_again_keeps_its_arrays): dissect started afresh re-creates concept_name")
VALIDATE_LOADS = ("validate loads the network and probes its outputs before it sees that it is complete "
                  "(since 1d8ac91 the output found is one of its parameters); it writes nothing")
WITH_PARAMETER = [name for name, case in CASES.items() if case.other is not None]


def test_every_stage_has_a_case() -> None:
    """A new stage must say how the contract runs it."""
    assert set(CASES) == set(STAGES)


# -- running stages and reading what they did ------------------------------------------------
def run(store: Path, names: tuple[str, ...], values: Mapping[str, Any] | None = None, force: bool = False) -> None:
    """``run_pipeline`` on ``names`` with their speed options, and ``values`` for the first."""
    options = {name: dict(CASES[name].speed) for name in names}
    options[names[0]].update(values or {})
    run_pipeline(store, PipelineConfig(stages=names, options=options, force=force), say=lambda line: None)


def run_as_built(store: Path, names: tuple[str, ...]) -> None:
    """``run_pipeline`` on ``names`` with the options each stage was built with."""
    options = {name: {**CASES[name].speed, **CASES[name].params} for name in names}
    run_pipeline(store, PipelineConfig(stages=names, options=options), say=lambda line: None)


def record_pattern(name: str) -> str:
    """The groups of a stage's records (per layer or not; netdissect has one per pass)."""
    return rf"{NETWORK}/{INTERNAL}/{re.escape(name)}(-[a-z]+)?(/[^/]+)?"


def done_writes(events: list[str], name: str) -> int:
    """How many times the stage flagged work done."""
    return sum(bool(re.fullmatch(rf"write {record_pattern(name)}/done", line)) for line in events)


def fresh_starts(events: list[str], name: str) -> set[str]:
    """The records the stage started afresh (its done flags created)."""
    found = (re.fullmatch(rf"create_array ({record_pattern(name)})/done", line) for line in events)
    return {match.group(1) for match in found if match}


def touched(events: list[str], name: str) -> bool:
    """Whether anything of the stage's records changed."""
    return any(re.search(rf" {record_pattern(name)}(/|$)", line) for line in events)


def records(store: Store, name: str) -> dict[str, dict[str, Any]]:
    """``group -> attributes`` of the stage's records in the store."""
    found: dict[str, dict[str, Any]] = {}

    def walk(group: str) -> None:
        attrs = store.attrs(group)
        if "fingerprint" in attrs and re.fullmatch(record_pattern(name), group):
            found[group] = attrs
        for child in store.children(group)[0]:
            walk(f"{group}/{child}")

    base = f"{NETWORK}/{INTERNAL}"
    for child in store.children(base)[0] if store.has(base) else []:
        walk(f"{base}/{child}")
    return found


def downstream(name: str) -> list[str]:
    """Every stage that reads ``name``'s results, directly or not, in pipeline order."""
    found: list[str] = []
    for stage in STAGES.values():
        if any(up == name or up in found for up in stage.upstream):
            found.append(stage.name)
    return found


def copy_store(source: Path, folder: Path) -> Path:
    """A copy of the store ``source`` (a Zarr folder or an HDF5 file) in ``folder``, made if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return target


# -- the stores --------------------------------------------------------------------------------
@dataclass
class Built:
    """Snapshots of the stores, built one stage at a time, and what each stage's run wrote."""

    backend: str
    before: dict[str, Path] = field(default_factory=dict)
    after: dict[str, Path] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    final: dict[str, Path] = field(default_factory=dict)  # by dataset

    def complete(self, name: str) -> Path:
        """The store with every stage of ``name``'s dataset complete."""
        return self.final[CASES[name].dataset]


@pytest.fixture(scope="module", autouse=True)
def small_blocks() -> Iterator[None]:
    """Blocks of two images, a checkpoint after every occluded image and every segmented unit, dissect's
    units one at a time: every stage that can flag work done within a layer's record does so more than once
    (rf flags a layer's units at once, topk and validate have one block)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "IMAGE_BLOCK", 2)
        patch.setattr(occlude_stage, "CHECKPOINT_SECONDS", 0.0)
        patch.setattr(segment_stage, "CHECKPOINT_SECONDS", 0.0)
        patch.setattr(dissect_stage, "DISSECT_UNIT_BLOCK", 1)
        yield


def init_config(dataset: str, root: Path) -> InitConfig:
    if dataset == "masked":
        return InitConfig(model=ModelSpec(HAND_CNN, None, 0), data=write_masked_folder(root / "masked"),
                          name=NETWORK, preprocessing=Preprocessing.tensor(), layers="1,4")
    return InitConfig(model=ModelSpec(HALF_NET, None, 0), data=write_broden(root / "broden", n_images=6),
                      name=NETWORK, layers="features.4")


def build(backend: str, root: Path) -> Built:
    """Both stores of one backend, each stage run once with its case's options, snapshots around each."""
    result = Built(backend)
    for dataset in ("masked", "broden"):
        store = root / f"{dataset}.{backend}"
        run_pipeline(store, PipelineConfig(init=init_config(dataset, root), stages=()), say=lambda line: None)
        for name in (n for n in STAGES if CASES[n].dataset == dataset):
            result.before[name] = copy_store(store, root / f"before-{name}")
            with Faults() as faults:
                run(store, (name,), CASES[name].params)
            result.done[name] = done_writes(faults.events, name)
            result.after[name] = copy_store(store, root / f"after-{name}")
        result.final[dataset] = store
    return result


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, small_blocks: None) -> dict[str, Built]:
    """The stores of each backend, built once for the module."""
    return {backend: build(backend, tmp_path_factory.mktemp(f"contract-{backend}")) for backend in BACKENDS}


@pytest.fixture(params=BACKENDS)
def built(request: pytest.FixtureRequest, stores: dict[str, Built]) -> Built:
    """The stores of one backend (each test of the contract runs on both)."""
    return stores[request.param]


# -- the contract ------------------------------------------------------------------------------
def run_again(store: Path, name: str) -> list[str]:
    """Run a stage twice more, with its parameters left to the store then given again; the changes made."""
    with Faults() as faults:
        run(store, (name,))
        run(store, (name,), CASES[name].params)
    return faults.events


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_done_is_skipped(name: str, built: Built, tmp_path: Path) -> None:
    """Run again, with its parameters left to the store or given again: nothing written."""
    assert run_again(copy_store(built.complete(name), tmp_path), name) == []


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_done_loads_no_model(name: str, built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     request: pytest.FixtureRequest) -> None:
    """Run again: nothing computed, not even the network loaded."""
    if name == "validate":
        request.applymarker(pytest.mark.xfail(strict=True, reason=VALIDATE_LOADS))
    loaded: list[str] = []
    original = NetworkContext.load_model_unchecked

    def load(ctx: NetworkContext) -> Any:
        loaded.append(ctx.network)
        return original(ctx)

    monkeypatch.setattr(NetworkContext, "load_model_unchecked", load)
    run_again(copy_store(built.complete(name), tmp_path), name)
    assert loaded == []


@pytest.mark.parametrize("name", list(STAGES))
def test_an_interrupted_stage_resumes_to_identical_bits(name: str, built: Built, tmp_path: Path) -> None:
    """Interrupted at its second done flag (its first, for a stage of one block): the rerun flags done only
    the rest and ends with the store of an uninterrupted run."""
    store = copy_store(built.before[name], tmp_path)
    whole = built.done[name]
    assert whole >= 1, f"{name} flagged no work done in a whole run"
    cut = Faults(interrupt=rf"write {record_pattern(name)}/done", interrupt_at=2 if whole >= 2 else 1)
    with cut, pytest.raises(KeyboardInterrupt):
        run(store, (name,), CASES[name].params)
    assert cut.interrupted is not None
    with open_store(store, "r") as st:
        state = records(st, name)
        started = {group for group, attrs in state.items()
                   if attrs.get("state") != "complete" and st.read(f"{group}/done").any()}
    assert any(attrs.get("state") != "complete" for attrs in state.values()), "the interruption came too late"
    with Faults() as rerun:
        run(store, (name,), CASES[name].params)
    assert_same_store(built.after[name], store)
    if whole >= 2:
        assert done_writes(rerun.events, name) == whole - 1, "the rerun redid work flagged done"
        assert not started & fresh_starts(rerun.events, name), "a record with work done was started afresh"


@pytest.mark.parametrize("name", WITH_PARAMETER)
def test_an_explicit_other_parameter_is_a_mismatch(name: str, built: Built, tmp_path: Path) -> None:
    """The error names the parameter; the store is left as it was."""
    store = copy_store(built.complete(name), tmp_path)
    parameter, value = CASES[name].other
    with Faults() as faults, pytest.raises((StageMismatchError, UsageError), match=f"{parameter}: stored"):
        run(store, (name,), {parameter: value})
    assert faults.events == []


@pytest.mark.parametrize("name", list(STAGES))
def test_force_recomputes_and_invalidates_downstream(name: str, built: Built, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """Forced: the stage starts afresh, the records of every stage downstream (and only those) are
    forgotten; the next run recomputes exactly those, and the store is the same again."""
    if (built.backend, name) == ("h5", "dissect"):
        request.applymarker(pytest.mark.xfail(strict=True, raises=(OSError, RuntimeError), reason=HDF5_SCALES))
    store = copy_store(built.complete(name), tmp_path)
    below = downstream(name)
    others = [n for n in STAGES if CASES[n].dataset == CASES[name].dataset and n != name and n not in below]
    with Faults() as forced:
        run(store, (name,), CASES[name].params, force=True)
    assert fresh_starts(forced.events, name), f"forced {name} did not start afresh"
    with open_store(store, "r") as st:
        assert {n: bool(records(st, n)) for n in below + others} == {n: n in others for n in below + others}
    with Faults() as again:  # the parameters of the stages forgotten must be given again
        run_as_built(store, tuple(n for n in STAGES if n in below + others) or (name,))
    assert {n: bool(fresh_starts(again.events, n)) for n in below} == {n: True for n in below}
    assert not any(touched(again.events, n) for n in others)
    assert_same_store(built.complete(name), store)


@pytest.mark.parametrize("dataset", ["masked", "broden"])
def test_both_backends_give_the_same_bits(dataset: str, stores: dict[str, Built]) -> None:
    """Every array every stage wrote is the same, bit for bit, in a Zarr and in an HDF5 store."""
    zarr, h5 = ({key: value for key, value in store_contents(stores[backend].final[dataset]).items()
                 if not key.endswith("@attrs")} for backend in BACKENDS)
    assert sorted(zarr) == sorted(h5)
    assert [key for key in zarr if zarr[key] != h5[key]] == []
