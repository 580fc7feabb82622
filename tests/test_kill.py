"""kill -9 of a real ``rfstore activations`` process, then a rerun: the same arrays as one clean run."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTS, write_tiny_folder
from test_cli import RFSTORE

SLOW = f"{TESTS / 'tiny_nets.py'}:slow_hand_cnn"


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_kill_9_during_activations_then_resume(tmp_path: Path, suffix: str) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=12)
    env = {**os.environ, "RFSTORE_IMAGE_BLOCK": "4"}
    reference, killed = tmp_path / f"ref.{suffix}", tmp_path / f"killed.{suffix}"
    init = ["--model", SLOW, "--data", str(folder), "--preprocess", "tensor", "--layers", "net.0,net.6"]
    for store in (reference, killed):
        subprocess.run([RFSTORE, "init", str(store), *init], check=True, env=env, capture_output=True)
    subprocess.run([RFSTORE, "activations", str(reference), "--batch-size", "2", "--workers", "0"],
                   check=True, env=env, capture_output=True)

    counter = tmp_path / "forwards"
    slow_env = {**env, "RFSTORE_TEST_COUNTER": str(counter), "RFSTORE_TEST_DELAY": "0.15"}
    proc = subprocess.Popen([RFSTORE, "activations", str(killed), "--batch-size", "2", "--workers", "0"],
                            env=slow_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # 24 images in blocks of 4, 2 per forward (plus probing passes): stop it mid-way
    while time.monotonic() < deadline:
        if counter.exists() and len(counter.read_text().splitlines()) >= 7:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    resumed = subprocess.run([RFSTORE, "activations", str(killed), "--batch-size", "2", "--workers", "0"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    processed = int(resumed.stderr.split("activations: ")[1].split()[0])
    assert 0 < processed < 24  # it resumed, it did not start over

    from rfstore.store import open_store

    with open_store(reference, "r") as a, open_store(killed, "r") as b:
        for layer in ("net.0", "net.6"):
            for name in ("act_max", "act_mean", "act_y", "act_x"):
                np.testing.assert_array_equal(a.read(f"slow_hand_cnn/{layer}/{name}"),
                                              b.read(f"slow_hand_cnn/{layer}/{name}"))
