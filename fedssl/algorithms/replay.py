"""Experience replay with a reservoir buffer (Chaudhry et al., 2019, "On Tiny Episodic
Memories in Continual Learning"; reservoir sampling: Vitter, 1985), on FixMatch's loss.

For incremental runs ([stream]). The client runtime keeps at most ``stream.buffer`` raw
samples of the client's past stages, drawn by reservoir sampling over every sample it
has received (labeled ones keep their label); each round the client trains with
FixMatch's loss on its current stage's shard plus the buffer: buffered labeled samples
join the labeled batches, unlabeled ones the unlabeled batches. The algorithm declares
the policy; the bound is the runtime's (``fedssl.stream.memory``).
"""

from __future__ import annotations

from fedssl.algorithms.base import register
from fedssl.algorithms.fixmatch import FixMatch


@register("replay")
class Replay(FixMatch):
    replay = "reservoir"
