"""Where the Hydra configs live (the top-level ``conf/`` of a checkout, ``vwl_lightning/conf/`` inside an installed
wheel), and the resolver that names the default run folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGE_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # a wheel install: vwl_lightning/conf/
CHECKOUT_CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # a checkout (editable install): <repo>/conf/
RUN_TAG_RESOLVER = "vwl_run_tag"
READABLE_TAG = re.compile(r"^[A-Za-z0-9_.=,+\-\[\]]{1,80}$")


def config_dir() -> str:
    """The ``conf/`` folder: the installed package's own (a wheel ships it), else the checkout's top-level one."""
    for folder in (PACKAGE_CONF_DIR, CHECKOUT_CONF_DIR):
        if (folder / "config.yaml").is_file():
            return str(folder)
    raise FileNotFoundError(f"{PACKAGE_CONF_DIR / 'config.yaml'}: the package's configs are missing; "
                            "reinstall vwl_lightning")


def run_tag(override_dirname: str) -> str:
    """The run folder's last part for a set of task overrides (Hydra's ``override_dirname``, keys sorted):
    ``default`` for none, the overrides themselves when short and made of safe characters
    (``seed=2``), else ``overrides-`` and 10 hex digits of their SHA-256."""
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
