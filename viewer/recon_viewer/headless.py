"""Headless Chromium for the viewer's browser tests and benchmark (``scripts/bench_viewer.py``).

Playwright cannot download its own browser on the project machines, so it drives Debian's
``chromium`` (``make install`` installs it) through ``executable_path``, with WebGL2 on the
CPU through SwiftShader. Playwright is a test dependency and is imported by the callers.
"""

from __future__ import annotations

import os
import shutil
import time

__all__ = ["CHROMIUM_ARGS", "chromium_path", "first_frame_ms", "wait_for"]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Flags that work on the project machines: no sandbox (root), WebGL2 on SwiftShader, and no
background traffic (the browser must not reach the network)."""


def chromium_path() -> str | None:
    """Debian's Chromium (or ``$CHROMIUM``), if installed."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def wait_for(page, expression: str, timeout: float = 90.0) -> bool:
    """Poll a JavaScript expression until it is truthy (the viewer's CSP forbids the ``eval``
    that Playwright's ``wait_for_function`` needs). Returns ``False`` on timeout."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def first_frame_ms(page, timeout: float = 180.0) -> float:
    """Milliseconds from navigation start to the viewer's first frame showing the model or
    volume (``window.__viewer.firstFrameMs``, set by the client)."""
    if not wait_for(page, "window.__viewer && window.__viewer.firstFrameMs !== null", timeout):
        raise TimeoutError(f"no first frame within {timeout:.0f} s")
    return float(page.evaluate("() => window.__viewer.firstFrameMs"))
