"""The command line through its real entry point (the installed ``rfstore`` script)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAND_CNN

RFSTORE = shutil.which("rfstore", path=str(Path(sys.executable).parent)) or "rfstore"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RFSTORE_DEBUG"}
    return subprocess.run([RFSTORE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_on_every_command() -> None:
    commands = ["init", "activations", "topk", "occlude", "rf", "segment", "validate", "status", "run",
                "rf-theory", "demo", "dissect", "report", "show", "compare"]
    top = cli("--help")
    assert top.returncode == 0
    for command in commands:
        assert command in top.stdout
        result = cli(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage" in result.stdout


def test_init_activations_topk_status_validate(tmp_path: Path, tiny_folder: Path) -> None:
    store = tmp_path / "s.h5"
    common = ["--model", HAND_CNN, "--data", str(tiny_folder), "--preprocess", "tensor", "--layers", "0,1,6"]
    first = cli("init", str(store), *common)
    assert first.returncode == 0, first.stderr
    assert "10 images, 3 layers" in first.stderr
    again = cli("init", str(store), *common)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    acts = cli("activations", str(store), "--workers", "0")
    assert acts.returncode == 0, acts.stderr
    assert "10 images processed" in acts.stderr
    top = cli("topk", str(store), "--k", "3")
    assert top.returncode == 0, top.stderr
    clash = cli("topk", str(store), "--k", "4")
    assert clash.returncode == 1
    first, last = clash.stderr.splitlines()[0], clash.stderr.splitlines()[-1]
    assert "the factory's weights, seed 0" in first  # every run of a stage says which weights it uses
    assert last.startswith("error: ") and "--force" in last and "Traceback" not in clash.stderr
    status = cli("status", str(store))
    assert status.returncode == 0, status.stderr
    assert "activations: complete" in status.stdout and "network hand" in status.stdout
    validate = cli("validate", str(store), "--class-map", "a=0,b=1", "--workers", "0")
    assert validate.returncode == 0, validate.stderr
    assert "accuracy" in validate.stdout and "confusion" in validate.stdout


def test_exit_codes_and_one_line_errors(tmp_path: Path, tiny_folder: Path) -> None:
    usage = cli("init", str(tmp_path / "s.zarr"))  # --model and --data missing
    assert usage.returncode == 2
    assert cli("topk", str(tmp_path / "s.zarr"), "--k", "0").returncode == 2
    missing = cli("init", str(tmp_path / "s.zarr"), "--model", HAND_CNN, "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "not a directory" in missing.stderr
    bad_suffix = cli("status", str(tmp_path / "s.txt"))
    assert bad_suffix.returncode == 1 and ".zarr" in bad_suffix.stderr
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"not really a pickle")
    refused = cli("init", str(tmp_path / "p.zarr"), "--model", f"pickle:{pickled}", "--data", str(tiny_folder))
    assert refused.returncode == 1
    assert "--trust-pickle" in refused.stderr and "arbitrary code" in refused.stderr
    assert "Traceback" not in refused.stderr
    not_yet = cli("activations", str(tmp_path / "fresh.zarr"))
    assert not_yet.returncode == 1 and "rfstore init" in not_yet.stderr


def test_rf_theory_prints_alexnet_table() -> None:
    result = cli("rf-theory", "--model", "torchvision:alexnet", "--weights", "none")
    assert result.returncode == 0, result.stderr
    for size in ("11", "51", "99", "131", "163"):
        assert size in result.stdout


def test_offline_default_weights_give_a_clear_error(tmp_path: Path) -> None:
    env_home = tmp_path / "torch-home"
    result = subprocess.run([RFSTORE, "rf-theory", "--model", "torchvision:alexnet", "--weights", "DEFAULT"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TORCH_HOME": str(env_home)})
    assert result.returncode == 1
    assert "alexnet-owt" in result.stderr and str(env_home) in result.stderr
