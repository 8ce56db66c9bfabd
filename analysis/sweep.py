"""``bayes-unlearn sweep``: scenarios × seeds of ``bayes-unlearn run``, on Ray or serially, with bootstrap intervals.

A sweep file (TOML) names the seeds, an optional ``[base]`` run configuration shared by every
scenario, the scenarios (each a run configuration with only what differs from the base) and an
optional ``[methods]`` table merged into every scenario's ``[methods]``::

    seeds = 5                      # seeds 0..4, or a list such as [3, 4, 5]
    [base]                         # same keys as a `bayes-unlearn run` config
    [scenarios.region]
    forget = { kind = "region", low = 1.5, high = 3.5 }
    [scenarios.random-1pct]
    forget = { kind = "random", fraction = 0.01 }
    [methods]
    run = ["auto", "lm-refit", "laplace-downdate"]

Task (scenario s, seed k) runs :func:`analysis.experiment.run_experiment` on the configuration

    defaults (⊕ QUICK_OVERRIDES with --quick) ⊕ base ⊕ {methods} ⊕ scenario s ⊕ {seed = k}

(``analysis.config.merge``, then ``resolve``; every task is resolved before any runs) into
``DIR/<s>/seed<k>/`` and records ``task.json`` ({"status": "complete" | "failed", ...}). A task that
raises is recorded as failed and the sweep goes on; ``--resume`` reruns only the tasks without a
complete record. Engines: ``ray`` (one single-CPU remote task per (s, k), one torch/OpenMP/MKL thread
each) or ``serial`` (the same task function in this process); a task's numbers do not depend on
the engine (``analysis.threads`` fixes the thread count).

Summary (:func:`summarise`, from the folder alone): per scenario, method and metric (every
``metrics.json`` metric, plus ``speedup`` = retrain wall time / method wall time in the same task,
``wall_time_s``, the verdict fractions ``verdict_ok|uncertain|failed`` and, with a retrain ensemble, the
fraction ``indistinguishable`` (within its noise floor on every split)) the mean, the median and a
95 % percentile-bootstrap interval of the mean over seeds (:func:`analysis.stats.bootstrap_ci`, seeded),
over the seeds where the value is finite (``n``). With a retrain ensemble, ``<split>/rank_p`` pools each
method's exchangeability ranks (``<split>/rank`` of 1 … K + 1 in metrics.json) over the seeds into the exact
one-sided p-value of their sum (``analysis.ensemble.pooled_rank_test``): the calibrated "told apart from
retraining", where ρ ≤ 1 on one seed has no stated error rate. Written as ``summary.json``, ``summary.csv``,
``report.md`` and ``figures/<scenario>_gap_closed.png``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import numpy as np

from .config import DEFAULT_CONFIG, QUICK_OVERRIDES, ConfigError, merge, read_toml, resolve
from .stats import bootstrap_ci, finite_values
from .files import atomic_path, write_json_atomic, write_text_atomic

__all__ = ["SweepError", "Task", "Sweep", "load_sweep", "plan_sweep", "run_task", "run_sweep", "summarise",
           "ENGINES", "SWEEP_KEYS"]

ENGINES = ("ray", "serial")
SWEEP_KEYS = ("seeds", "base", "scenarios", "methods")
SPLITS = ("forget", "retain", "test")
VERDICTS = ("ok", "uncertain", "failed")
#: pseudo-method of the summary: each task's noise floor (a retrain against the mixture of the others, as gap
#: closed and distances), so that every cell has the retrains' own spread beside it
NOISE_FLOOR = "noise-floor"
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# folder names the sweep writes itself, so no scenario may take them
_RESERVED = {"figures", "summary.json", "summary.csv", "report.md", "sweep.json"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_BOOT = {"level": 0.95, "n_boot": 2000, "seed": 0}


class SweepError(ConfigError):
    """A sweep that cannot start (bad sweep file, folder in the way, Ray missing); one line saying what to do."""


@dataclass(frozen=True)
class Task:
    """One (scenario, seed) run: its resolved configuration and its folder relative to the sweep folder."""

    scenario: str
    seed: int
    config: dict = field(repr=False, compare=False)

    @property
    def folder(self) -> str:
        return f"{self.scenario}/seed{self.seed}"


@dataclass
class Sweep:
    """A checked sweep: seeds, scenario names in file order, and every task (scenario-major)."""

    seeds: list[int]
    scenarios: list[str]
    tasks: list[Task]
    spec: dict = field(repr=False)
    quick: bool = False


# -- the sweep file ------------------------------------------------------------------------------------
def load_sweep(path: str | Path, *, quick: bool = False) -> Sweep:
    """Read and check a sweep file; every task's configuration is resolved (a :class:`ConfigError` names
    the scenario and the key)."""
    return plan_sweep(read_toml(path, "sweep file", SweepError), quick=quick)


def _seeds(value: Any) -> list[int]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        if value < 1:
            raise SweepError(f"seeds must be a positive count or a list of seeds, got {value!r}")
        return list(range(value))
    if isinstance(value, list) and value and all(is_int(v) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise SweepError(f"seeds: {value!r} repeats a seed; give each seed once")
        return list(value)
    raise SweepError(f"seeds must be a positive count (seeds = 5 → 0..4) or a non-empty list of non-negative "
                     f"integers, got {value!r}")


def plan_sweep(spec: dict, *, quick: bool = False) -> Sweep:
    """The tasks of a sweep specification (the parsed sweep file), every configuration resolved."""
    if not isinstance(spec, dict):
        raise SweepError(f"a sweep must be a table, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"unknown key sweep.{unknown[0]!r}; allowed top-level keys: {list(SWEEP_KEYS)} "
                         "(run settings go under [base] or [scenarios.<name>])")
    if "seeds" not in spec:
        raise SweepError("seeds is missing: give a count (seeds = 5 → seeds 0..4) or a list of seeds")
    seeds = _seeds(spec["seeds"])
    base, methods, scenarios = spec.get("base", {}), spec.get("methods", {}), spec.get("scenarios")
    for key, table in (("base", base), ("methods", methods)):
        if not isinstance(table, dict):
            raise SweepError(f"[{key}] must be a table, got {table!r}")
    if not isinstance(scenarios, dict) or not scenarios:
        raise SweepError("[scenarios] is missing or empty: give at least one [scenarios.<name>] table")
    if "seed" in base:
        raise SweepError("base.seed: the seeds of a sweep come from the top-level `seeds`")
    default = merge(DEFAULT_CONFIG, QUICK_OVERRIDES) if quick else copy.deepcopy(DEFAULT_CONFIG)
    tasks = []
    for name, scenario in scenarios.items():
        if not _SAFE_NAME.match(name) or name in _RESERVED or name in (".", ".."):
            raise SweepError(f"scenarios.{name!r}: a scenario name must be a folder name of letters, digits, '-', "
                             f"'_' and '.' (starting with a letter or digit, not one of {sorted(_RESERVED)})")
        if not isinstance(scenario, dict):
            raise SweepError(f"scenarios.{name} must be a table of run settings, got {scenario!r}")
        if "seed" in scenario:
            raise SweepError(f"scenarios.{name}.seed: the seeds of a sweep come from the top-level `seeds`")
        cfg = merge(merge(merge(default, base), {"methods": methods} if methods else {}), scenario)
        for seed in seeds:
            task_cfg = merge(cfg, {"seed": seed})
            try:
                task_cfg = resolve(task_cfg)
            except ConfigError as e:
                raise SweepError(f"scenarios.{name}: {e}") from e
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise SweepError(f"scenarios.{name}: invalid run settings ({type(e).__name__}: {e})") from e
            tasks.append(Task(name, seed, task_cfg))
    return Sweep(seeds=seeds, scenarios=list(scenarios), tasks=tasks, spec=spec, quick=quick)


# -- one task -------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_task(cfg: dict, folder: str | Path, engine: str = "serial") -> dict:
    """Run one resolved configuration into ``folder`` (``run_experiment``, no progress bars) and write
    ``folder/task.json``; never raises for a failing experiment -- the failure is the record.

    Returns the record: ``{"status": "complete", "wall_time_s", "engine"}`` or ``{"status": "failed",
    "error", "traceback", "wall_time_s", "engine"}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").unlink(missing_ok=True)  # no record = not finished, until this attempt ends
    t0 = time.perf_counter()
    try:
        from .experiment import run_experiment

        run_experiment(cfg, folder, progress=False)
        record = {"status": "complete", "wall_time_s": time.perf_counter() - t0, "engine": engine}
    except Exception as e:  # noqa: BLE001 -- a failing task is recorded, the sweep goes on
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0],
                  "traceback": traceback.format_exc(), "wall_time_s": time.perf_counter() - t0, "engine": engine}
    write_json_atomic(folder / "task.json", record)
    return record


