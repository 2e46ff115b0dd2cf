"""``precision: auto`` and the torch-free start-up of CRF pool workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.utils.precision import cpu_has_fast_bf16, resolve_precision

CPUINFO = "processor\t: {n}\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"


def cpuinfo(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(n=0, extra=extra) + CPUINFO.format(n=1, extra=extra))
    return path


@pytest.mark.parametrize(("extra", "expected"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                                 ("avx512vnni", False), ("", False)])
def test_cpu_bf16_flags(tmp_path: Path, extra: str, expected: bool) -> None:
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, extra)) is expected


def test_auto_on_cpu_follows_the_flags_and_explicit_values_pass_through(tmp_path: Path) -> None:
    assert resolve_precision("auto", "cpu", cpuinfo=cpuinfo(tmp_path, "avx512_bf16")) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", cpuinfo=cpuinfo(tmp_path, "avx2")) == "32-true"
    assert resolve_precision("auto", "cpu", cpuinfo=tmp_path / "missing") == "32-true"
    assert resolve_precision("32-true", "cpu", cpuinfo=cpuinfo(tmp_path, "avx512_bf16")) == "32-true"
    assert resolve_precision("bf16-mixed", "cpu", cpuinfo=cpuinfo(tmp_path, "")) == "bf16-mixed"


def test_auto_on_a_gpu_asks_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "gpu", cpuinfo=cpuinfo(tmp_path, "avx512_bf16")) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "auto", cpuinfo=cpuinfo(tmp_path, "")) == "bf16-mixed"


def test_unknown_precision_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cam\.precision must be one of .*'fp8'"):
        resolve_precision("fp8", "cpu")


def test_crf_pool_workers_do_not_import_torch() -> None:
    """A spawned CRF worker imports the pseudo-label module; without torch it starts in a fraction of the time."""
    code = "import sys, vwl_lightning.stages.make_pseudo_masks; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
