"""KFAC against the diagonal GGN: cost at ≈100k parameters, and accuracy where the full GGN is affordable.

    python -m benchmarks.kfac_scale                 # full run (5 seeds each part), ≈ 10 min on one thread
    python -m benchmarks.kfac_scale --quick         # seconds; run by tests/test_kfac.py
    python -m benchmarks.kfac_scale --out FILE      # default benchmarks/results/kfac_scale.json

**Scale** (per seed): ``BayesianMLP(1, (H, H), "tanh", prior_scale="fan_in", noise=0.1)`` with H = 315
(d = 100 486), ``synthetic_1d(n=3000, seed)``, θ from a short MAP search (``inference.laplace.find_map``:
at most 300 Adam steps of the direct ELBO, no L-BFGS polish -- a mode is not needed to time curvature, whose
cost does not depend on where it is taken). Then, for KFAC (``inference.curvature.kfac_factors`` +
``Kron.from_factors``) and for the diagonal GGN (``ggn_diagonal`` + the prior's curvature diagonal: what
``structure="diag"`` builds):

    (a) build      the posterior covariance from the N points
    (b) downdate   the covariance of the retained data after a 1 % random deletion (Kron.downdate with the
                   forget set's factors; the diagonal minus the forget set's GGN diagonal, as laplace-downdate)
    (c) predictive the linearised predictive std at 1000 test inputs on [-5, 5]: KFAC from the layer signals
                   (``Kron.jacobian_quadratic_from_signals``, no Jacobian formed); diag from the mean's
                   Jacobian (``per_example_jacobians``, 1024 rows at a time as ``inference.predict`` does)

Time: wall clock of a second call (the first, a warm-up, measures memory). Peak memory: the largest resident
set size (``/proc/self/statm``, sampled every 0.5 ms by a thread) during the call minus the one at its start,
with glibc's malloc told to return large blocks to the system (``mallopt``), so the number is the phase's own
working memory, not the process's high-water mark.

**Accuracy** (per seed, the default BNN 1-32-32-1, d = 1153, ``synthetic_1d(n=300, seed)``):
``fit(..., "laplace", curvature="ggn", structure="full")`` and the same with ``structure="diag"`` (same seed:
same θ*), their ``predict(..., linearised=True)`` at 1000 inputs on [-5, 5], and KFAC at the same θ*. Reported:
the relative error of the epistemic std (√(J Σ Jᵀ)) and of the total std (√(σ² + J Σ Jᵀ)) against the full
GGN Laplace, |s − s_full| / s_full, as the median (and the maximum) over the test inputs.

Summaries: the median over seeds with a 95 % percentile-bootstrap interval (``analysis.stats.bootstrap_ci``).
One torch thread.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._io import machine_state, write_result

from bayes_unlearn.analysis.stats import bootstrap_ci
from bayes_unlearn.inference import fit
from bayes_unlearn.inference.covariance.kron import Kron
from bayes_unlearn.inference.curvature import (ggn_diagonal, kfac_factors, layer_signals, per_example_jacobians,
                                               prior_curvature_diagonal)
from bayes_unlearn.inference.laplace import find_map
from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.inference.predict import predict
from bayes_unlearn.models import BayesianMLP
from bayes_unlearn.models.data import synthetic_1d

CONFIGS = {
    "full": {"scale": {"hidden": (315, 315), "n": 3000, "map_steps": 300, "n_test": 1000, "seeds": [0, 1, 2, 3, 4]},
             "accuracy": {"hidden": (32, 32), "n": 300, "fit_options": {}, "n_test": 1000, "seeds": [0, 1, 2, 3, 4]}},
    "quick": {"scale": {"hidden": (24, 24), "n": 200, "map_steps": 20, "n_test": 50, "seeds": [0, 1]},
              "accuracy": {"hidden": (6, 6), "n": 40, "fit_options": {"num_steps": 100, "lbfgs_steps": 100},
                           "n_test": 50, "seeds": [0, 1]}},
}
NOISE = 0.1
FORGET_FRACTION = 0.01
PAGE = os.sysconf("SC_PAGE_SIZE")


def _malloc_returns_memory() -> bool:
    """Fix glibc's mmap threshold at 128 KiB (no dynamic raise), so freed tensors leave the resident set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024)) and bool(libc.mallopt(-1, 1024 * 1024))  # M_MMAP/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Largest resident set size above the start, sampled every ``interval`` s while the block runs."""

    def __init__(self, interval: float = 5e-4):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.start = self.peak = _rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def measure(fn):
    """(result, seconds, peak MiB): a first call under the memory sampler, then a timed call without it."""
    with PeakRSS() as mem:
        fn()
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, mem.mib


