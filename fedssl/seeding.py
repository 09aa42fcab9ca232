"""Seeds derived from the run seed and a purpose, so that every random draw of a run
(initial model, client sampling, faults, a client's batches in a round) is
reproducible on its own, whatever ran before it. No torch here: the server's
sampling and the config tools use it too."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
