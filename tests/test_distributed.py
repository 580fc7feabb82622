"""Distributed runs on Dask: the same bits as one process, killed workers retried, HDF5 refused.

One LocalCluster of two worker processes (one thread each) serves the module. The
images are 48x48 noise (plus one file that is not an image), blocks of 5 images
cut into batches of 2, so every block ends in a batch of one: the cluster's
tasks must batch exactly as one process does to give the same bits.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import HAND_CNN, TESTS

pytest.importorskip("distributed")

from rfstore.cli import app  # noqa: E402
from rfstore.datasets import Preprocessing  # noqa: E402
from rfstore.errors import RfstoreError  # noqa: E402
from rfstore.models import ModelSpec  # noqa: E402
from rfstore.pipeline import worker as dist  # noqa: E402
from rfstore.pipeline.stages import activations as activations_stage  # noqa: E402
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations  # noqa: E402
from rfstore.pipeline.cluster import ClusterSpec, session  # noqa: E402
from rfstore.recorded.network import NetworkContext  # noqa: E402
from rfstore.pipeline.stages.init import InitConfig, run_init  # noqa: E402
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude  # noqa: E402
from rfstore.recorded.progress import Plan, StageProgress  # noqa: E402
from rfstore.pipeline.stages.topk import TopKConfig, run_topk  # noqa: E402
from rfstore.store import StoreError, layout, open_store, open_store_for_worker  # noqa: E402

TINY_ALEXNET = "rfstore.demo.network:tiny_alexnet"
KILL_ONCE = f"{TESTS / 'dist_nets.py'}:kill_once_alexnet"
LAYERS = "features.4,features.9"
BLOCK = 5
ACTS = ActivationsConfig(batch_size=2, num_workers=0, device="cpu", maps=("features.4",))
TOPK = TopKConfig(k=3)
OCCLUDE = OccludeConfig(size=9, stride=6, fill="noise", units=slice(0, 4), images_per_task=3, device="cpu")


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Creating this file makes the next kill_once_alexnet forward on a worker SIGKILL that worker."""
    return tmp_path_factory.mktemp("arm") / "arm"


@pytest.fixture(scope="module")
def client(arm: Path):
    """The cluster of ``--cluster local:2``; its workers (spawned from here) see the arm file's name."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RFSTORE_TEST_KILL_ARM", str(arm))
        with session(arm.with_name("any.zarr"), ClusterSpec(local_workers=2)) as client:
            yield client


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "images"
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "RGB").save(root / label / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not an image")
    return root


def init_store(path: Path, model: str, data: Path) -> None:
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(model, None, 0), data=data, preprocessing=Preprocessing.tensor(),
                                   layers=LAYERS, name="net"))


def run_stages(path: Path, client=None, stages=("activations", "topk", "occlude"), **kwargs) -> None:
    with pytest.MonkeyPatch.context() as mp, open_store(path, "a") as store:
        mp.setattr(layout, "IMAGE_BLOCK", BLOCK)
        ctx = NetworkContext.open(store)
        if "activations" in stages:
            run_activations(ctx, ACTS, client=client, **kwargs)
        if "topk" in stages:
            run_topk(ctx, TOPK, client=client)
        if "occlude" in stages:
            run_occlude(ctx, OCCLUDE, client=client)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """The one-process run."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    init_store(path, TINY_ALEXNET, images)
    run_stages(path)
    return path


def arrays(path: Path, prefix: str = "net") -> dict[str, np.ndarray]:
    """Every data array of the store (bookkeeping left out), read with zarr itself."""
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, name: str) -> None:
        for key, array in group.arrays():
            out[f"{name}/{key}"] = array[...]
        for key, sub in group.groups():
            if key != layout.INTERNAL:
                walk(sub, f"{name}/{key}")

    walk(zarr.open_group(str(path), mode="r")[prefix], prefix)
    return out


