"""Shared helpers of the benchmarks (run as scripts: ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import sys


def resident_mb() -> float:
    """Current resident set size of this process, in MB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    """Peak resident set size of this process, in MB (VmHWM, else ru_maxrss).

    VmHWM is preferred because on Linux ``ru_maxrss`` can carry over the parent's
    resident size across fork/exec.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, kB on Linux
