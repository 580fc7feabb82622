"""One writer per store (--wait, readers never blocked), a full disk, and the store's security rules.

Real processes where processes matter (the lock), the CLI in-process elsewhere
(same code path from argument parsing to exit code, without seconds of imports).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HAND_CNN, write_tiny_folder
from test_cli import RFSTORE

from rfstore.cli import app
from rfstore.store import layout, open_store
from support.faults import Faults
from support.stores import assert_same_store

REPO = Path(__file__).resolve().parents[1]
INIT = ["--model", HAND_CNN, "--preprocess", "tensor", "--layers", "1,4", "--name", "hand"]


def cli(*args: str) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, stdout and stderr)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


def initialised(tmp_path: Path, suffix: str, folder: Path | None = None, name: str = "s") -> Path:
    folder = folder or write_tiny_folder(tmp_path / "images", n_per_class=6)
    store = tmp_path / f"{name}.{suffix}"
    code, err = cli("init", str(store), "--data", str(folder), *INIT)
    assert code == 0, err
    return store


# ----------------------------------------------------------------------------- one writer
HOLDER = """
import sys, time, pathlib
from rfstore.store import open_store
with open_store(sys.argv[1], "a"):
    print("locked", flush=True)
    while not pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""

READER = """
import sys
import rfstore
from rfstore.store import open_store
results = rfstore.open(sys.argv[1])
print(float(results["hand"]["1"]["act_max"].sum()))
with open_store(sys.argv[1], "r") as store:
    print(store.read("hand/1/act_max").shape)
"""


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_second_writer_is_refused_or_waits_and_readers_are_never_blocked(tmp_path: Path, suffix: str) -> None:
    store = initialised(tmp_path, suffix)
    assert cli("activations", str(store), "--workers", "0")[0] == 0
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFSTORE_")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(release)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # all at once: a second writer, one queued with --wait, and two readers
        def start(*command: str) -> subprocess.Popen:
            return subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)

        refused = start(RFSTORE, "topk", str(store))
        waiting = start(RFSTORE, "topk", str(store), "--k", "2", "--wait")
        readers = [start(RFSTORE, "status", str(store)), start(sys.executable, "-c", READER, str(store))]
        assert refused.wait(timeout=120) == 1
        message = refused.stderr.read()
        assert f"in use by process {holder.pid} on {socket.gethostname()}" in message
        assert message.count("\n") == 1  # one sentence, no traceback
        for reader in readers:  # while a writer holds the store, and another waits for it
            assert reader.wait(timeout=120) == 0, reader.stderr.read()
        assert "hand" in readers[0].stdout.read() and "(12, 2)" in readers[1].stdout.read()
        assert "waiting for it to finish" in waiting.stderr.readline()
        assert waiting.poll() is None  # still queued behind the holder
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert waiting.wait(timeout=120) == 0, waiting.stderr.read()
    with open_store(store, "r") as st:
        assert st.read("hand/1/topk_image").shape == (2, 2)


# ----------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_full_disk_stops_with_one_sentence_and_the_rerun_resumes(tmp_path: Path, suffix: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected at the store's write layer (:mod:`support.faults`) half-way through activations."""
    monkeypatch.setattr(layout, "IMAGE_BLOCK", 2)
    folder = write_tiny_folder(tmp_path / "images", n_per_class=6)
    reference = initialised(tmp_path, suffix, folder, name="reference")
    store = initialised(tmp_path, suffix, folder, name="full")
    with Faults(enospc_after=10**15) as counting:  # no limit: count what activations writes
        assert cli("activations", str(reference), "--workers", "0")[0] == 0
    needed = counting.written
    options = ["--workers", "0", "--k", "2", "--size", "3", "--fill", "zero", "--device", "cpu"]
    assert cli("run", str(reference), *options)[0] == 0

    with Faults(enospc_after=needed // 2):
        code, err = cli("run", str(store), *options)
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"error: no space left on device while writing {store}; finished work "
                                            f"is kept: free some space and rerun the same command to resume"), err
    with open_store(store, "r") as st:  # what was finished is readable
        done = st.read("hand/_rfstore/activations/done")
    assert 0 < done.sum() < len(done)
    code, err = cli("run", str(store), *options)  # space freed: the hooks are gone
    assert code == 0, err
    assert 0 < int(err.split("activations: ")[1].split()[0]) < 12  # resumed, not started over
    assert_same_store(reference, store)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize(("suffix", "room"), [("zarr", 150), ("h5", 72)])
