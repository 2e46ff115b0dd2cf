"""Where the Hydra configs live (``src/vwl_lightning/conf/`` inside the package), and the resolver that names
the default run folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RUN_TAG_RESOLVER = "vwl_run_tag"
READABLE_TAG = re.compile(r"^[A-Za-z0-9_.=,+\-\[\]]{1,80}$")


def config_dir() -> str:
    """The package's ``conf/`` folder (shipped inside the package, so a built wheel has it too)."""
    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"{CONF_DIR / 'config.yaml'}: the package's configs are missing; "
                                "reinstall vwl_lightning")
    return str(CONF_DIR)


def run_tag(override_dirname: str) -> str:
    """The run folder's last part for a set of task overrides (Hydra's ``override_dirname``, keys sorted):
    ``default`` for none, the overrides themselves when short and made of safe characters
    (``model.pool.gamma=4``), else ``overrides-`` and 10 hex digits of their SHA-256."""
    if not override_dirname:
        return "default"
    if READABLE_TAG.match(override_dirname) and "/" not in override_dirname:
        return override_dirname
    return "overrides-" + hashlib.sha256(override_dirname.encode()).hexdigest()[:10]


def register_resolvers() -> None:
    """Register ``${vwl_run_tag:...}`` with OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RUN_TAG_RESOLVER):
        OmegaConf.register_new_resolver(RUN_TAG_RESOLVER, run_tag)