def _ray_task(cfg: dict, folder: str) -> dict:
    """The Ray remote body: :func:`run_task` with one thread for torch and for every BLAS/OpenMP pool of the
    worker (``threadpoolctl``, already loaded libraries included; Ray also sets OMP_NUM_THREADS = num_cpus = 1).
    Set here rather than through a ``runtime_env``, which costs a fresh worker process (≈ 3 s) per sweep."""
    import contextlib

    import torch

    os.environ.update(THREAD_ENV)  # for anything the task starts
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover -- installed with scikit-learn
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=1)
    with limits:
        return run_task(cfg, folder, "ray")


# -- the sweep -----------------------------------------------------------------------------------------
def _diff(a: Any, b: Any, where: str = "") -> str | None:
    """The first key path where two configurations differ (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}{k}"
            d = _diff(a[k], b[k], f"{where}{k}.")
            if d is not None:
                return d
        return None
    return None if a == b else where.rstrip(".") or "(root)"


def _status(out: Path, task: Task) -> str | None:
    rec = _read_json(out / task.folder / "task.json")
    return rec.get("status") if isinstance(rec, dict) else None


def _todo(sweep: Sweep, out: Path, resume: bool) -> list[Task]:
    """The tasks to run; refuses a folder that already holds a sweep unless resuming, and a resumed task
    whose stored configuration differs from the new one."""
    if not resume:
        if any(out.glob("*/seed*/task.json")):
            raise SweepError(f"{out} already holds a sweep; pass --resume to finish it or choose another --out folder")
        return list(sweep.tasks)
    todo = []
    for t in sweep.tasks:
        cfg_file = out / t.folder / "config.toml"
        if _status(out, t) != "complete" or not cfg_file.is_file():
            todo.append(t)
            continue
        try:
            stored = tomllib.loads(cfg_file.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            stored = None
        key = _diff(stored, t.config) if isinstance(stored, dict) else "(unreadable config.toml)"
        if key is not None:
            raise SweepError(f"--resume: {t.folder} finished with another configuration (first difference: {key}); "
                             f"restore the sweep file, delete {out / t.folder} to rerun it, or choose another --out")
    return todo


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise SweepError("--engine ray needs Ray: pip install 'bayes-unlearn[sweep]' (or use --engine serial)") from e
    return ray


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep tasks", unit="task", disable=not progress)


def _run_serial(todo: list[Task], out: Path, progress: bool) -> None:
    bar = _bar(len(todo), progress)
    try:
        for t in todo:
            bar.set_postfix_str(t.folder)
            run_task(t.config, out / t.folder, "serial")
            bar.update(1)
    finally:
        bar.close()


def _run_ray(todo: list[Task], out: Path, progress: bool, address: str | None, num_cpus: int | None) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a local run
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        if address is None:
            kw["num_cpus"] = num_cpus
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            text = str(e).strip()
            reason = text.splitlines()[0] if text else type(e).__name__
            raise SweepError(f"could not start or reach {where}: {reason}") from e
    try:
        remote = ray.remote(_ray_task).options(num_cpus=1, max_retries=0)
        refs = {remote.remote(t.config, str((out / t.folder).resolve())): t for t in todo}
        pending = list(refs)
        bar = _bar(len(todo), progress)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    task = refs[ref]
                    try:
                        ray.get(ref)
                    except Exception as e:  # noqa: BLE001 -- the worker died before writing its record
                        folder = out / task.folder
                        if _status(out, task) != "complete":
                            folder.mkdir(parents=True, exist_ok=True)
                            write_json_atomic(folder / "task.json", {
                                "status": "failed", "error": f"the Ray worker died: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                                "traceback": str(e), "wall_time_s": None, "engine": "ray"})
                    bar.set_postfix_str(task.folder)
                    bar.update(1)
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()


def run_sweep(sweep: Sweep | str | Path, out: str | Path, *, quick: bool = False, engine: str = "ray",
              address: str | None = None, num_cpus: int | None = None, resume: bool = False,
              progress: bool = True) -> dict:
    """Run a sweep (a :class:`Sweep` or a sweep file) into ``out`` and return the summary (:func:`summarise`).

    Every task is resolved and the folder checked before anything runs; ``resume`` reruns only the tasks
    without a complete ``task.json``. ``engine="ray"`` starts a local Ray instance with ``num_cpus``
    CPUs (all by default) unless ``address`` names a running cluster, and shuts down only what it started.
    """
    if engine not in ENGINES:
        raise SweepError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "serial" and (address is not None or num_cpus is not None):
        raise SweepError("--address and --num-cpus apply to --engine ray only")
    if num_cpus is not None and (address is not None or num_cpus < 1):
        raise SweepError("--num-cpus must be a positive integer and applies to a local Ray instance (no --address)")
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, quick=quick)
    out = Path(out)
    todo = _todo(sweep, out, resume)
    if engine == "ray":
        _import_ray()  # fail before writing anything
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", {"engine": engine, "quick": sweep.quick, "seeds": sweep.seeds,
                                            "scenarios": sweep.scenarios, "spec": sweep.spec})
    if todo:
        (_run_ray(todo, out, progress, address, num_cpus) if engine == "ray" else _run_serial(todo, out, progress))
    return summarise(out)


# -- the summary ---------------------------------------------------------------------------------------
def _plan_from_folder(out: Path) -> tuple[str | None, list[str], list[int]]:
    """(engine, scenarios, seeds) from ``sweep.json``, else from the task folders on disk."""
    plan = _read_json(out / "sweep.json")
    if isinstance(plan, dict) and {"scenarios", "seeds"} <= set(plan):
        return plan.get("engine"), list(plan["scenarios"]), list(plan["seeds"])
    scenarios: dict[str, None] = {}
    seeds: set[int] = set()
    for rec in sorted(out.glob("*/seed*/task.json")):
        m = re.fullmatch(r"seed(\d+)", rec.parent.name)
        if m:
            scenarios[rec.parent.parent.name] = None
            seeds.add(int(m.group(1)))
    if not scenarios:
        raise SweepError(f"{out} holds no sweep (no sweep.json and no <scenario>/seed<k>/task.json)")
    return None, sorted(scenarios), sorted(seeds)


def _task_rows(doc: dict) -> dict[str, dict[str, float | None]]:
    """method -> {metric: value} for one task's metrics.json, with speedup, wall_time_s and verdict indicators."""
    results = doc.get("results", [])
    retrain = next((r.get("wall_time_s") for r in results if r.get("method") == "retrain"), None)
    rows: dict[str, dict[str, float | None]] = {}
    for r in results:
        row = dict(r.get("metrics") or {})
        t = r.get("wall_time_s")
        if r["method"] != "none":  # doing nothing has no meaningful speed-up
            row["speedup"] = (retrain / t if isinstance(t, (int, float)) and t > 0 and isinstance(retrain, (int, float))
                              else None)
        row["wall_time_s"] = t
        if isinstance(r.get("indistinguishable"), bool):  # within the retrain ensemble's noise floor on every split
            row["indistinguishable"] = float(r["indistinguishable"])
        v = r.get("verdict")
        for name in VERDICTS:
            row[f"verdict_{name}"] = None if v is None else float(v == name)
        rows[r["method"]] = row
    floor = doc.get("noise_floor") or {}
    if any(k.endswith("/gap_closed") for k in floor):  # the retrains' own spread, summarised beside the methods
        rows[NOISE_FLOOR] = {k: v for k, v in floor.items() if isinstance(v, (int, float))}
    return rows


