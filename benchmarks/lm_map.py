"""Laplace MAP search on the default BNN: Adam + L-BFGS against Levenberg–Marquardt, by data size.

    python -m benchmarks.lm_map --ns 300 10000 --seeds 0 1 2 3 4 --out benchmarks/results/lm_map.json
    python -m benchmarks.lm_map --ns 50000 --seeds 0 --out benchmarks/results/lm_map.json --append
    python -m benchmarks.lm_map --table benchmarks/results/lm_map.json          # the markdown table
    python -m benchmarks.lm_map --memory-probe 50000 --out benchmarks/results/lm_map.json   # peak memory, 3 LM its

For each (N, seed, optimizer): ``synthetic_1d(n=N, seed)``, the default 1-32-32-1 tanh BNN
(``prior_scale="fan_in"``, noise 0.1) and ``fit(model, x, y, "laplace", curvature="ggn", optimizer=…)`` on one
torch thread, each in a fresh subprocess (so that its peak resident memory, ``ru_maxrss``, is its own).
Recorded: the whole fit's wall time, the MAP search's own time, the final ‖∇ log p̃(θ*, D)‖ (fit warns
above ``MAP_GRAD_TOL`` = 1e-2), the iterations, the peak memory, and the machine's state (load average
and the runnable processes other than this one, from /proc/loadavg) before and after each run, because
the benchmark machine is shared.

Summary per (N, optimizer): median over seeds with a 95 % bootstrap interval (``analysis.stats``), or
"one run"; the time ratio adam-lbfgs / lm is taken per seed (same machine, one run after the other).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._io import machine_state, print_table, read_result, write_result

GRAD_TOL = 1e-2  # inference.fit.MAP_GRAD_TOL


def one_run(n: int, seed: int, optimizer: str, options: dict) -> dict:
    """One fit in this process; returns its record (run by the parent in a fresh subprocess)."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from bayes_unlearn.inference import fit
    from bayes_unlearn.models import BayesianMLP
    from bayes_unlearn.models.data import synthetic_1d

    data = synthetic_1d(n=n, seed=seed)
    model = BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, "laplace", seed=seed, progress=False, curvature="ggn", optimizer=optimizer,
               **options)
    wall = time.perf_counter() - t0
    rep = post.meta["report"]
    return {"n": n, "seed": seed, "optimizer": optimizer, "options": options, "fit_time_s": wall,
            "map_time_s": rep.get("wall_time_s"), "grad_norm": rep.get("grad_norm_at_map"),
            "steps": rep.get("steps"), "lm": rep.get("lm"), "converged": bool(rep.get("grad_norm_at_map") <= GRAD_TOL),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "warnings": post.meta.get("warnings", [])}


