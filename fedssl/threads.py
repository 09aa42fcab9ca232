"""Torch's intra-op thread count, pinned where the server computes model bits.

Float reductions split over threads sum in a thread-count-dependent order, so a step
run on 2 threads and on 16 gives different bits. The clients pin theirs to
``federation.num_cpus`` (client/runtime.py); the server's own model updates (the
labels-at-server step, FedoSSL's global clustering) run here on one thread, so a seed
gives the same model on any machine and under any ``OMP_NUM_THREADS``. Their tensors
are small (a batch of 32 through the CNN; [a few hundred, D] x [D, K]), so extra
threads only add synchronisation: next to busy Ray workers their spin-waits made
FedoSSL's 500 clustering steps 14x slower (2.8 s vs 40 s on 2 cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the caller's count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
