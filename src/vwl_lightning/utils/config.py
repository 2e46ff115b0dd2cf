"""Where the Hydra configs live: ``src/vwl_lightning/conf/`` inside the package."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def config_dir() -> str:
    """The package's ``conf/`` folder (shipped inside the package, so a built wheel has it too)."""
    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"{CONF_DIR / 'config.yaml'}: the package's configs are missing; "
                                "reinstall vwl_lightning")
    return str(CONF_DIR)
