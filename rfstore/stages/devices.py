"""Choosing the torch device for a stage (``--device auto|cpu|cuda|mps``)."""
from __future__ import annotations

import torch

from rfstore.errors import RfstoreError


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
