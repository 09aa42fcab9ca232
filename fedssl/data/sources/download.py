"""Downloading a missing dataset copy with torchvision, only when a network answers
(``FEDSSL_NO_DOWNLOAD=1`` never tries)."""

from __future__ import annotations

import os
import socket
import threading


def network_available(host: str = "ossci-datasets.s3.amazonaws.com",
                       timeout: float = 3.0) -> bool:
    """True when ``host:443`` answers within ``timeout`` s (DNS included)."""
    if os.environ.get("FEDSSL_NO_DOWNLOAD", "").strip() not in ("", "0"):
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def download(what: str, fn) -> str | None:
    """Run a torchvision download; returns an error text instead of raising."""
    if not network_available():
        return "download skipped: no network or FEDSSL_NO_DOWNLOAD set"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30.0)  # torchvision's urlopen has no timeout
    try:
        fn()
        return None
    except Exception as e:  # noqa: BLE001 - any download failure becomes a DataError
        first = (str(e).splitlines() or [""])[0]
        return f"download of {what} failed: {type(e).__name__}: {first}"
    finally:
        socket.setdefaulttimeout(old)