def _test_inputs(n: int) -> torch.Tensor:
    return torch.linspace(-5.0, 5.0, n, dtype=torch.float64)[:, None]


def scale_seed(cfg: dict, seed: int) -> dict:
    """One seed of the scale part (module docstring)."""
    model = BayesianMLP(1, cfg["hidden"], "tanh", prior_scale="fan_in", noise=NOISE)
    data = synthetic_1d(n=cfg["n"], seed=seed)
    bound = BoundModel(model, data.x, data.y)
    t0 = time.perf_counter()
    theta, rep = find_map(bound, data.x, data.y, seed=seed, num_steps=cfg["map_steps"], lbfgs_steps=0,
                          progress=False, elbo="direct", bound_model=bound, batch_seed=seed)
    map_s = time.perf_counter() - t0
    x = data.x.double()
    n_f = max(1, round(FORGET_FRACTION * len(x)))
    forget = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_f]
    xf, xt = x[forget], _test_inputs(cfg["n_test"])
    rec = {"seed": seed, "d": bound.layout.dim, "n": len(x), "n_forget": n_f, "map_steps": rep["steps"],
           "map_s": map_s, "grad_norm_at_theta": rep["grad_norm_at_map"], "machine_before": machine_state()}

    def kfac_build():
        return Kron.from_factors(kfac_factors(bound, x, theta), prior_curvature_diagonal(bound, x, theta))

    K, t, m = measure(kfac_build)
    rec["kfac"] = {"build": {"time_s": t, "peak_mib": m}}
    _, t, m = measure(lambda: K.downdate(kfac_factors(bound, xf, theta)))
    rec["kfac"]["downdate"] = {"time_s": t, "peak_mib": m}
    std_k, t, m = measure(lambda: (NOISE**2 + K.jacobian_quadratic_from_signals(layer_signals(bound, xt, theta))).sqrt())
    rec["kfac"]["predictive"] = {"time_s": t, "peak_mib": m}

    def diag_build():
        return prior_curvature_diagonal(bound, x, theta) + ggn_diagonal(bound, x, theta)

    prec, t, m = measure(diag_build)
    rec["diag"] = {"build": {"time_s": t, "peak_mib": m}}
    _, t, m = measure(lambda: prec - ggn_diagonal(bound, xf, theta))
    rec["diag"]["downdate"] = {"time_s": t, "peak_mib": m}
    var = 1.0 / prec

    def diag_predictive():
        epi = torch.cat([(per_example_jacobians(bound, xt[a:a + 1024], theta, with_scale=False)[0] ** 2 * var).sum(1)
                         for a in range(0, len(xt), 1024)])
        return (NOISE**2 + epi).sqrt()

    std_d, t, m = measure(diag_predictive)
    rec["diag"]["predictive"] = {"time_s": t, "peak_mib": m}
    rec["std_kfac_over_diag_median"] = float((std_k / std_d).median())
    rec["machine_after"] = machine_state()
    return rec


def _rel(a: torch.Tensor, ref: torch.Tensor) -> dict:
    r = ((a - ref).abs() / ref).double()
    return {"median": float(r.median()), "max": float(r.max())}