def summarise(out: str | Path) -> dict:
    """Rebuild ``summary.json``, ``summary.csv``, ``report.md`` and ``figures/`` of a sweep folder from its
    finished tasks alone; returns the summary document."""
    out = Path(out)
    engine, scenarios, seeds = _plan_from_folder(out)
    complete, failed, pending = 0, [], []
    per: dict[str, dict[int, dict]] = {s: {} for s in scenarios}  # scenario -> seed -> method -> metrics
    verdicts: dict[str, dict[str, dict[str, int]]] = {s: {} for s in scenarios}
    engines = set()
    for s in scenarios:
        for k in seeds:
            folder = out / s / f"seed{k}"
            rec = _read_json(folder / "task.json")
            if not isinstance(rec, dict) or rec.get("status") not in ("complete", "failed"):
                pending.append({"scenario": s, "seed": k})
                continue
            engines.add(rec.get("engine"))
            doc = _read_json(folder / "metrics.json") if rec["status"] == "complete" else None
            if doc is None:
                failed.append({"scenario": s, "seed": k, "error": rec.get("error") or "metrics.json is missing"})
                continue
            complete += 1
            per[s][k] = _task_rows(doc)
            for r in doc.get("results", []):
                counts = verdicts[s].setdefault(r["method"], dict.fromkeys(VERDICTS, 0))
                if r.get("verdict") in counts:
                    counts[r["verdict"]] += 1
    cells = []
    for s in scenarios:
        methods = list(dict.fromkeys(m for k in seeds if k in per[s] for m in per[s][k]))
        for m in methods:
            metrics = list(dict.fromkeys(key for k in seeds if k in per[s] and m in per[s][k] for key in per[s][k][m]))
            for key in metrics:
                values = [per[s][k][m].get(key) for k in seeds if k in per[s] and m in per[s][k]]
                cells.append(_cell(s, m, key, values))
            cells += _rank_cells(s, m, [per[s][k][m] for k in seeds if k in per[s] and m in per[s][k]])
    if engine is None:
        engine = engines.pop() if len(engines) == 1 else None
    summary = {"engine": engine, "seeds": seeds, "scenarios": scenarios,
               "tasks": {"complete": complete, "failed": failed, "pending": pending},
               "bootstrap": {"statistic": "mean", **_BOOT}, "cells": cells}
    write_json_atomic(out / "summary.json", summary)
    _write_csv(summary, out / "summary.csv")
    figures = {}
    for s in scenarios:
        path = _plot_gap_seeds(out / "figures" / f"{s}_gap_closed.png", s, per[s])
        if path is not None:
            figures[s] = f"figures/{path.name}"
    write_text_atomic(out / "report.md", _report(summary, verdicts, figures))
    return summary


