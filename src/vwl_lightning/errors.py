"""User-facing errors: one line that names the offending key, value or file and what was expected.

The command-line entry point prints these without a traceback (see ``vwl_lightning.__main__``).
"""

from __future__ import annotations


class VWLError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class ConfigError(VWLError, ValueError):
    """A configuration key holds a value outside what it accepts."""


class DataError(VWLError, ValueError):
    """A data file or folder is missing, unreadable or inconsistent."""


def load_error_text(exc: BaseException) -> str:
    """Why a checkpoint did not load, in a few words: a pickle payload refused by the ``weights_only=True``
    loader is said to be refused (torch's own text suggests disabling the check, which we never advise);
    anything else is its type and the first line of its message."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return ("it holds pickled Python objects beyond tensors and plain containers, which are refused: "
                "checkpoints are loaded with weights_only=True")
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"
