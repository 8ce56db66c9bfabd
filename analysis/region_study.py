"""The BNN region-deletion study: every unlearning method against exact retraining.

A 1-32-32-1 tanh BNN is fitted to ``synthetic_1d`` (three input clusters); the points with x in
the removable region (1.5, 3.5) form D_f. Each method unlearns them and is scored by the averaged
per-input predictive KL to ``retrain`` (same inference family) on D_f, D_r and the test grid, and
its gap closed, 1 - d(method, retrain) / d(none, retrain) (see ``analysis.metrics``).

    python -m analysis.region_study [--family laplace|meanfield|...] [--methods "a b:opt=1"] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


from inference import fit, predict
from models import BayesianMLP
from models.datasets import forget_region, split, synthetic_1d
from unlearning import unlearn

from .metrics import gap_closed, predictive_kl, rmse

FAMILY_OPTIONS = {"laplace": {"curvature": "ggn", "structure": "full"},
                  "laplace-diag": {"curvature": "ggn", "structure": "diag"},
                  "laplace-last-layer": {"curvature": "ggn", "structure": "last-layer"},
                  "meanfield": {}, "fullrank": {}}


def parse_variant(text: str) -> tuple[str, dict]:
    """'eubo-adjusted:quantile=0.5,lr=0.01' -> ('eubo-adjusted', {'quantile': 0.5, 'lr': 0.01})."""
    name, _, rest = text.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return name, opts


def run(family: str = "laplace", methods: list[str] | None = None, seed: int = 0, n: int = 300,
        hidden: tuple[int, ...] = (32, 32), progress: bool = False, method_options: dict | None = None) -> dict:
    """Fit, delete the region with every method, and score against retraining. Returns a JSON-able dict."""
    data = synthetic_1d(n=n, seed=seed)
    model = BayesianMLP(1, hidden, "tanh", prior_scale="fan_in", noise=0.1)
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, family.split("-")[0], seed=seed, progress=progress, **FAMILY_OPTIONS[family])
    fit_time = time.perf_counter() - t0
    idx = forget_region(data.x, *data.region)
    xr, yr, xf, yf = split(data.x, data.y, idx)
    splits = {"forget": xf, "retain": xr, "test": data.x_grid}
    in_region = (data.x_grid[:, 0] >= data.region[0]) & (data.x_grid[:, 0] <= data.region[1])
    results = []
    ref = unlearn(post, xf, yf, "retrain", seed=seed + 1, progress=progress)
    ref_pred = {s: predict(ref.posterior, x, seed=seed) for s, x in splits.items()}
    methods = methods or ["none", "eubo", "eubo-adjusted", "rkl", "laplace-downdate", "laplace-refit", "psis",
                          "retrain-warm"]
    d_none = {}
    for label in ["none"] + [m for m in methods if m != "none"]:
        name, opts = parse_variant(label)
        opts = {**(method_options or {}).get(name, {}), **opts}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = unlearn(post, xf, yf, name, seed=seed, progress=progress, **opts)
            except Exception as e:  # a method that cannot run on this posterior is reported, not hidden
                results.append({"method": label, "error": f"{type(e).__name__}: {e}"})
                continue
        preds = {}
        row = {"method": label, "options": opts, "wall_time_s": res.wall_time_s, "warnings": list(res.warnings),
               "diverged": res.diverged, "diagnostics": res.diagnostics}
        for s, x in splits.items():
            preds[s] = p = predict(res.posterior, x, seed=seed)
            kl = predictive_kl(p, ref_pred[s])
            if name == "none":
                d_none[s] = kl
            row[f"{s}/predictive_kl"] = kl
            row[f"{s}/gap_closed"] = gap_closed(kl, d_none[s])
        row["region/predictive_std"] = float(preds["test"].std[in_region].mean())
        preds["test"] = predict(res.posterior, data.x_test, seed=seed)  # RMSE needs targets: the test set
        for s, y in (("forget", yf), ("retain", yr), ("test", data.y_test)):
            row[f"{s}/rmse"] = rmse(preds[s], y)
        # weight-space distance of the means (a weak signal for nets: modes and symmetries differ)
        row["mean_distance_to_retrain"] = float((res.posterior.loc.double() - ref.posterior.loc.double()).norm())
        results.append(row)
    return {"family": family, "seed": seed, "n": n, "num_forget": len(idx), "fit_time_s": fit_time,
            "retrain_time_s": ref.wall_time_s,
            "retrain_region_std": float(ref_pred["test"].std[in_region].mean()),
            "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="laplace", choices=sorted(FAMILY_OPTIONS))
    ap.add_argument("--methods", default=None,
                    help="space-separated methods, each NAME or NAME:key=value,key=value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    out = run(args.family, args.methods.split() if args.methods else None, args.seed)
    print(f"family {out['family']}: fit {out['fit_time_s']:.1f} s, retrain {out['retrain_time_s']:.1f} s, "
          f"{out['num_forget']} points forgotten")
    print(f"{'method':<34}{'KL forget':>11}{'KL retain':>11}{'KL test':>11}{'gap f':>8}{'gap r':>8}{'gap t':>8}"
          f"{'time s':>8}{'RMSE f':>8}{'RMSE r':>8}{'RMSE t':>8}{'|mu-mu_rt|':>11}")
    for r in out["results"]:
        if "error" in r:
            print(f"{r['method']:<34} error: {r['error'][:90]}")
            continue
        print(f"{r['method']:<34}{r['forget/predictive_kl']:>11.4g}{r['retain/predictive_kl']:>11.4g}"
              f"{r['test/predictive_kl']:>11.4g}{r['forget/gap_closed']:>8.2f}{r['retain/gap_closed']:>8.2f}"
              f"{r['test/gap_closed']:>8.2f}{r['wall_time_s']:>8.1f}{r['forget/rmse']:>8.3f}{r['retain/rmse']:>8.3f}"
              f"{r['test/rmse']:>8.3f}{r['mean_distance_to_retrain']:>11.3f}" + ("  DIVERGED" if r["diverged"] else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
