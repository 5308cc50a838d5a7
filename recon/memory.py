"""Memory the machine has for us (ground floor): what is available now, and the one refusal
message when something would need more. Readers use it to refuse absurd sizes declared in file
headers before allocating; pipelines use it for their peak-memory estimates."""

from __future__ import annotations

from pathlib import Path

from recon.errors import InputError

__all__ = ["available_bytes", "check_fits", "format_bytes"]


def available_bytes() -> int:
    """Memory available to a new allocation without swapping: ``MemAvailable`` of
    ``/proc/meminfo`` (psutil's ``available`` elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(needed_bytes: float, where: str | Path, what: str, advice: str = "") -> None:
    """Raise :class:`InputError` when ``needed_bytes`` exceed the memory available now."""
    free = available_bytes()
    if needed_bytes > free:
        tail = f"; {advice}" if advice else ""
        raise InputError(where, f"{what} needs {format_bytes(needed_bytes)} but only {format_bytes(free)} of memory is available{tail}")
