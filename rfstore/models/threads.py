"""torch's CPU thread count for a block of code."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
