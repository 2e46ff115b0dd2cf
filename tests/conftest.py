"""Shared test helpers: compose the real Hydra config with small overrides, and a shared data cache."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from vwl_lightning.utils.config import config_dir

# the embedded benchmark at test size (conf/debug/tiny.yaml): tiny images, a few dozen of them, materialised
# once per session; one epoch, small networks, no logger
TINY = "debug=tiny"
# model=efficientnet_lite0 at test size: its trunk takes none of the narrow ResNet's channels
LITE0 = ("model=efficientnet_lite0", "~model.backbone.model_kwargs.channels")


# the unit tier (`make test-fast`): the test folders of single parts; a test there that trains for real or starts
# a subprocess is marked `integration` (or `slow`) by hand and leaves the tier
UNIT_DIRS = ("models", "cam", "pseudo", "evaluation", "utils", "data")
SLOW_TIMEOUT_S = 1800  # pytest-timeout for `slow` tests (the default, pyproject's `timeout`, is 300 s)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration`` (by its folder, unless it carries either marker already)
    and give ``slow`` tests a longer timeout."""
    root = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        unit = len(parts) > 1 and parts[0] in UNIT_DIRS and not item.get_closest_marker("slow")
        item.add_marker(pytest.mark.unit if unit else pytest.mark.integration)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the synthetic data of the whole test session."""
    path = tmp_path_factory.mktemp("vwl_cache")
    os.environ["VWL_CACHE_DIR"] = str(path)
    return path


def compose_config(overrides: Sequence[str], run_dir: Path, cache: Path) -> DictConfig:
    """The project's real config with ``overrides``; ``run_dir`` replaces Hydra's runtime folder."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, f"paths.cache_dir={cache}"])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path, cache_dir: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, tiny=True)``: a composed config (``debug=tiny`` unless ``tiny=False``) whose
    run_dir is this test's tmp_path."""

    def factory(*overrides: str, tiny: bool = True, run_dir: Path | None = None) -> DictConfig:
        base = [TINY] if tiny else []
        return compose_config([*base, *overrides], run_dir or tmp_path / "run", cache_dir)

    return factory


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    tiny networks gain nothing from more, and on a shared 2-core machine OpenMP threads of several
    processes spin against each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SimpleNamespace:
    """The whole pipeline (classifier -> CAMs -> seeds -> pseudo masks -> segmenter) once per test session at
    ``debug=tiny``, in-process as ``python -m vwl_lightning debug=tiny`` runs it: ``cfg``, ``run_dir``,
    ``headline`` (results.json) and ``cache``. Shared by every test that reads a finished run: read only; a test
    that changes the run works on a copy (``shutil.copytree(tiny_pipeline.run_dir, tmp_path / "run")``)."""
    from vwl_lightning.stages.pipeline import run

    run_dir = tmp_path_factory.mktemp("tiny_pipeline") / "run"
    cfg = compose_config([TINY], run_dir, cache_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread: the tiny networks gain nothing from more
    try:
        headline = run(cfg)
    finally:
        torch.set_num_threads(previous)
    return SimpleNamespace(cfg=cfg, run_dir=run_dir, headline=headline, cache=cache_dir)


def wait_for(done: Callable[[], bool], proc: subprocess.Popen, log: Path | None = None, timeout: float = 300,
             what: str = "the event") -> None:
    """Poll ``done()`` until it holds while ``proc`` runs; fail (with the end of ``log``) if the process exits
    first or ``timeout`` seconds pass. For the tests that kill a process at a known point of its run."""
    deadline = time.monotonic() + timeout
    while not done():
        tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
        assert proc.poll() is None, f"the process exited ({proc.returncode}) before {what}:\n{tail}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{tail}"
        time.sleep(0.02)


def logged(log: Path, text: str) -> Callable[[], bool]:
    """``wait_for`` condition: ``text`` appears in the log file ``log``."""
    return lambda: log.is_file() and text in log.read_text()
