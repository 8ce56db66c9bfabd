"""Writing result files so that a reader never sees half of one, and a run's ``status.json``.

Every file of a results folder is written to a temporary sibling (``.<name>.<pid>.tmp``) and moved
into place with ``os.replace``, which is atomic on POSIX and Windows within one file system: a file
is either the previous complete version or the new complete version, never a truncated mix, even
when the process is killed mid-write.

``status.json`` says where a run stands (issue 12): ``"running"`` from the start, then exactly one of
``"complete"``, ``"interrupted"`` (Ctrl-C / SIGINT) or ``"failed"`` (an error, with its message), with
the start and end times. A folder whose status is not ``"complete"`` holds partial results.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "read_status", "run_status", "STATUS_FILE"]

STATUS_FILE = "status.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` atomically, on an
    error (or Ctrl-C) it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(path: str | Path, doc: Any, default: Callable[[Any], Any] | None = str) -> Path:
    """Write ``doc`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(doc, indent=2, default=default) + "\n")


def read_status(folder: str | Path) -> dict | None:
    """The ``status.json`` of a results folder, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def run_status(folder: str | Path) -> Iterator[None]:
    """Keep ``folder/status.json`` true for the block it wraps: ``running`` on entry, then ``complete``,
    ``interrupted`` (KeyboardInterrupt, re-raised) or ``failed`` with ``"error"`` (any other exception,
    re-raised)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"status": "running", "started": _now(), "pid": os.getpid()}
    write_json_atomic(folder / STATUS_FILE, doc)
    try:
        yield
    except KeyboardInterrupt:
        write_json_atomic(folder / STATUS_FILE, {**doc, "status": "interrupted", "ended": _now(),
                                                 "error": "interrupted (Ctrl-C / SIGINT): the results are partial"})
        raise
    except BaseException as e:
        write_json_atomic(folder / STATUS_FILE, {**doc, "status": "failed", "ended": _now(),
                                                 "error": f"{type(e).__name__}: {e}"})
        raise
    write_json_atomic(folder / STATUS_FILE, {**doc, "status": "complete", "ended": _now()})
