"""Third-party notices are filtered at start-up by their exact text; our own warnings and logs still show."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from vwl_lightning.utils.noise import filter_third_party_noise


def test_named_notices_are_dropped_and_others_kept(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_third_party_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("The number of training batches (6) is smaller than the logging interval "
                      "Trainer(log_every_n_steps=50).", UserWarning, stacklevel=1)
        warnings.warn("seeds: the best background score 0.60 is the high end of the sweep", UserWarning,
                      stacklevel=1)
        warnings.warn("LeafSpec is something else here", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["seeds: the best background score 0.60 is the high end of the sweep",
                                                "LeafSpec is something else here"]
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        lightning.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        lightning.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=1` reached."]
    filter_third_party_noise()  # idempotent: one filter per logger
    assert sum(type(f).__name__ == "_DropTips" for f in lightning.filters) == 1


def test_wandb_logger_is_built_without_the_deprecated_anonymous_setting(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from vwl_lightning.tracking.loggers import build_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    node = {"_target_": "pytorch_lightning.loggers.WandbLogger", "mode": "offline"}
    logger = build_logger(node, tmp_path, stage="cams", group="g")
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["job_type"] == "cams"
