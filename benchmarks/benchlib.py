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


def run_in_fresh_process(module: str, function: str, *args, env: dict | None = None, cwd=None) -> dict:
    """``module.function(*args)`` (JSON-able arguments and result) in a fresh Python process.

    Peak memory measured inside the child is its own; a failure prints the child's output tail.
    """
    import json
    import os
    import subprocess
    from pathlib import Path

    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); from {module} import {function}; "
        f"print('RESULT ' + json.dumps({function}(*json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"{module}.{function}{tuple(args)} failed")
    return json.loads(lines[-1][len("RESULT "):])
