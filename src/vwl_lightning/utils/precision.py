"""``precision: auto``: bf16 autocast where the hardware runs it fast, full fp32 elsewhere.

bf16 autocast only pays on hardware with native bf16 arithmetic: NVIDIA GPUs that support it
(``torch.cuda.is_bf16_supported()``) and CPUs with AVX-512 BF16 or AMX (flags ``avx512_bf16`` /
``amx_bf16`` in ``/proc/cpuinfo``); elsewhere it is emulated and slower than fp32. The accuracy cost of the
CAM step in bf16 is measured by ``bench/bench_cams.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vwl_lightning.errors import ConfigError

FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list AVX-512 BF16 or AMX-BF16 (False where ``cpuinfo`` does not exist)."""
    if not cpuinfo.is_file():
        return False
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in FAST_BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, accelerator: str, key: str = "cam.precision",
                      cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Lightning's precision string for ``precision`` (``auto`` resolved) on ``accelerator``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_fast_bf16(cpuinfo) else "32-true"
