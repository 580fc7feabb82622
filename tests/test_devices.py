"""Device choice, float32 exactness on CUDA (TF32 off), and the memory format rule."""
from __future__ import annotations

import torch

from rfstore.pipeline.devices import channels_last_for, exact_float32


def test_tf32_is_off_inside_and_restored_after() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_float32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_memory_format_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert channels_last_for(cpu, "auto") and not channels_last_for(cuda, "auto")
    assert channels_last_for(cuda, "channels_last") and not channels_last_for(cpu, "contiguous")
