"""Atomic file output: write to a temporary name in the same folder, flush, then ``os.replace``.

A crash therefore never leaves a half-written file under the final name; a re-run of a stage sees
either the complete file or nothing.  The temporary file lives in the final folder (never in ``/tmp``), so
the rename never crosses file systems; it gets the permissions the process umask gives a new file
(``mkstemp`` alone would leave 0600).  An ``OSError`` (disk full, permission, ...) becomes one
:class:`~vwl_lightning.errors.DataError` line naming the final path.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def os_error_message(path: str | os.PathLike, exc: OSError) -> str:
    """One line: ``<path>: cannot write (<strerror>, errno <name>)``."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "?")
    return f"{path}: cannot write ({exc.strerror or exc}, {name}); free space or fix permissions and run again"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to disk (no-op where the file system does not support it)."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; flush and rename it onto ``path`` when the block succeeds.

    The temporary name keeps the final suffix (so libraries that pick a format by suffix still work)
    and starts with ``.tmp-`` so that readers globbing for outputs never match it.  Any ``OSError`` in the
    block or the rename raises DataError naming ``path``.
    """
    from vwl_lightning.errors import DataError

    final = Path(path)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.stem}-", suffix=final.suffix, dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise DataError(os_error_message(final, exc)) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the final path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising :class:`~vwl_lightning.errors.DataError` naming the file on failure."""
    from vwl_lightning.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read ({type(exc).__name__}: {exc})") from None