def _rank_cells(scenario: str, method: str, rows: list[dict]) -> list[dict]:
    """``<split>/rank_p``: the pooled one-sided p-value of the method's exchangeability ranks over the seeds that
    have one (``analysis.ensemble.pooled_rank_test``; small: farther from the retrains than a retrain is, more
    often than chance allows). ``mean`` and ``median`` hold p; there is no interval."""
    from .ensemble import pool_ranks

    return [{"scenario": scenario, "method": method, "metric": f"{sp}/rank_p", "mean": v["p"], "median": v["p"],
             "ci_low": None, "ci_high": None, "n": v["seeds"]} for sp, v in pool_ranks(rows, SPLITS).items()]


def _cell(scenario: str, method: str, metric: str, values: list) -> dict:
    v = finite_values(values)
    cell = {"scenario": scenario, "method": method, "metric": metric, "mean": None, "median": None,
            "ci_low": None, "ci_high": None, "n": int(v.size)}
    if v.size:
        est, lo, hi = bootstrap_ci(v, **_BOOT)
        cell.update(mean=est, median=float(np.median(v)), ci_low=lo, ci_high=hi)
    return cell


def _write_csv(summary: dict, path: Path) -> None:
    cols = ["scenario", "method", "metric", "mean", "median", "ci_low", "ci_high", "n"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for c in summary["cells"]:
            w.writerow(["" if c[k] is None else c[k] for k in cols])


def _fmt(c: dict | None, digits: int = 2) -> str:
    if not c or c["mean"] is None:
        return "–"
    f = f"{{:.{digits}f}}" if abs(c["mean"]) < 1e4 else "{:.3g}"
    return f"{f.format(c['mean'])} [{f.format(c['ci_low'])}, {f.format(c['ci_high'])}]"


def _report(summary: dict, verdicts: dict, figures: dict[str, str]) -> str:
    t = summary["tasks"]
    lines = ["# Sweep summary", "",
             f"Engine {summary['engine'] or 'unknown'}; seeds {summary['seeds']}; tasks: {t['complete']} complete, "
             f"{len(t['failed'])} failed, {len(t['pending'])} not run.", "",
             "Each cell: mean over seeds [95 % percentile-bootstrap interval of the mean, 2000 resamples, seeded]. "
             "Gap closed = 1 − d(method, retrain) / d(none, retrain) (1: as good as retraining, 0: no better "
             "than doing nothing); speed-up = retrain wall time / method wall time in the same task.", ""]
    if t["failed"]:
        lines += ["Failed tasks:", ""]
        lines += [f"- {f['scenario']}/seed{f['seed']}: {f['error']}" for f in t["failed"]] + [""]
    if t["pending"]:
        lines += ["Not run (no task.json; `--resume` runs them): "
                  + ", ".join(f"{p['scenario']}/seed{p['seed']}" for p in t["pending"]), ""]
    index = {(c["scenario"], c["method"], c["metric"]): c for c in summary["cells"]}
    for s in summary["scenarios"]:
        lines += [f"## {s}", ""]
        methods = list(dict.fromkeys(c["method"] for c in summary["cells"] if c["scenario"] == s))
        if not methods:
            lines += ["No complete task.", ""]
            continue
        lines += ["| method | gap closed D_f | gap closed D_r | gap closed test | speed-up × retrain | "
                  "verdicts ok/uncertain/failed | seeds |", "|---|---|---|---|---|---|---|"]
        for m in methods:
            n = max((c["n"] for (sc, mm, _), c in index.items() if sc == s and mm == m), default=0)
            vc = verdicts.get(s, {}).get(m, {})
            gaps = " | ".join(_fmt(index.get((s, m, f"{sp}/gap_closed"))) for sp in SPLITS)
            speed = "–" if m in ("none", NOISE_FLOOR) else _fmt(index.get((s, m, "speedup")), 1)
            lines.append(f"| {m} | {gaps} | {speed} | {vc.get('ok', 0)}/{vc.get('uncertain', 0)}/"
                         f"{vc.get('failed', 0)} | {n} |")
        lines.append("")
        ranked = [m for m in methods if index.get((s, m, "forget/rank_p"))]
        if ranked:
            lines += ["Told apart from retraining? The pooled rank test (`<split>/rank_p`): each seed ranks the method "
                      "among itself and the K retrains by distance to the mixture of the others; if it were one "
                      "more retrain the rank would be uniform. p = P(sum of ranks ≥ observed) over the seeds; "
                      "p < 0.05 on a split: farther from the retrains than a retrain is (p D_f / D_r / test):", ""]
            lines += [f"- `{m}`: " + " / ".join(f"{index[(s, m, f'{sp}/rank_p')]['mean']:.3g}"
                                                 if index.get((s, m, f"{sp}/rank_p")) else "–" for sp in SPLITS)
                      + f" ({index[(s, m, 'forget/rank_p')]['n']} seeds)" for m in ranked]
            lines.append("")
        floor = index.get((s, NOISE_FLOOR, "test/gap_closed"))
        if floor and floor.get("mean") is not None and floor["mean"] < 0.5:
            lines += [f"**Not readable**: a retrain closes only {floor['mean']:.2f} of the test gap to the mixture of "
                      "the other retrains (the `noise-floor` row): the retrains disagree about as much as the "
                      "deletion changes the posterior, so gap closed cannot rank the methods in this scenario.", ""]
        elif floor:
            lines += ["The `noise-floor` row is the gap closed a retrain itself reaches against the mixture of the "
                      "other retrains: no method can be told apart from retraining above it.", ""]
        if s in figures:
            lines += [f"![Gap closed per seed, {s}]({figures[s]})", "",
                      "*Gap closed per seed (dots) and its spread (boxes) for each method and split; values "
                      "outside [-1.5, 1.2] are drawn at the edge as triangles.*", ""]
    return "\n".join(lines) + "\n"


def _plot_gap_seeds(path: Path, scenario: str, per_seed: dict[int, dict]) -> Path | None:
    """Box + strip plot of per-seed gap closed, one panel per split, one column per method (``none`` left out,
    its gap is 0 by definition); None when there is nothing to draw."""
    rows = [{"method": m, "split": sp, "gap closed": row.get(f"{sp}/gap_closed")}
            for k in sorted(per_seed) for m, row in per_seed[k].items() if m != "none" for sp in SPLITS]
    rows = [r for r in rows if r["gap closed"] is not None and math.isfinite(r["gap closed"])]
    if not rows:
        return None
    import pandas as pd

    from .figures import GAP_YLIM, plt, save_figure, sns

    lo, hi = GAP_YLIM
    df = pd.DataFrame(rows)
    df["shown"] = df["gap closed"].clip(lo, hi)
    methods = list(dict.fromkeys(df["method"]))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(SPLITS), figsize=(max(7.5, 1.1 * len(methods) * len(SPLITS) + 2), 4.2),
                                 sharey=True, squeeze=False)
    for ax, sp in zip(axes[0], SPLITS):
        d = df[df["split"] == sp]
        ax.axhline(1.0, color="tab:green", lw=1.2, ls="--", zorder=0)
        ax.axhline(0.0, color="0.3", lw=1.0, zorder=0)
        if len(d):
            sns.boxplot(data=d, x="method", y="shown", order=methods, ax=ax, color="0.85", width=0.55,
                        showfliers=False, linewidth=1.0)
            inside = d[d["gap closed"] == d["shown"]]
            sns.stripplot(data=inside, x="method", y="shown", order=methods, ax=ax, color="tab:blue", size=5,
                          jitter=0.12, alpha=0.8)
            out = d[d["gap closed"] != d["shown"]]
            for _, r in out.iterrows():
                ax.scatter(methods.index(r["method"]), r["shown"], marker="^" if r["gap closed"] > hi else "v",
                           color="tab:red", s=40, zorder=5)
        ax.set_ylim(lo - 0.1, hi + 0.1)
        ax.set_title(f"{sp}" + (f" ({int((d['gap closed'] != d['shown']).sum())} clipped)"
                                if (d["gap closed"] != d["shown"]).any() else ""), fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("gap closed" if sp == SPLITS[0] else "")
        ax.tick_params(axis="x", rotation=25 if max(map(len, methods)) > 8 else 0)
    fig.suptitle(f"{scenario}: gap closed per seed (1 = retraining, 0 = nothing; red triangles: clipped)",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
