"""kill -9 of real rfstore processes in every writing stage, then reruns: the store of one clean run.

Each backend gets a chain of ``rfstore run`` processes on the same store; each is
killed (SIGKILL) in the next stage (activations, topk, occlude, rf, segment) as
soon as the store's trace (:mod:`support.faults`, installed in the child process)
shows that stage writing; a last run finishes. The whole store (every array, bit
for bit, and every attribute except timestamps and run tokens) must equal an
uninterrupted run's.

The runs of the fast test are processes of their own running rfstore's console
entry point (:func:`rfstore.cli.main`), forked from a server process that has
imported rfstore, torch and torchvision once: the ``rfstore`` script would spend
5 to 15 s importing them for each of the 14 runs. The slow randomized test
(random stage, random moment, no pauses) runs ``tests/support/launch.py`` (the
``rfstore`` command with the test hooks) as a process of its own each time.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import TESTS, write_tiny_folder
from support import faults
from support.stores import assert_same_store, store_contents

SLOW_NET = f"{TESTS / 'tiny_nets.py'}:slow_hand_cnn"
NETWORK = "slow_hand_cnn"
LAYERS = ("net.1", "net.4")
RUN_OPTIONS = ["--batch-size", "2", "--workers", "0", "--k", "3", "--size", "3", "--stride", "2",
               "--fill", "zero", "--device", "cpu"]
KILL_POINTS = [  # (stage, trace line that shows it writing, kill at its n-th occurrence)
    ("activations", f"write {NETWORK}/_rfstore/activations/done", 2),  # block 0 committed, block 1 flagged
    ("topk", f"create_array {NETWORK}/{LAYERS[0]}/topk_value", 1),
    ("occlude", f"write {NETWORK}/_rfstore/occlude/{LAYERS[0]}/done", 1),
    ("rf", f"write {NETWORK}/{LAYERS[0]}/rf_map", 1),
    ("segment", f"write {NETWORK}/{LAYERS[0]}/seg_mask", 1),
]


#: the ``rfstore`` command with the test hooks that the environment asks for installed
LAUNCH = [sys.executable, str(TESTS / "support" / "launch.py")]


def run_env(tmp: Path, trace: Path | None = None, delay: float = 0.0) -> dict[str, str]:
    """The environment of an rfstore child process: traced (:mod:`support.faults`) when ``trace`` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RFSTORE_TEST_", "RFSTORE_DEBUG"))}
    env |= {"RFSTORE_IMAGE_BLOCK": "4", "OMP_NUM_THREADS": "1"}
    return env | faults.env(trace, delay)


def run_args(store: Path, folder: Path) -> list[str]:
    """The arguments of one ``rfstore run`` of the chain (without the program)."""
    return ["run", str(store), "--model", SLOW_NET, "--data", str(folder), "--preprocess", "tensor",
            "--layers", ",".join(LAYERS), *RUN_OPTIONS]


def run_command(store: Path, folder: Path) -> list[str]:
    return [*LAUNCH, *run_args(store, folder)]


SERVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])  # tests/, for support.faults
import torch, torchvision  # noqa: F401 - imported once, before any fork
import rfstore.cli
from rfstore.pipeline.stages import activations, init, occlude, rf, segment, topk  # noqa: F401
from support import faults
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: an rfstore process of its own, as if started from the rfstore script
        code = 1
        try:
            os.environ.clear()
            os.environ.update(request["env"])
            faults.install_from_env()  # the test hooks live in the child, never in rfstore itself
            os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.argv = ["rfstore", *request["argv"]]
            rfstore.cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkServer:
    """Starts rfstore processes (forks of one process that imported everything) one at a time; each child
    installs the test hooks its environment asks for (:func:`support.faults.install_from_env`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(TESTS)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, argv: list[str], env: dict[str, str], stderr: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "stderr": str(stderr)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def kill_when(start: Any, trace: Path, marker: str | None, nth: int = 1, timeout: float = 300) -> None:
    """Call ``start()`` (which starts a process and gives its PID, or a Popen); SIGKILL the process once
    ``marker`` has appeared ``nth`` times in ``trace`` (or once the trace has ``nth`` lines, for
    ``marker=None``) unless it ended before."""
    trace.unlink(missing_ok=True)
    started = start()
    pid = started if isinstance(started, int) else started.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (isinstance(started, int) or started.poll() is None):
        lines = trace.read_text().splitlines() if trace.exists() else []
        seen = len(lines) if marker is None else sum(line == marker for line in lines)
        if seen >= nth:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.005)


def forked_run(server: ForkServer, store: Path, folder: Path, env: dict[str, str], stderr: Path) -> int:
    """One ``rfstore run`` to its end; its exit code."""
    server.start(run_args(store, folder), env, stderr)
    return server.wait()


def kill_chain(server: ForkServer, tmp: Path, folder: Path, suffix: str) -> dict[str, str]:
    """Kill a run in each writing stage in turn, then let one finish; the stderr of each run."""
    store, trace, log = tmp / f"killed.{suffix}", tmp / f"trace-{suffix}.txt", {}
    env = run_env(tmp, trace, delay=0.01)
    for stage, marker, nth in KILL_POINTS:
        stderr = tmp / f"{suffix}-{stage}.err"
        kill_when(lambda: server.start(run_args(store, folder), env, stderr), trace, marker, nth)
        status = server.wait()
        log[stage] = stderr.read_text()
        assert status == -signal.SIGKILL, f"{suffix}: the run meant to be killed in {stage} ended by itself: {log[stage]}"
    assert forked_run(server, store, folder, run_env(tmp), tmp / f"{suffix}-final.err") == 0
    log["final"] = (tmp / f"{suffix}-final.err").read_text()
    return log


def test_kill_9_in_every_stage_then_rerun_gives_the_clean_store(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "images", n_per_class=12)
    server = ForkServer(run_env(tmp_path))
    try:
        for suffix in ("zarr", "h5"):
            reference = tmp_path / f"reference.{suffix}"
            assert forked_run(server, reference, folder, run_env(tmp_path), tmp_path / "ref.err") == 0, \
                (tmp_path / "ref.err").read_text()
            log = kill_chain(server, tmp_path, folder, suffix)
            # the run killed in topk had resumed activations, not started them over
            resumed = log["topk"].split("activations: ")[1].split()[0]
            assert 0 < int(resumed) < 24, log["topk"]
            assert "error" not in log["final"].lower(), log["final"]
            assert_same_store(reference, tmp_path / f"killed.{suffix}")
    finally:
        server.close()
    assert not (tmp_path / "killed.h5-journal").exists()
    zarr, h5 = store_contents(tmp_path / "killed.zarr"), store_contents(tmp_path / "killed.h5")
    for layer in LAYERS:  # and both backends computed the same numbers
        for name in ("act_max", "topk_image", "discrepancy", "rf_map", "seg_mask"):
            key = f"{NETWORK}/{layer}/{name}"
            assert zarr[key] == h5[key], key


def reference_store(tmp: Path, folder: Path, suffix: str) -> Path:
    store = tmp / f"reference.{suffix}"
    done = subprocess.run(run_command(store, folder), env=run_env(tmp), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return store


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_kill_9_at_random_moments_many_times(tmp_path: Path, suffix: str) -> None:
    """The rfstore command, killed 1 to 3 times per round at random moments (any stage, no pauses)."""
    rng = random.Random(f"kill-{suffix}")
    folder = write_tiny_folder(tmp_path / "images", n_per_class=12)
    reference = reference_store(tmp_path, folder, suffix)
    # how many store changes a whole run makes, to spread the kills over every stage
    count = tmp_path / "count"
    subprocess.run(run_command(tmp_path / f"count.{suffix}", folder), env=run_env(tmp_path, count),
                   check=True, capture_output=True, timeout=600)
    total = len(count.read_text().splitlines())
    trace, kills = tmp_path / "trace.txt", 0
    for round_ in range(5):
        store = tmp_path / f"killed{round_}.{suffix}"
        for _ in range(rng.randint(1, 3)):
            def start() -> subprocess.Popen:
                return subprocess.Popen(run_command(store, folder), env=run_env(tmp_path, trace),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            proc: list[subprocess.Popen] = []
            kill_when(lambda: proc.append(start()) or proc[0], trace, None, nth=rng.randrange(1, total))
            proc[0].wait(timeout=600)
            assert proc[0].returncode in (0, -signal.SIGKILL), proc[0].stderr.read()
            kills += proc[0].returncode == -signal.SIGKILL
        done = subprocess.run(run_command(store, folder), env=run_env(tmp_path), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert_same_store(reference, store)
    assert kills >= 5
