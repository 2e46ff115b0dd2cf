"""Command line: ``python -m vwl_lightning [+experiment=NAME] [key=value ...]`` (Hydra).

``stage`` selects what runs (default: the classifier on the embedded benchmark). Errors that are the
user's input (:class:`~vwl_lightning.errors.VWLError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vwl_lightning.errors import VWLError
from vwl_lightning.utils.config import config_dir, register_resolvers
from vwl_lightning.utils.noise import filter_third_party_noise

log = logging.getLogger("vwl_lightning")
register_resolvers()  # ${vwl_run_tag:...} in hydra.run.dir


def run(cfg: DictConfig) -> object:
    """Run the stage named by ``cfg.stage`` (``pipeline``: all of them in order)."""
    from vwl_lightning.stages.pipeline import run as run_pipeline

    return run_pipeline(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = run(cfg)
        if cfg.get("optimized_metric"):  # the sweeper's objective
            value = result.get(str(cfg.optimized_metric)) if isinstance(result, dict) else None
            return float("nan") if value is None else float(value)
        return result
    except VWLError as exc:
        if multirun:  # a sweep records the failed job and goes on with the others
            from vwl_lightning.tracking.sweep_summary import record_failure

            record_failure(Path(str(cfg.run_dir)), exc)
            return float("nan") if cfg.get("optimized_metric") else None
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if not multirun:
            raise
        from vwl_lightning.tracking.sweep_summary import record_failure

        record_failure(Path(str(cfg.run_dir)), exc)
        return float("nan") if cfg.get("optimized_metric") else None


def main() -> None:
    """Console entry point ``vwl-lightning``."""
    filter_third_party_noise()
    _hydra_main()


if __name__ == "__main__":
    main()
