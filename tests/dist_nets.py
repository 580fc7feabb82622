"""Networks for the distributed tests, loadable by Dask workers as ``--model tests/dist_nets.py:NAME``.

``kill_once_alexnet``: the demo's :class:`~rfstore.demo.network.TinyAlexNet` (same
parameters for the same seed) whose first layer SIGKILLs the Dask worker process
running it when the file named by ``$RFSTORE_TEST_KILL_ARM`` exists. The file is
renamed to ``<name>.fired`` first (an atomic rename, so one arming kills exactly
one worker, and the task's retry runs normally). Outside a Dask worker it never
kills, so the test process itself can use it.
"""
from __future__ import annotations

import os
import signal

from torch import nn

from rfstore.demo.network import TinyAlexNet


def _kill_if_armed(module: nn.Module, args: object) -> None:
    arm = os.environ.get("RFSTORE_TEST_KILL_ARM")
    if not arm or not os.path.exists(arm):
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # not inside a Dask worker
    try:
        os.rename(arm, arm + ".fired")
    except FileNotFoundError:
        return  # another worker fired first
    os.kill(os.getpid(), signal.SIGKILL)


def kill_once_alexnet() -> nn.Module:
    model = TinyAlexNet()
    model.features[0].register_forward_pre_hook(_kill_if_armed)
    return model
