"""Helpers shared by the CAM-stage benchmarks: config composition, a small classifier to benchmark with,
child processes that report one JSON result, peak-memory sampling and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from vwl_lightning.utils.config import config_dir

RESULT_PREFIX = "RESULT "
REPO_ROOT = Path(__file__).resolve().parents[1]
# the embedded benchmark's images (112 px) and classifier, quiet; the data-set size is set per call
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def data_overrides(cache: Path, num_train: int) -> list[str]:
    """The default synthetic data set with ``num_train`` training images (and a token validation split)."""
    return [f"paths.cache_dir={cache}", f"data.source.generator.num_train={num_train}",
            "data.source.generator.num_val=16"]


def compose_cfg(overrides: Sequence[str], run_dir: Path) -> DictConfig:
    """The project's real config with ``overrides``; ``run_dir`` stands in for Hydra's output folder."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*QUIET, *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def ensure_checkpoint(work: Path, checkpoint: str | None, num_train: int, steps: int) -> Path:
    """``checkpoint`` if given, else a default synthetic classifier trained for ``steps`` steps in ``work``
    (reused by later runs)."""
    if checkpoint:
        return Path(checkpoint)
    from vwl_lightning.stages.train_classifier import train_classifier

    cfg = compose_cfg([*data_overrides(work / "cache", num_train), "model.max_epochs=1",
                       f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0"], work / "train")
    return train_classifier(cfg)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, and time stolen by the hypervisor)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_env() -> dict[str, str]:
    """The environment for ``python -m bench.<script>`` children: the repository root on PYTHONPATH, so they
    import ``bench`` whatever their working folder."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *([path] if path else [])])}


def run_child(module: str, args: Sequence[str], timeout: int = 1800) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh interpreter and return the JSON it printed after ``RESULT``,
    with ``others_cpu_share``: the share of the machine's CPU time that other processes used meanwhile
    (0 on an idle machine; a measurement with a large share is not to be trusted)."""
    busy, own, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env())
    wall = time.perf_counter() - start
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - own)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["others_cpu_share"] = max(0.0, others / (wall * (os.cpu_count() or 1)))
    return result


def wait_until_idle(max_share: float = 0.05, window: float = 5.0, timeout: float = 3600.0) -> float:
    """Block until the machine's CPUs are less than ``max_share`` busy over ``window`` seconds (other
    engineers share this machine); return the last share seen (also when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        busy, start = busy_cpu_seconds(), time.perf_counter()
        time.sleep(window)
        share = (busy_cpu_seconds() - busy) / ((time.perf_counter() - start) * (os.cpu_count() or 1))
        if share < max_share or time.monotonic() > deadline:
            return share


def run_clean(module: str, args: Sequence[str], max_share: float = 0.05, attempts: int = 8,
              timeout: int = 900) -> dict[str, Any]:
    """:func:`run_child` on an idle machine: wait for idle, run, and run again if other processes took more
    than ``max_share`` of the CPUs meanwhile (or the run timed out); the result notes the attempts and
    ``disturbed`` if no attempt was clean."""
    result: dict[str, Any] = {}
    for attempt in range(1, attempts + 1):
        wait_until_idle(max_share)
        try:
            result = run_child(module, args, timeout)
        except subprocess.TimeoutExpired:
            continue
        result["attempts"] = attempt
        if result["others_cpu_share"] < max_share:
            return result
    if not result:
        raise RuntimeError(f"{module} {' '.join(args)}: every attempt timed out")
    result["disturbed"] = True
    return result


def emit(result: dict[str, Any]) -> None:
    """Print a child's result for :func:`run_child`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


class PeakMemory:
    """Peak resident memory while the block runs: the process and all its children (DataLoader or pool
    workers) summed, sampled every ``interval`` s by a thread; also the kernel's exact peak of this process.

    Measure in a fresh process: ``ru_maxrss`` is the peak since the process started.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_tree = 0
        self._window_self = 0  # peak RSS of this process since the last take_self_peak_mib()
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            own = self._me.memory_info().rss
            total = own
            for child in self._me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_tree = max(self.peak_tree, total)
            self._window_self = max(self._window_self, own)
            time.sleep(self.interval)

    def take_self_peak_mib(self) -> float:
        """Sampled peak RSS of this process since the previous call (e.g. per batch), in MiB."""
        peak, self._window_self = max(self._window_self, self._me.memory_info().rss), 0
        return peak / 2**20

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_tree_mib(self) -> float:
        return self.peak_tree / 2**20

    @staticmethod
    def peak_self_mib() -> float:
        """``ru_maxrss`` of this process (KiB on Linux) in MiB."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """nproc, CPU model, load averages, Python/torch versions and torch's thread count."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in text)
    return {"nproc": os.cpu_count(), "cpu": model, "cpu_flags": flags,
            "load_avg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['nproc']} CPUs ({info['cpu']}; {info['cpu_flags']}), load average {info['load_avg']}, "
            f"Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads)")
