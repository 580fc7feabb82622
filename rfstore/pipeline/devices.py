"""Choosing the torch device for a stage (``--device auto|cpu|cuda|mps``)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rfstore.errors import UsageError


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
        raise UsageError(f"{name}: no CUDA device is available here (try auto or cpu)", "device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("mps: Apple's MPS backend is not available here (try auto or cpu)", "device")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise UsageError(f"{name}: choose auto, cpu, cuda, cuda:N or mps", "device")
    return torch.device(name)


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 stays float32 inside the block: no TF32 in CUDA's convolutions and matmuls.

    PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere
    and later GPUs, which moves activations by ~1e-3 relative; rfstore's results are
    float32-exact, so its stages turn it off (and restore the settings after).
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def channels_last_for(device: torch.device, requested: str) -> bool:
    """Whether a stage asked for memory format ``requested`` (auto, channels_last or
    contiguous) runs its 4-d tensors channels_last on ``device``: auto means on the
    CPU only, where oneDNN's convolutions are faster in it."""
    if requested == "auto":
        return device.type == "cpu"
    return requested == "channels_last"
