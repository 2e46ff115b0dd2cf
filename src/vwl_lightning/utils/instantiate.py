"""Objects from ``_target_`` nodes (``hydra.utils.instantiate``), with errors that name the config key.

A configurable class checks its own arguments, once, in the class: it raises :class:`ArgumentError` naming
the argument, and a class whose construction is expensive (a backbone) exposes the same checks as a
``check_arguments`` classmethod that ``__init__`` calls first. :func:`build` adds the node's config key to
such an error, so the user reads ``<key>.<argument>=<value>: expected ...``; :func:`check_node` runs
the checks of a node without building it, for the start-up checks before any expensive work.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vwl_lightning.errors import ConfigError

SPECIAL_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class ArgumentError(ConfigError):
    """``name=value`` is not what the class accepts; ``expected`` says what it does."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name}={value!r}: expected {expected}")

    def at(self, key: str) -> ConfigError:
        """The same error with the node's config key in front: ``<key>.<name>=<value>: expected ...``."""
        return ConfigError(f"{key}.{self.name}={self.value!r}: expected {self.expected}")


def is_real(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """:class:`ArgumentError` unless ``value`` is a (integer) number within the bounds."""
    bounds = []
    if low is not None:
        bounds.append(f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        bounds.append(f"< {high:g}" if high_open else f"<= {high:g}")
    what = ("an integer" if integer else "a number") + (" " + " and ".join(bounds) if bounds else "")
    if not (is_int(value) if integer else is_real(value)):
        raise ArgumentError(name, value, what)
    if low is not None and (value <= low if low_open else value < low):
        raise ArgumentError(name, value, what)
    if high is not None and (value >= high if high_open else value > high):
        raise ArgumentError(name, value, what)


def require_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """:class:`ArgumentError` unless ``value`` is one of ``choices``."""
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
        raise ArgumentError(name, value, "one of " + ", ".join(map(str, choices)))


def require_int_list(name: str, value: Any, low: int = 1) -> None:
    """:class:`ArgumentError` unless ``value`` is a non-empty list of integers >= ``low``."""
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else None
    if not items or not all(is_int(v) and v >= low for v in items):
        raise ArgumentError(name, value, f"a non-empty list of integers >= {low}")


def require_positive_list(name: str, value: Any) -> None:
    """:class:`ArgumentError` unless ``value`` is a non-empty list of positive numbers."""
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else None
    if not items or not all(is_real(v) and v > 0 for v in items):
        raise ArgumentError(name, value, "a non-empty list of positive numbers")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _target_of(node: Mapping[str, Any], key: str) -> Any:
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{key}={node!r}: expected a node with a _target_ (a config group option, e.g. "
                          f"{key.replace('.', '/')}=...)")
    try:
        return _locate(str(node["_target_"]))  # hydra's own lookup, without its error log
    except Exception:  # noqa: BLE001 - any import failure: the target is not a known object
        raise ConfigError(f"{key}._target_={node['_target_']!r}: expected an importable class or function "
                          "(module.Name)") from None


def accepted(target: Any, supplied: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``supplied`` that ``target``'s signature takes by name."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(supplied)
    return {k: v for k, v in supplied.items() if k in parameters}


def build(node: Any, key: str, supplied: Mapping[str, Any] | None = None, **extra: Any) -> Any:
    """``instantiate(node, **extra)``, plus the entries of ``supplied`` the target takes (shapes the caller knows,
    e.g. ``num_classes``, that not every variant needs); an :class:`ArgumentError` or a bad target comes back as
    one line naming ``key``. ``None`` (an absent optional object) builds ``None``."""
    if node is None:
        return None
    node = _plain(node)
    target = _target_of(node, key)
    extra = {**accepted(target, supplied or {}), **extra}
    try:
        return instantiate(node, **extra)
    except ArgumentError as exc:
        raise exc.at(key) from None
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ArgumentError):
            raise cause.at(key) from None
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, TypeError | ValueError):
            first = (str(cause).splitlines() or [""])[0]
            raise ConfigError(f"{key}: {first}") from None
        raise


def node_arguments(node: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The keyword arguments a node passes to its target (special keys left out), plus ``extra``."""
    return {**{k: v for k, v in _plain(node).items() if k not in SPECIAL_KEYS}, **extra}


def check_node(node: Any, key: str, **extra: Any) -> None:
    """Run the target's ``check_arguments`` on the node's arguments (its signature's defaults filled in)
    without building it; unknown argument names are refused. A target without ``check_arguments`` is only
    checked for being importable and for its argument names."""
    if node is None:
        return
    node = _plain(node)
    target = _target_of(node, key)
    arguments = node_arguments(node, **extra)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        unknown = sorted(set(arguments) - set(signature.parameters))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: {node['_target_']} has no argument {unknown[0]!r}; "
                              f"expected one of {', '.join(n for n in signature.parameters if n != 'self')}")
    checker = getattr(target, "check_arguments", None)
    if checker is None:
        return
    bound = signature.bind_partial(**arguments)
    bound.apply_defaults()
    wanted = inspect.signature(checker).parameters
    try:
        checker(**{k: v for k, v in bound.arguments.items() if k in wanted})
    except ArgumentError as exc:
        raise exc.at(key) from None
