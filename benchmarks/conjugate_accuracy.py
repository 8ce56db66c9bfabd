"""Accuracy of eubo, eubo-adjusted, rkl, psis and laplace-downdate on conjugate Bayesian linear
regression, against the closed-form retrained posterior, and calibration of their warnings.

The model is exact here: a "laplace" fit of BayesianLinearRegression is the closed-form posterior,
so KL(q_method ‖ p(θ | D_r)) (``analysis.metrics.gaussian_kl`` to a "laplace" retrain, KL ~1e-14)
is each method's own error. Data: x ~ N(0, I_D), y = x·w + 0.5 + N(0, σ²), w ~ N(0, I), σ = 0.3,
prior scale 1; θ = (w, b) has D + 1 dimensions. Deletions: "threshold" forgets the rows with
x[:, 0] above its (1 - frac) quantile (the user's report: D = 6, i.e. 7 parameters, N = 200,
34 %), "random" a uniformly random frac of the rows.

Parts (``--part``):
  is-cal   importance reweighting (rkl, psis) on the calibration grid: seeds 0-1,
           (N, D) ∈ {(100, 3), (200, 6), (500, 10)}, frac ∈ {2, 5, 10, 20, 34, 50 %}, both kinds;
           the thresholds of unlearning.verdict (ess_kl_uncertain) and of the warnings were chosen here.
  is-eval  the same check on other seeds and shapes: seeds 2-4, (N, D) ∈ {(150, 4), (300, 8)},
           frac ∈ {2, 5, 10, 20, 34 %}.
  methods  every method on the user's scenario (N 200, D 6, threshold 34 %) and on a 10 % threshold
           deletion, seeds 5-9 (evaluation seeds), with default options. ``--seeds 0,1 --methods
           eubo-adjusted --fracs 0.05,0.1,0.2,0.34`` is the calibration run of eubo-adjusted's
           clipped-mass warning.
  svi      eubo from a full-rank SVI posterior (user's scenario, seeds 5-9), against exact retraining
           and against retraining the same SVI.

Usage: python -m benchmarks.conjugate_accuracy --part is-cal [--part ...] [--out benchmarks/results]
Writes benchmarks/results/conjugate_accuracy_<part>.json (one row per run) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayes_unlearn.analysis.metrics import gaussian_kl  # noqa: E402
from bayes_unlearn.analysis.stats import bootstrap_ci  # noqa: E402
from bayes_unlearn.inference import fit  # noqa: E402
from bayes_unlearn.models.forget_sets import split  # noqa: E402
from bayes_unlearn.models.linear import BayesianLinearRegression  # noqa: E402
from bayes_unlearn.unlearning import unlearn  # noqa: E402
from benchmarks._io import write_result  # noqa: E402

NOISE = 0.3


def scenario(seed: int, n: int, d: int, frac: float, kind: str, method: str = "laplace") -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = x @ w + 0.5 + NOISE * torch.randn(n, generator=g)
    model = BayesianLinearRegression(d, 1.0, NOISE)
    if kind == "threshold":
        idx = torch.nonzero(x[:, 0] > x[:, 0].quantile(1 - frac)).flatten()
    else:
        idx = torch.randperm(n, generator=g)[:max(1, int(round(frac * n)))].sort().values
    xr, yr, xf, yf = split(x, y, idx)
    post = fit(model, x, y, method, progress=False, seed=seed)
    exact = fit(model, xr, yr, "laplace", progress=False)
    return {"post": post, "exact": exact, "xf": xf, "yf": yf, "xr": xr, "yr": yr, "model": model,
            "n_forget": len(idx)}


def run_method(sc: dict, method: str, seed: int, **options) -> dict:
    t0 = time.perf_counter()
    res = unlearn(sc["post"], sc["xf"], sc["yf"], method, seed=seed, **options)
    keep = ("ess", "pareto_k", "ess_kl", "num_samples", "clipped_mass", "rise", "converged")
    return {"method": method, "options": options, "kl": gaussian_kl(res.posterior, sc["exact"]),
            "kl_none": gaussian_kl(sc["post"], sc["exact"]), "verdict": res.verdict["verdict"],
            "verdict_reasons": res.verdict["reasons"], "warnings": list(res.warnings), "diverged": res.diverged,
            "steps": res.steps, "time_s": time.perf_counter() - t0,
            **{k: res.diagnostics[k] for k in keep if k in res.diagnostics}}


def part_is(seeds, shapes, fracs) -> list[dict]:
    rows = []
    for seed in seeds:
        for n, d in shapes:
            for kind in ("threshold", "random"):
                for frac in fracs:
                    sc = scenario(seed, n, d, frac, kind)
                    for m in ("rkl", "psis"):
                        rows.append({"seed": seed, "N": n, "D": d, "kind": kind, "frac": frac,
                                     **run_method(sc, m, seed)})
                    print(seed, n, d, kind, frac, [(r["method"], round(r["kl"], 4), r["verdict"], len(r["warnings"]))
                                                   for r in rows[-2:]], flush=True)
    return rows


METHODS = ("laplace-downdate", "rkl", "psis", "eubo", "eubo-adjusted")


def part_methods(seeds, fracs=(0.34, 0.1), methods=METHODS) -> list[dict]:
    rows = []
    for seed in seeds:
        for frac in fracs:
            sc = scenario(seed, 200, 6, frac, "threshold")
            for m in methods:
                rows.append({"seed": seed, "N": 200, "D": 6, "kind": "threshold", "frac": frac,
                             **run_method(sc, m, seed)})
                r = rows[-1]
                print(seed, frac, m, round(r["kl"], 4), r["verdict"], len(r["warnings"]), round(r["time_s"], 1),
                      flush=True)
    return rows


def part_svi(seeds) -> list[dict]:
    rows = []
    for seed in seeds:
        sc = scenario(seed, 200, 6, 0.34, "threshold", method="fullrank")
        retrain_svi = unlearn(sc["post"], sc["xf"], sc["yf"], "retrain", seed=seed).posterior
        for m in ("eubo", "none"):
            r = run_method(sc, m, seed)
            rows.append({"seed": seed, "N": 200, "D": 6, "kind": "threshold", "frac": 0.34, "old": "fullrank",
                         "kl_retrain_svi_to_exact": gaussian_kl(retrain_svi, sc["exact"]), **r})
            print(seed, m, round(r["kl"], 4), round(rows[-1]["kl_retrain_svi_to_exact"], 4), r["verdict"], flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per (method, scenario): mean and 95 % bootstrap interval of KL over seeds; warned / non-ok counts; and for
    the reweighting grid the confusion of 'flagged' (a warning or a non-ok verdict) against KL > 0.02."""
    out: dict = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r.get("old", "laplace"), r["N"], r["D"], r["kind"], r["frac"]), []).append(r)
    for key, rs in groups.items():
        kls = [r["kl"] for r in rs]
        m, lo, hi = bootstrap_ci(kls)
        out["|".join(map(str, key))] = {"n": len(rs), "kl_mean": m, "kl_ci95": [lo, hi],
                                        "kl_median": sorted(kls)[len(kls) // 2],
                                        "kl_max": max(kls), "warned": sum(bool(r["warnings"]) for r in rs),
                                        "not_ok": sum(r["verdict"] != "ok" for r in rs)}
    conf = {}
    for meth in sorted({r["method"] for r in rows}):
        rs = [r for r in rows if r["method"] == meth]
        bad = [r for r in rs if r["kl"] > 0.02]
        good = [r for r in rs if r["kl"] <= 0.02]
        conf[meth] = {"runs": len(rs), "kl_above_0.02": len(bad),
                      "kl_above_0.02_without_warning": sum(not r["warnings"] for r in bad),
                      "kl_above_0.02_with_ok_verdict": sum(r["verdict"] == "ok" for r in bad),
                      "kl_below_0.02_warned": sum(bool(r["warnings"]) for r in good), "kl_below_0.02": len(good)}
    return {"groups": out, "flags_vs_kl": conf}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", action="append", choices=["is-cal", "is-eval", "methods", "svi"], required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (overrides the part's default)")
    ap.add_argument("--methods", default=None, help="comma-separated methods for --part methods")
    ap.add_argument("--fracs", default=None, help="comma-separated deletion fractions for --part methods")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    for part in args.part:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
        t0 = time.perf_counter()
        if part == "is-cal":
            rows = part_is(seeds or [0, 1], [(100, 3), (200, 6), (500, 10)], [0.02, 0.05, 0.1, 0.2, 0.34, 0.5])
        elif part == "is-eval":
            rows = part_is(seeds or [2, 3, 4], [(150, 4), (300, 8)], [0.02, 0.05, 0.1, 0.2, 0.34])
        elif part == "methods":
            kw = {}
            if args.methods:
                kw["methods"] = tuple(args.methods.split(","))
            if args.fracs:
                kw["fracs"] = tuple(float(f) for f in args.fracs.split(","))
            rows = part_methods(seeds or [5, 6, 7, 8, 9], **kw)
        else:
            rows = part_svi(seeds or [5, 6, 7, 8, 9])
        summary = summarise(rows)
        res = {"part": part, "wall_s": time.perf_counter() - t0, "noise": NOISE, "summary": summary, "rows": rows}
        tag = "" if args.seeds is None and args.methods is None else \
            "_" + "_".join(x for x in ((args.methods or "").replace(",", "+"), "seeds" + (args.seeds or "").replace(",", "-")) if x)
        path = Path(args.out) / f"conjugate_accuracy_{part}{tag}.json"
        write_result(path, res)
        print(json.dumps(summary["flags_vs_kl"], indent=1))
        print("wrote", path)


if __name__ == "__main__":
    main()