def test_real_full_disk_on_a_small_tmpfs(tmp_path: Path, suffix: str, room: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's own ENOSPC: a 1 MiB tmpfs filled with ballast but ``room`` KiB (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        monkeypatch.setattr(layout, "IMAGE_BLOCK", 2)
        folder = write_tiny_folder(tmp_path / "images", n_per_class=6)
        reference = initialised(tmp_path, suffix, folder, name="reference")
        assert cli("activations", str(reference), "--workers", "0")[0] == 0
        store = initialised(disk, suffix, folder, name="full")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (free - (room << 10)))
        code, err = cli("activations", str(store), "--workers", "0")
        assert code == 1
        assert err.strip().splitlines()[-1] == (f"error: no space left on device while writing {store}; finished "
                                                f"work is kept: free some space and rerun the same command to "
                                                f"resume"), err
        with open_store(store, "r") as st:
            assert st.read("hand/_rfstore/activations/done").sum() < 6
        ballast.unlink()  # space freed
        code, err = cli("activations", str(store), "--workers", "0")
        assert code == 0, err
        assert_same_store(reference, store)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ----------------------------------------------------------------------------- security
def test_no_store_data_is_ever_unpickled_or_executed() -> None:
    """grep the package: the one unpickling call is the --trust-pickle model loader."""
    sources = {path: path.read_text() for path in (REPO / "rfstore").rglob("*.py")}
    for path, text in sources.items():
        code = re.sub(r"(?s)\"\"\".*?\"\"\"|#.*", "", text)  # docstrings and comments aside
        assert not re.search(r"\bimport pickle\b|\bpickle\.loads?\(|allow_pickle\s*=\s*True|\bmarshal\b", code), path
        assert not re.search(r"(?<![.\w])(eval|exec)\(", code), path
        for match in re.finditer(r"torch\.load\(([^)]*)\)", code):
            if "weights_only=False" in match.group(1):
                assert path.name == "_custom.py" and "def load_pickle" in text, path
            else:
                assert "weights_only=True" in match.group(1), (path, match.group(0))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "a/../../outside.png"])
def test_store_with_an_image_path_outside_the_dataset_is_refused(tmp_path: Path, bad: str) -> None:
    store = initialised(tmp_path, "zarr")
    with open_store(store, "a") as st:
        paths = st.read("hand/image_path")
        paths[3] = bad
        st.write("hand/image_path", slice(None), paths)
    code, err = cli("activations", str(store), "--workers", "0")
    assert code == 1
    assert f"image path {bad!r} is not a relative path inside the dataset root; refusing to read it" in err


def test_symlink_planted_after_init_is_not_followed_out_of_the_root(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=6)
    store = initialised(tmp_path, "h5", folder)
    secret = tmp_path / "secret.png"
    shutil.copy(folder / "a" / "img00.png", secret)
    (folder / "a" / "img01.png").unlink()
    (folder / "a" / "img01.png").symlink_to(secret)
    assert cli("activations", str(store), "--workers", "0")[0] == 0
    with open_store(store, "r") as st:
        errors = st.read("hand/image_error")
        assert errors[1] == "symlink to outside the root folder" and not errors[0]
        assert np.isnan(st.read("hand/1/act_max")[1]).all()


def test_pickled_model_is_reloaded_only_if_it_is_the_file_trusted_at_init(tmp_path: Path) -> None:
    import torch

    from tiny_nets import hand_cnn

    model_file = tmp_path / "model.pt"
    torch.save(hand_cnn(), model_file)
    folder = write_tiny_folder(tmp_path / "images", n_per_class=3)
    store = tmp_path / "s.zarr"
    base = ["init", str(store), "--data", str(folder), "--model", f"pickle:{model_file}", "--preprocess", "tensor",
            "--layers", "1"]
    code, err = cli(*base)
    assert code == 1 and "--trust-pickle" in err
    assert cli(*base, "--trust-pickle")[0] == 0
    other = hand_cnn()
    other[0].bias.data += 1
    torch.save(other, model_file)  # swapped behind the store's back
    code, err = cli("activations", str(store), "--workers", "0")
    assert code == 1 and "refusing to unpickle" in err and "not that of the file trusted at init" in err
