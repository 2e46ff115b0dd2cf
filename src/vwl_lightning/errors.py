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


def require(condition: bool, message: str, kind: type[VWLError] = ConfigError) -> None:
    """Raise ``kind(message)`` unless ``condition`` holds."""
    if not condition:
        raise kind(message)
