"""Shared test helpers: compose the real Hydra config with small overrides, and a shared data cache."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from vwl_lightning.utils.config import config_dir

# the embedded benchmark at test size: tiny images, a few dozen of them, materialised once per session
TINY_DATA = [
    "data.source.generator.num_train=48",
    "data.source.generator.num_val=16",
    "data.source.generator.image_size=64",
    "data.train_transform.resize_long=[56,72]",
    "data.train_transform.crop_size=64",
    "data.eval_size=64",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
]
QUIET_TRAINER = ["trainer.enable_progress_bar=false", "logger=none", "trainer.enable_model_summary=false"]


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
    """``make_config(*overrides, tiny=True)``: a composed config whose run_dir is this test's tmp_path."""

    def factory(*overrides: str, tiny: bool = True, run_dir: Path | None = None) -> DictConfig:
        base = [*TINY_DATA, *QUIET_TRAINER] if tiny else []
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
