"""Run every benchmark, write ``benchmarks.json`` + ``benchmarks.png`` and print the markdown tables.

    python -m benchmarks.run [--quick] [--out benchmarks/results]

Sections (see ``svi_speed`` and ``unlearn_bench`` for the definitions):

    svi        ms/step of the stock Trace_ELBO loop vs the direct ELBO on the default BNN
    grid       conjugate BLR (RBF features of synthetic_1d, exact Laplace fit), N × forget fraction:
               unlearning vs retraining time and gap closed, noise floor from a second retraining
    bnn        the default BNN (GGN-diagonal Laplace, minibatch MAP) at N = 10k, 1% forgotten
    params     laplace-downdate on GGN-diagonal / last-layer Laplace BNNs of ~1k to ~100k parameters
    scaling    unlearning time for a fixed |D_f| as the data a posterior carries grows 1k → 100k

torch runs on one intra-op thread: the per-op work is small and on a loaded 2-core machine two
threads mostly wait on each other (measured: 100k-element ops 10-100x slower with 2 threads).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ._io import write_result
from .report import plot, tables, targets
from .svi_speed import svi_step_benchmark
from .unlearn_bench import data_scaling, fidelity_case, problem

LAPLACE_METHODS = {"rkl": {}, "eubo-adjusted": {}, "laplace-downdate": {}}

FULL = {
    "svi": dict(n=600, steps=200, repeats=5, big_n=100_000, big_steps=20, batch_size=1000),
    "grid": dict(sizes=[1000, 10_000, 100_000], fractions=[0.001, 0.01, 0.1], repeats=3, retrain_repeats=3,
                 fixed_k=10, fixed_k_repeats=7, methods=LAPLACE_METHODS),
    "bnn": dict(n=10_000, fractions=[0.01], repeats=3, retrain_repeats=2, methods=LAPLACE_METHODS,
                fit_options={"curvature": "ggn", "structure": "diag", "batch_size": 1000}),
    "params": dict(n=1000, fraction=0.01, repeats=3, retrain_repeats=2,
                   nets=[((32, 32), ["diag", "last-layer"]), ((100, 100), ["diag", "last-layer"]),
                         ((300, 300), ["diag"])],
                   fit_options={"curvature": "ggn", "num_steps": 600, "lbfgs_steps": 50}),
    "scaling": dict(sizes=[1000, 10_000, 100_000], k=10, repeats=7,
                    methods={"laplace-downdate": {}, "rkl": {}, "eubo-adjusted": {}}),
}
QUICK = {
    "svi": dict(n=600, steps=30, repeats=2, big_n=20_000, big_steps=5, batch_size=1000),
    "grid": dict(sizes=[1000], fractions=[0.01], repeats=1, retrain_repeats=1, fixed_k=10, fixed_k_repeats=1,
                 methods={"rkl": {"num_samples": 1000}, "eubo-adjusted": {"num_steps": 200, "window": 50},
                          "laplace-downdate": {}}),
    "bnn": None,
    "params": dict(n=300, fraction=0.01, repeats=1, retrain_repeats=1, nets=[((32, 32), ["diag"])],
                   fit_options={"curvature": "ggn", "num_steps": 100, "lbfgs_steps": 10}),
    "scaling": dict(sizes=[300, 3000], k=5, repeats=1, methods={"laplace-downdate": {}, "rkl": {"num_samples": 500}}),
}


def run(quick: bool = False, seed: int = 0, log=print) -> dict:
    """All sections; returns the JSON-able result."""
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict = {"quick": quick, "seed": seed, "config": json.loads(json.dumps(cfg, default=str))}
    try:
        log("svi: ms/step stock vs direct ...")
        out["svi"] = svi_step_benchmark(seed=seed, **cfg["svi"])
        g = cfg["grid"]
        out["grid"] = []
        for n in g["sizes"]:
            log(f"grid: BLR N={n} ...")
            out["grid"].append(fidelity_case("blr", "laplace", {}, n, g["fractions"], g["methods"], g["repeats"],
                                             g["retrain_repeats"], seed, fixed_k=g["fixed_k"],
                                             fixed_k_repeats=g["fixed_k_repeats"]))
        out["bnn"] = None
        if cfg["bnn"]:
            b = cfg["bnn"]
            log(f"bnn: N={b['n']} ...")
            out["bnn"] = fidelity_case("bnn", "laplace", b["fit_options"], b["n"], b["fractions"], b["methods"],
                                       b["repeats"], b["retrain_repeats"], seed)
        p = cfg["params"]
        out["params"] = []
        for hidden, structures in p["nets"]:
            for s in structures:
                log(f"params: hidden={hidden} structure={s} ...")
                case = fidelity_case("bnn", "laplace", {**p["fit_options"], "structure": s}, p["n"], [p["fraction"]],
                                     {"laplace-downdate": {}}, p["repeats"], p["retrain_repeats"], seed,
                                     hidden=tuple(hidden))
                case.update(hidden=list(hidden), structure=s)
                out["params"].append(case)
        sc = cfg["scaling"]
        log("scaling: fixed |D_f|, growing data ...")
        out["scaling"] = _scaling(out["params"][0], sc, seed, cfg["params"])
    finally:
        torch.set_num_threads(threads)
    out["targets"] = targets(out)
    out["total_s"] = time.perf_counter() - t_start
    return out


def _scaling(first_params_case: dict, sc: dict, seed: int, pcfg: dict) -> dict:
    """Refit the smallest params-sweep posterior (same options) and grow the data it carries."""
    from bayes_unlearn.inference import fit
    from bayes_unlearn.models.forget_sets import forget_random
    from bayes_unlearn.models.data import synthetic_1d

    n0 = sc["sizes"][0]
    p = problem("bnn", n0, seed, tuple(first_params_case["hidden"]))
    post = fit(p["model"], p["x"], p["y"], "laplace", seed=seed, progress=False,
               **{**pcfg["fit_options"], "structure": "diag"})
    extra = synthetic_1d(n=sc["sizes"][-1] - n0, seed=seed + 1)
    x_big, y_big = torch.cat([p["x"], extra.x]), torch.cat([p["y"], extra.y])
    idx = forget_random(n0, sc["k"], seed=seed)
    res = data_scaling(post, x_big, y_big, p["x"][idx], p["y"][idx], sc["sizes"], sc["methods"], sc["repeats"], seed)
    res.update(model=repr(p["model"]), num_params=post.dim, family="laplace (GGN diag)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small configuration (< 2 minutes)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for benchmarks.json and benchmarks.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = run(quick=args.quick, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "benchmarks.json", res, threads=1)  # run() measures on one thread (module docstring)
    plot(res, out / "benchmarks.png")
    print(tables(res))
    print(f"\nwrote {out / 'benchmarks.json'} and {out / 'benchmarks.png'} in {res['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