def memory_probe(n: int, solver: str) -> dict:
    """Peak resident memory (``ru_maxrss``) of 3 Marquardt-LM iterations from a prior draw on the default BNN at
    N = n with ``solver`` ("primal": B = Σ AᵀA over chunks; "cg": matrix-free, inexact), and on the primal
    path of 3 ``ggn_lbfgs`` iterations after them; run by the parent in a fresh subprocess."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from bayes_unlearn.inference.gauss_newton import NegLogJoint, ggn_lbfgs, levenberg_marquardt
    from bayes_unlearn.inference.laplace import prior_draw
    from bayes_unlearn.inference.latent import BoundModel
    from bayes_unlearn.models import BayesianMLP
    from bayes_unlearn.models.data import synthetic_1d

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    data = synthetic_1d(n=n, seed=0)
    model = BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)
    bound = BoundModel(model, data.x, data.y)
    problem = NegLogJoint(bound, data.x, data.y)
    theta = prior_draw(bound, data.x, 0).double()
    out = {"n": n, "solver": solver, "rss_before_mb": rss()}
    t0 = time.perf_counter()
    kw = {"cg_max_iter": 50, "cg_forcing": True} if solver == "cg" else {}
    theta, rep = levenberg_marquardt(problem, theta, max_iters=3, rtol=0.0, gtol=1e-3, damping="marquardt",
                                     solver=solver, **kw)
    out.update(lm_iterations=rep["iterations"], lm_time_s=time.perf_counter() - t0, peak_rss_after_lm_mb=rss(),
               cg_iterations=rep.get("cg_iterations"))
    if solver == "primal":
        t0 = time.perf_counter()
        ggn_lbfgs(problem, theta, max_iters=3, gtol=1e-3)
        out.update(ggn_lbfgs_3_iters_s=time.perf_counter() - t0, peak_rss_after_ggn_lbfgs_mb=rss())
    return out


def bootstrap(values: list[float]) -> list | str:
    import numpy as np

    from bayes_unlearn.analysis.stats import bootstrap_ci

    if len(values) < 2:
        return "one run"
    return list(bootstrap_ci(values, level=0.95, n_boot=2000, seed=0, stat=np.median))


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["n"], r["optimizer"]) for r in runs if "error" not in r})
    for n, opt in keys:
        rows = [r for r in runs if r["n"] == n and r["optimizer"] == opt and "error" not in r]
        cell = {"n": n, "optimizer": opt, "seeds": [r["seed"] for r in rows],
                "reached_tol": sum(r["converged"] for r in rows)}
        for k in ("fit_time_s", "map_time_s", "grad_norm", "peak_rss_mb"):
            vals = [r[k] for r in rows if r.get(k) is not None]
            cell[k] = bootstrap(vals) if len(vals) > 1 else (vals[0] if vals else None)
        out.append(cell)
    # the per-seed ratio of fit times, adam-lbfgs / lm (same seed, same machine, one after the other)
    for n in sorted({r["n"] for r in runs}):
        pairs = []
        for s in sorted({r["seed"] for r in runs if r["n"] == n}):
            a = [r for r in runs if r["n"] == n and r["seed"] == s and r["optimizer"] == "adam-lbfgs" and "error" not in r]
            b = [r for r in runs if r["n"] == n and r["seed"] == s and r["optimizer"] == "lm" and "error" not in r]
            if a and b:
                pairs.append(a[-1]["fit_time_s"] / b[-1]["fit_time_s"])
        if pairs:
            out.append({"n": n, "optimizer": "ratio adam-lbfgs/lm (fit time)", "per_seed": pairs,
                        "ratio": bootstrap(pairs) if len(pairs) > 1 else pairs[0]})
    return out


def markdown_table(doc: dict) -> str:
    def fmt(v, f="{:.3g}"):
        if v is None:
            return "–"
        if isinstance(v, list):
            return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"
        if isinstance(v, str):
            return v
        return f"{f.format(v)} (one run)"
    lines = ["| N | optimizer | seeds | ‖∇‖ < 1e-2 | fit time (s) | MAP time (s) | final ‖∇‖ | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in doc["summary"]:
        if "ratio" in c:
            continue
        lines.append(f"| {c['n']} | {c['optimizer']} | {len(c['seeds'])} | {c['reached_tol']}/{len(c['seeds'])} | "
                     f"{fmt(c['fit_time_s'], '{:.1f}')} | {fmt(c['map_time_s'], '{:.1f}')} | {fmt(c['grad_norm'], '{:.2g}')} | "
                     f"{fmt(c['peak_rss_mb'], '{:.0f}')} |")
    ratios = [c for c in doc["summary"] if "ratio" in c]
    if ratios:
        lines.append("")
        for c in ratios:
            lines.append(f"N = {c['n']}: fit time adam-lbfgs / lm per seed {[round(x, 2) for x in c['per_seed']]}, "
                         f"median {fmt(c['ratio'], '{:.2f}')}")
    lines.append("")
    lines.append("Medians with 95 % bootstrap intervals over seeds, or one run. Machine state per run in the JSON.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lm_map", description=__doc__.split("\n")[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[300, 10_000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--optimizers", nargs="+", default=["adam-lbfgs", "lm"])
    ap.add_argument("--options", default="{}", help='JSON: {"lm": {...}, "adam-lbfgs": {...}} passed to fit')
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run (recorded as an error)")
    ap.add_argument("--out")
    ap.add_argument("--append", action="store_true", help="add to the runs already in --out")
    ap.add_argument("--table")
    ap.add_argument("--one", nargs=3, metavar=("N", "SEED", "OPTIMIZER"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", type=int, metavar="N", help="peak memory of 3 LM iterations at N (primal, cg)")
    ap.add_argument("--probe-solver", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe_solver:
        print("RESULT " + json.dumps(memory_probe(a.memory_probe, a.probe_solver)), flush=True)
        return {}
    if a.memory_probe:
        probes = []
        for solver in ("primal", "cg"):
            before = machine_state()
            p = subprocess.run([sys.executable, "-m", "benchmarks.lm_map", "--memory-probe", str(a.memory_probe),
                                "--probe-solver", solver], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).resolve().parent.parent)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            rec = json.loads(line[-1][7:]) if line else {"solver": solver, "error": p.stderr[-2000:]}
            rec["machine_before"], rec["machine_after"] = before, machine_state()
            probes.append(rec)
            print(json.dumps(rec), flush=True)
        if a.out:
            doc = read_result(a.out) if Path(a.out).exists() else {"runs": [], "summary": []}
            doc.setdefault("memory_probes", {})[str(a.memory_probe)] = probes
            write_result(a.out, doc, threads=1)  # the probes run in subprocesses on one thread
        return {"memory_probes": probes}
    if a.one:
        opts = json.loads(a.options).get(a.one[2], {})
        print("RESULT " + json.dumps(one_run(int(a.one[0]), int(a.one[1]), a.one[2], opts)), flush=True)
        return {}
    if a.table:
        return print_table(a.table, markdown_table)
    if not a.out:
        ap.error("--out is required (or --table FILE)")
    runs = []
    if a.append and Path(a.out).exists():
        runs = read_result(a.out)["runs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for n in a.ns:
        for s in a.seeds:
            for opt in a.optimizers:
                before = machine_state()
                t0 = time.perf_counter()
                cmd = [sys.executable, "-m", "benchmarks.lm_map", "--one", str(n), str(s), opt, "--options", a.options]
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env,
                                       cwd=Path(__file__).resolve().parent.parent)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                    rec = json.loads(line[-1][7:]) if line else {"n": n, "seed": s, "optimizer": opt,
                                                                   "error": p.stderr[-2000:]}
                except subprocess.TimeoutExpired:
                    rec = {"n": n, "seed": s, "optimizer": opt, "error": f"timeout after {a.timeout} s"}
                rec["machine_before"], rec["machine_after"] = before, machine_state()
                rec["subprocess_wall_s"] = time.perf_counter() - t0
                runs.append(rec)
                print(f"N={n} seed={s} {opt}: " + (f"fit {rec['fit_time_s']:.1f} s, ‖∇‖ {rec['grad_norm']:.3g}, "
                      f"peak {rec['peak_rss_mb']:.0f} MB" if "error" not in rec else rec["error"][-300:]) +
                      f" (load {before.get('load_1m')})", flush=True)
                doc = {"config": {k: v for k, v in vars(a).items() if k != "one"}, "runs": runs,
                       "summary": summarise(runs)}
                write_result(a.out, doc, threads=1)  # the fits run in subprocesses on one thread
    print(markdown_table(doc))
    return doc


if __name__ == "__main__":
    main()