def assert_same_bits(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], names=None) -> None:
    names = sorted(expected) if names is None else names
    assert set(names) <= set(actual)
    for name in names:
        a, b = expected[name], actual[name]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        if a.dtype.kind in "OTU":
            assert a.tolist() == b.tolist(), name
        else:
            assert a.tobytes() == b.tobytes(), name


def test_cluster_run_gives_the_bits_of_one_process(client, reference: Path, images: Path, tmp_path: Path) -> None:
    path = tmp_path / "cluster.zarr"
    init_store(path, TINY_ALEXNET, images)
    run_stages(path, client)
    expected, actual = arrays(reference), arrays(path)
    assert_same_bits(expected, actual)
    assert {"net/features.4/act_map", "net/features.9/discrepancy", "net/features.9/topk_value"} <= set(actual)
    assert actual["net/image_error"].tolist().count("not an image") == 1
    assert np.isfinite(actual["net/features.9/discrepancy"][:4]).all()
    with open_store(path, "r") as store:
        spec = store.array_spec("net/features.4/act_map")
        assert BLOCK % spec.chunks[0] == 0  # no act_map chunk straddles two tasks' blocks
        assert store.read("net/_rfstore/occlude/features.9/done")[:4 * TOPK.k].tolist() == [1] * 4 * TOPK.k
        assert store.read("net/_rfstore/activations/done").tolist() == [1, 1, 1]


def test_batches_never_straddle_blocks() -> None:
    from rfstore.pipeline.stages.activations import block_batches

    assert block_batches([(0, 0, 5), (2, 10, 13)], 2) == [[0, 1], [2, 3], [4], [5, 6], [7]]