def accuracy_seed(cfg: dict, seed: int) -> dict:
    """One seed of the accuracy part (module docstring)."""
    model = BayesianMLP(1, cfg["hidden"], "tanh", prior_scale="fan_in", noise=NOISE)
    data = synthetic_1d(n=cfg["n"], seed=seed)
    opts = dict(cfg["fit_options"], seed=seed, progress=False)
    full = fit(model, data.x, data.y, "laplace", curvature="ggn", structure="full", **opts)
    diag = fit(model, data.x, data.y, "laplace", curvature="ggn", structure="diag", **opts)
    theta = full.loc.double()
    xt = _test_inputs(cfg["n_test"])
    p_full, p_diag = predict(full, xt, linearised=True), predict(diag, xt, linearised=True)
    bound, x = full.bound_model(), data.x.double()
    t0 = time.perf_counter()
    K = Kron.from_factors(kfac_factors(bound, x, theta), prior_curvature_diagonal(bound, x, theta))
    kfac_s = time.perf_counter() - t0
    epi_k = K.jacobian_quadratic_from_signals(layer_signals(bound, xt, theta)).clamp_min(0).sqrt()
    std_k = (NOISE**2 + epi_k**2).sqrt()
    ef, ed = p_full.epistemic_std.double(), p_diag.epistemic_std.double()
    return {"seed": seed, "d": bound.layout.dim, "n": len(x),
            "map_theta_max_abs_diff_full_vs_diag": float((full.loc.double() - diag.loc.double()).abs().max()),
            "grad_norm_at_map": full.meta["report"]["grad_norm_at_map"],
            "curvature_time_s": {"full": full.meta["curvature"].get("curvature_time_s"),
                                 "diag": diag.meta["curvature"].get("curvature_time_s"), "kfac": kfac_s},
            "kfac": {"epistemic_std_rel_error": _rel(epi_k, ef), "std_rel_error": _rel(std_k, p_full.std.double())},
            "diag": {"epistemic_std_rel_error": _rel(ed, ef), "std_rel_error": _rel(p_diag.std.double(),
                                                                                   p_full.std.double())},
            "epistemic_std_full_median": float(ef.median())}


def _summary(values: list[float]) -> dict:
    est, lo, hi = bootstrap_ci(values, stat=np.median)
    return {"median": est, "ci95": [lo, hi], "n": len(values)}


def summarise(doc: dict) -> dict:
    runs, acc = doc["scale_runs"], doc["accuracy_runs"]
    scale = {m: {ph: {k: _summary([r[m][ph][k] for r in runs]) for k in ("time_s", "peak_mib")}
                 for ph in ("build", "downdate", "predictive")} for m in ("kfac", "diag")}
    accuracy = {m: {k: _summary([r[m][k]["median"] for r in acc]) for k in ("epistemic_std_rel_error", "std_rel_error")}
                for m in ("kfac", "diag")}
    return {"scale": scale, "accuracy": accuracy}


def table(doc: dict) -> str:
    s, a = doc["scale"], doc["accuracy"]
    d = doc["scale_runs"][0]["d"] if doc["scale_runs"] else "?"
    fmt = lambda v, p=3: f"{v['median']:.{p}g} [{v['ci95'][0]:.{p}g}, {v['ci95'][1]:.{p}g}]"  # noqa: E731
    lines = [f"Scale: d = {d}, N = {doc['config']['scale']['n']}, median [95% CI] over {s['kfac']['build']['time_s']['n']} seeds",
             "", "| phase | KFAC time (s) | diag time (s) | KFAC peak (MiB) | diag peak (MiB) |", "|---|---|---|---|---|"]
    for ph in ("build", "downdate", "predictive"):
        lines.append(f"| {ph} | {fmt(s['kfac'][ph]['time_s'])} | {fmt(s['diag'][ph]['time_s'])} | "
                     f"{fmt(s['kfac'][ph]['peak_mib'])} | {fmt(s['diag'][ph]['peak_mib'])} |")
    d2 = doc["accuracy_runs"][0]["d"] if doc["accuracy_runs"] else "?"
    lines += ["", f"Accuracy vs the full GGN Laplace (d = {d2}): relative error of the linearised predictive std, "
              "median over test inputs; median [95% CI] over seeds", "",
              "| structure | epistemic std | total std |", "|---|---|---|"]
    for m in ("kfac", "diag"):
        lines.append(f"| {m} | {fmt(a[m]['epistemic_std_rel_error'])} | {fmt(a[m]['std_rel_error'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kfac_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run (seconds)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kfac_scale.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = CONFIGS["quick" if a.quick else "full"]
    doc = {"quick": a.quick, "config": cfg, "forget_fraction": FORGET_FRACTION, "noise": NOISE,
           "malloc_returns_memory": _malloc_returns_memory(), "scale_runs": [], "accuracy_runs": []}
    t0 = time.perf_counter()
    for seed in cfg["scale"]["seeds"]:
        doc["scale_runs"].append(scale_seed(cfg["scale"], seed))
        print(f"scale seed {seed}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    for seed in cfg["accuracy"]["seeds"]:
        doc["accuracy_runs"].append(accuracy_seed(cfg["accuracy"], seed))
        print(f"accuracy seed {seed}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    doc.update(summarise(doc))
    doc["wall_time_s"] = time.perf_counter() - t0
    write_result(a.out, doc, threads=1)
    print(table(doc))
    return doc


if __name__ == "__main__":
    main()
