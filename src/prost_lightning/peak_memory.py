"""Peak memory of one phase of a process (a fit, a benchmark child), not of the whole process.

A fit often runs inside a longer process (the demo collects and evaluates first; a test session
imports everything), so the process-wide high-water mark would report the largest earlier phase.
:func:`reset_peak` starts a new high-water mark: on CUDA through torch's peak statistics, on
Linux by writing ``5`` to ``/proc/self/clear_refs``, which resets ``VmHWM`` to the current
resident size. ``ru_maxrss`` is not used where ``/proc`` exists: it cannot be reset, and it
survives exec, so a child started from a big parent would report the parent's size.

torch is imported only for CUDA devices, so this module is cheap to import anywhere.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_HIGH_WATER_MARK = "5"


def _is_cuda(device) -> bool:
    return device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda"


def reset_peak(device=None) -> bool:
    """Start a new peak at the current usage; False where the platform cannot (the peak then
    counts from the process start)."""
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text(_RESET_HIGH_WATER_MARK)
        return True
    except OSError:
        return False


def peak_bytes(device=None) -> int:
    """Peak memory since the last :func:`reset_peak`: allocated GPU memory on CUDA, else resident memory."""
    if _is_cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device)
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
