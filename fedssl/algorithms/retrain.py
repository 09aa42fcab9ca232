"""Retrain on everything: the upper bound of an incremental run ([stream]), on FixMatch's loss.

Each client keeps every sample it has received (the runtime's ``all`` buffer policy:
unbounded, ``stream.buffer`` does not apply) and trains on all of it each round, so its
memory and its per-stage compute grow with the number of stages. Both are reported
(``stream.client_peak_bytes``, ``stream.max_peak_bytes`` and
``stream.passes_per_stage_mean`` in summary.json): this is the cost the
bounded-memory methods avoid. With ``client.local_epochs`` the steps per round grow with
the data; with ``client.local_steps`` they do not, and the comparison is at equal compute.
"""

from __future__ import annotations

from fedssl.algorithms.base import register
from fedssl.algorithms.fixmatch import FixMatch


@register("retrain")
class Retrain(FixMatch):
    replay = "all"
