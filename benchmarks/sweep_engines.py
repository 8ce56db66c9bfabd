"""Wall time of one ``bayes-unlearn sweep`` on the serial and the Ray engine, in one process run.

    python -m benchmarks.sweep_engines                    # 5 seeds × 2 scenarios, --quick, Ray on 2 CPUs
    python -m benchmarks.sweep_engines --tiny             # 1 task of the linear model: checks that it starts

The same sweep (seeds 0..4; scenarios ``region`` = x ∈ (1.5, 3.5) and ``random-5pct`` = 5 % of the rows;
methods lm-refit and laplace-downdate besides the references; every task at the ``--quick`` scale of
``bayes-unlearn run``) runs first serially in this process, then on a local Ray instance with
``--num-cpus`` CPUs (one task per CPU, one thread each), each into a fresh folder. Wall time is the
whole :func:`analysis.sweep.run_sweep` call as a user sees it: Ray's start and shutdown, the workers'
imports and the summary included. ratio = serial / ray (> 1: Ray is faster). ``same_cells`` checks that
both engines give the same summary, timings aside. Writes ``benchmarks/results/sweep_engines.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks._io import write_result

SWEEP = {
    "seeds": 5,
    "scenarios": {"region": {"forget": {"kind": "region", "low": 1.5, "high": 3.5}},
                  "random-5pct": {"forget": {"kind": "random", "fraction": 0.05}}},
    "methods": {"run": ["lm-refit", "laplace-downdate"]},
}
# --tiny: one task of the conjugate linear model, no extras (seconds), to check that the script starts
TINY = {
    "seeds": 1,
    "base": {"data": {"n": 60}, "model": {"name": "linear"}, "inference": {"options": {"num_steps": 100}},
             "analysis": {"figures": False, "netcdf": False, "noise_floor": False, "references": 1}},
    "scenarios": {"region": {"forget": {"kind": "region", "low": 1.5, "high": 3.5}}},
    "methods": {"run": ["laplace-downdate"]},
}
TIMING = {"speedup", "wall_time_s"}


def _cells(summary: dict) -> list[dict]:
    return [c for c in summary["cells"] if c["metric"] not in TIMING]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep_engines", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    ap.add_argument("--tiny", action="store_true", help="one tiny task per engine (checks that the script runs)")
    ap.add_argument("--work", default=None, help="keep the two sweep folders here (default: a temporary folder)")
    ap.add_argument("--out", default=None,
                    help="JSON file (default benchmarks/results/sweep_engines.json; with --tiny: none)")
    a = ap.parse_args(argv)
    from bayes_unlearn.analysis.sweep import plan_sweep, run_sweep

    spec = dict(TINY if a.tiny else SWEEP)
    if not a.tiny:
        spec["seeds"] = a.seeds
    sweep = plan_sweep(spec, quick=True)
    out = a.out if a.out is not None else (None if a.tiny else "benchmarks/results/sweep_engines.json")
    doc: dict = {"sweep": spec, "quick": True, "tasks": len(sweep.tasks), "num_cpus": a.num_cpus}
    with tempfile.TemporaryDirectory(prefix="sweep_engines_") as tmp:
        work = Path(a.work or tmp)
        summaries = {}
        for engine in ("serial", "ray"):
            folder = work / engine
            t0 = time.perf_counter()
            cpus = a.num_cpus if engine == "ray" else None
            summaries[engine] = run_sweep(sweep, folder, engine=engine, num_cpus=cpus, progress=True)
            wall = time.perf_counter() - t0
            task_times = [json.loads((folder / t.folder / "task.json").read_text()).get("wall_time_s")
                          for t in sweep.tasks]
            doc[engine] = {"wall_s": wall, "complete": summaries[engine]["tasks"]["complete"],
                           "failed": summaries[engine]["tasks"]["failed"],
                           "task_wall_s_sum": sum(t for t in task_times if t is not None)}
            print(f"{engine}: {wall:.1f} s for {len(sweep.tasks)} tasks", flush=True)
    doc["ratio_serial_over_ray"] = doc["serial"]["wall_s"] / doc["ray"]["wall_s"]
    doc["same_cells"] = _cells(summaries["serial"]) == _cells(summaries["ray"])
    print(f"serial / ray = {doc['ratio_serial_over_ray']:.2f} (Ray on {a.num_cpus} CPUs); "
          f"same summary timings aside: {doc['same_cells']}")
    if out:
        write_result(out, doc)
        print(f"written: {out}")
    return doc


if __name__ == "__main__":
    main()
