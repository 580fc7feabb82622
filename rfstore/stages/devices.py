"""Choosing the torch device for a stage (``--device auto|cpu|cuda|mps``)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rfstore.errors import RfstoreError


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` CPU threads inside the block, the previous count restored after.

    One thread makes every CPU kernel add in a fixed order (bit-for-bit repeatable
    training), and is faster for tiny networks and drawing, whose small ops cost
    more in thread hand-offs than they gain.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if present, else Apple's MPS, else the CPU; other names are checked."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RfstoreError(f"--device {name}: no CUDA device is available here (try --device auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RfstoreError("--device mps: Apple's MPS backend is not available here (try --device auto or cpu)")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise RfstoreError(f"--device {name}: choose auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)
