"""The machine a run happened on: package versions, CPUs, memory and load.

Why in every result: a figure is only comparable with another taken on the same software and
hardware, and a loaded machine explains an outlier.
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, mod in (
        ("framestream", "framestream"),
        ("torch", "torch"),
        ("torchcodec", "torchcodec"),
        ("av", "av"),
        ("numpy", "numpy"),
        ("pyarrow", "pyarrow"),
        ("fsspec", "fsspec"),
        ("opencv", "cv2"),
    ):
        try:
            out[name] = str(__import__(mod).__version__)
        except Exception:  # missing or broken optional package: say so, do not fail
            out[name] = None
    from framestream.decode.planar import backend

    out["deinterleave"] = backend()  # HWC->CHW copies: opencv (SIMD) or numpy
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
    }


def load_avg() -> str | None:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None