def test_interrupted_client_resumes_with_unfinished_blocks_only(client, reference: Path, images: Path,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "resumed.zarr"
    init_store(path, TINY_ALEXNET, images)

    def interrupt_after_first_block(finished, total):
        for _ in finished:
            raise KeyboardInterrupt  # the client dies once one block is recorded

    with pytest.raises(KeyboardInterrupt):
        run_stages(path, client, stages=("activations",), progress=interrupt_after_first_block)
    with open_store(path, "r") as store:
        done = store.read("net/_rfstore/activations/done").astype(bool)
    assert done.sum() == 1
    block = int(np.flatnonzero(done)[0])
    with pytest.MonkeyPatch.context() as mp, open_store(path, "a") as store:
        mp.setattr(layout, "IMAGE_BLOCK", BLOCK)
        result = run_activations(NetworkContext.open(store), ACTS, client=client)
    assert result.plan is Plan.RESUME
    assert result.images_done == 13 - (min(13, (block + 1) * BLOCK) - block * BLOCK)
    expected = arrays(reference)
    assert_same_bits(expected, arrays(path), [n for n in expected if "/act_" in n or n.endswith("image_error")])


def test_scheduler_option_joins_a_running_cluster(client, reference: Path, images: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cli.zarr"
    init_store(path, TINY_ALEXNET, images)
    monkeypatch.setattr(layout, "IMAGE_BLOCK", BLOCK)
    result = CliRunner().invoke(app, ["activations", str(path), "--batch-size", "2", "--workers", "0", "--device",
                                      "cpu", "--maps", "features.4", "--scheduler", client.scheduler.address])
    assert result.exit_code == 0, result.output
    assert "13 images processed" in result.output
    expected = arrays(reference)
    assert_same_bits(expected, arrays(path), [n for n in expected if "/act_" in n or n.endswith("image_error")])


def test_stale_task_writes_nothing(images: Path, tmp_path: Path) -> None:
    path = tmp_path / "stale.zarr"
    init_store(path, TINY_ALEXNET, images)
    run_stages(path, stages=("activations",))
    before = arrays(path)
    with pytest.raises(dist.StaleTaskError, match="restarted"):
        activations_stage.activations_task(str(path), "net", ACTS, "an-older-generation", (0, 0, BLOCK),
                              {"features.4": 32, "features.9": 48}, {})
    assert_same_bits(before, arrays(path))
    with pytest.raises(StoreError, match="Zarr"):
        open_store_for_worker(tmp_path / "x.h5")
    with pytest.raises(StoreError, match="shares"):
        open_store_for_worker(tmp_path / "missing.zarr")


def test_hdf5_is_refused_before_anything(tmp_path: Path, tiny_folder: Path) -> None:
    path = tmp_path / "store.h5"
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(HAND_CNN, None, 0), data=tiny_folder,
                                   preprocessing=Preprocessing.tensor(), layers="0,1"))
    stamp = (path.stat().st_mtime_ns, path.read_bytes())
    runner = CliRunner()
    for command in (["activations"], ["topk"], ["occlude"]):
        result = runner.invoke(app, [*command, str(path), "--cluster", "local:2"])
        assert result.exit_code == 1
        assert "needs a Zarr store" in result.output and len(result.output.strip().splitlines()) == 1
    fresh = tmp_path / "fresh.h5"
    result = runner.invoke(app, ["run", str(fresh), "--model", HAND_CNN, "--data", str(tiny_folder),
                                 "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1 and "needs a Zarr store" in result.output
    assert not fresh.exists()
    assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp
    with open_store(path, "a") as store:
        ctx = NetworkContext.open(store)
        with pytest.raises(RfstoreError, match="needs a Zarr store"):
            run_activations(ctx, ACTS, client=object())
        assert StageProgress(store, ctx.network, "activations").record() is None


def test_cluster_options_are_checked() -> None:
    runner = CliRunner()
    for options in (["--cluster", "local:2", "--scheduler", "tcp://127.0.0.1:9"], ["--cluster", "local:0"],
                    ["--cluster", "4"], ["--scheduler", "tcp://127.0.0.1:9", "--cluster", "local:1"]):
        result = runner.invoke(app, ["activations", "x.zarr", *options])
        assert result.exit_code == 2, (options, result.output)
    for command in ("activations", "topk", "occlude", "run"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "--cluster" in text and "--scheduler" in text, command
    assert ClusterSpec.from_options("local:3", None) == ClusterSpec(local_workers=3)
    assert ClusterSpec.from_options(None, None) is None
    with pytest.raises(ValueError):
        ClusterSpec.from_options("local:1", "tcp://h:1")


def test_killed_worker_is_retried_to_the_same_bits(client, arm: Path, reference: Path, images: Path,
                                                   tmp_path: Path) -> None:
    """SIGKILL of the worker in its first forward pass (activations, then occlude): Dask reruns the task."""
    path = tmp_path / "killed.zarr"
    init_store(path, KILL_ONCE, images)
    fired = Path(f"{arm}.fired")
    for stages in (("activations", "topk"), ("occlude",)):
        fired.unlink(missing_ok=True)
        arm.touch()
        run_stages(path, client, stages=stages)
        assert fired.exists() and not arm.exists(), f"no worker was killed during {stages}"
    assert_same_bits(arrays(reference), arrays(path))


@pytest.mark.slow
def test_cli_run_on_a_local_cluster_equals_one_process(images: Path, tmp_path: Path) -> None:
    """The real entry point: ``rfstore run`` with and without ``--cluster local:2`` (two processes, ~1 min)."""
    import shutil
    import subprocess
    import sys

    rfstore = shutil.which("rfstore", path=str(Path(sys.executable).parent)) or "rfstore"
    env = {**os.environ, "RFSTORE_IMAGE_BLOCK": str(BLOCK)}
    common = ["--model", TINY_ALEXNET, "--data", str(images), "--preprocess", "tensor", "--layers", LAYERS,
              "--batch-size", "2", "--workers", "0", "--k", "3", "--units", "0:4", "--size", "9", "--stride", "6",
              "--device", "cpu"]
    for name, extra in (("one.zarr", []), ("cluster.zarr", ["--cluster", "local:2"])):
        done = subprocess.run([rfstore, "run", str(tmp_path / name), *common, *extra], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
    assert "local Dask cluster of 2" in done.stderr
    prefix = "tiny_alexnet"
    assert_same_bits(arrays(tmp_path / "one.zarr", prefix), arrays(tmp_path / "cluster.zarr", prefix))
