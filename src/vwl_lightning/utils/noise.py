"""Start-up filter for third-party notices that say nothing to our users (each named by its exact text, so
that no warning of ours, and no other warning of theirs, is hidden):

* PyTorch Lightning: the ``litlogger`` tips (an INFO log line), the ``LeafSpec`` deprecation raised inside
  its own ``_pytree``, the ``log_every_n_steps`` notice on small data sets, "modules in eval mode" (our frozen
  BatchNorm is intended) and the custom-batch-sampler notice (our ``SameSizeBatches`` returns every index);
* W&B's "anonymous setting" notice is avoided at the source (``tracking/loggers.py``).
"""

from __future__ import annotations

import logging
import warnings

WARNING_MESSAGES = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"You are using a custom batch sampler `SameSizeBatches` for prediction",
)
LOG_PREFIXES = ("💡 Tip: For seamless cloud",)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                     "lightning_fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LOG_PREFIXES)


def filter_third_party_noise() -> None:
    """Install the filters above (idempotent)."""
    for message in WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
