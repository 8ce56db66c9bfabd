"""Writing a benchmark's JSON result, with the facts of the machine it ran on.

Every benchmark writes one JSON document (again after each finished cell, so that a long run
leaves its partial result): :func:`write_result` adds ``"machine"`` (:func:`machine_facts`) and
writes it atomically (``analysis.files.write_json_atomic``: a reader never sees half a file).
Timings on a shared machine are read together with its load (:func:`machine_state`).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable

__all__ = ["machine_facts", "machine_state", "write_result", "read_result", "print_table"]


def machine_facts(threads: int | None = None) -> dict:
    """Python, platform, CPU, torch version and thread counts of this process.

    ``threads``: the torch intra-op threads the measured work ran with, when it is not this process's
    current setting (work in subprocesses, or a setting already restored)."""
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads() if threads is None else threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def machine_state() -> dict:
    """Load averages and runnable processes (from /proc/loadavg; the runnable count includes this one)."""
    try:
        parts = Path("/proc/loadavg").read_text().split()
        running = int(parts[3].split("/")[0])
        return {"load_1m": float(parts[0]), "load_5m": float(parts[1]), "runnable": running,
                "cpus": os.cpu_count()}
    except OSError:
        return {"cpus": os.cpu_count()}


def write_result(path: str | Path, doc: dict, *, threads: int | None = None) -> Path:
    """Write ``doc`` plus ``"machine"`` (:func:`machine_facts` with ``threads``) as JSON to ``path``,
    atomically, creating its folder; values JSON cannot hold are written as ``str(value)``."""
    from bayes_unlearn.analysis.files import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {**doc, "machine": machine_facts(threads)}, default=str)


def read_result(path: str | Path) -> dict:
    """A benchmark's JSON result, as :func:`write_result` wrote it."""
    return json.loads(Path(path).read_text())


def print_table(path: str | Path, markdown_table: Callable[[dict], str]) -> dict:
    """Print ``markdown_table`` of the result at ``path`` (a benchmark's ``--table FILE``); return the result."""
    doc = read_result(path)
    print(markdown_table(doc))
    return doc
