"""Cold-start timestamps: with ``FEDSSL_TIMING=FILE`` set, each process of a run (the
driver and every Ray worker, which inherit the variable) appends one line per event
to FILE, ``<unix seconds> <pid> <event>``; ``python -m fedssl.timing FILE`` prints
them per process, relative to the driver's start. Unset, :func:`stamp` does nothing."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

ENV = "FEDSSL_TIMING"
_started: set[int] = set()


def stamp(event: str) -> None:
    """Append ``event`` (and, first time in this process, the process's start)."""
    path = os.environ.get(ENV)
    if not path:
        return
    lines = []
    if os.getpid() not in _started:  # a forked child starts its own record
        _started.add(os.getpid())
        import psutil  # Ray's dependency; only when timing

        lines.append(f"{psutil.Process().create_time():.4f} {os.getpid()} process start")
    lines.append(f"{time.time():.4f} {os.getpid()} {event}")
    with open(path, "a") as f:  # one write per call: lines of concurrent processes stay whole
        f.write("\n".join(lines) + "\n")


def breakdown(path: str) -> str:
    """The events of ``path``: per process, seconds since the first process started."""
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            stamp_s, pid, event = line.rstrip("\n").split(" ", 2)
            events[pid].append((float(stamp_s), event))
    t0 = min(t for evs in events.values() for t, _ in evs)
    out = []
    for pid, evs in sorted(events.items(), key=lambda kv: min(t for t, _ in kv[1])):
        out.append(f"pid {pid}")
        prev = None
        for t, event in sorted(evs):
            step = f"(+{t - prev:.2f})" if prev is not None else ""
            out.append(f"  {t - t0:7.2f} s {step:>9}  {event}")
            prev = t
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fedssl.timing FILE")
    try:
        print(breakdown(sys.argv[1]))
    except (OSError, ValueError) as e:  # a missing file, or lines not written by stamp()
        print(f"error: {sys.argv[1]}: not a FEDSSL_TIMING file ({e})", file=sys.stderr)
        sys.exit(2)
