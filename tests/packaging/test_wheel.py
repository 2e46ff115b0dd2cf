"""A built wheel ships the configs and runs: ``pip wheel . --no-deps``, ``pip install --target`` (the wheel's
own files, outside the source tree), then ``python -m vwl_lightning --help``, the composed default config and
the default pipeline (every stage, small settings) from that install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # builds a wheel (~1 min on 2 cores)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = sorted((root / "dist").glob("vwl_lightning-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(root / "site"),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)
    return wheel, root


def run_installed(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed copy first on the path, run from a folder with no source tree in it."""
    env = {**os.environ, "PYTHONPATH": str(root / "site")}
    work = root / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_holds_every_config_and_the_license(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("vwl_lightning/conf/", 1)[1] for n in names if "vwl_lightning/conf/" in n}
    source = {str(p.relative_to(REPO / "conf"))
              for p in (REPO / "conf").rglob("*.yaml")}
    assert source and source <= shipped, sorted(source - shipped)
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_runs_help_and_composes(installed: tuple[Path, Path]) -> None:
    _, root = installed
    where = run_installed(root, "-c", "import vwl_lightning; print(vwl_lightning.__file__)")
    assert where.stdout.strip().startswith(str(root / "site")), where.stdout + where.stderr
    result = run_installed(root, "-m", "vwl_lightning", "--help")
    assert result.returncode == 0, result.stderr
    assert "experiment: " in result.stdout and "python -m vwl_lightning -m +experiment" in result.stdout
    config = run_installed(root, "-m", "vwl_lightning", "--cfg", "job")
    assert config.returncode == 0, config.stderr
    assert "name: synthetic_vwl_l" in config.stdout and "pipeline:" in config.stdout
    paper = run_installed(root, "-m", "vwl_lightning", "--cfg", "job", "+experiment=voc_vwl_l")
    assert paper.returncode == 0, paper.stderr
    assert "name: voc_vwl_l" in paper.stdout and "_target_: vwl_lightning.models.pooling.HybridPooling" in paper.stdout


def test_installed_wheel_runs_the_default_pipeline_with_small_settings(installed: tuple[Path, Path]) -> None:
    _, root = installed
    small = ["data.source.generator.num_train=16", "data.source.generator.num_val=8",
             "data.source.generator.image_size=64", "data.train_transform.resize_long=[56,72]",
             "data.train_transform.crop_size=64", "data.eval_size=64", "data.batch_size=8", "data.num_workers=0",
             "model.max_epochs=1", "model.codebook.size=8", "model.backbone.model_kwargs.channels=[8,16,32,64]",
             "segmenter.max_epochs=1", "cam.scales=[1.0]", "cam.num_workers=0", "pseudo.num_workers=0",
             "logger=csv", "trainer.enable_progress_bar=false",
             f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"]
    result = run_installed(root, "-m", "vwl_lightning", *small, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("classifier", "cams", "seeds", "pseudo", "segmenter"):
        assert (root / "run" / stage / "manifest.json").is_file(), stage
    assert f"results: {root / 'run' / 'results.md'}" in result.stdout
