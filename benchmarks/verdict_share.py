"""Does the verdict's emptied-region check flag the deletions where a warm update is told apart from retraining?

    python -m benchmarks.verdict_share --n 10000 --seeds 3 4 5 6 7 8 9 10 11 12 \\
        --scenarios region random:0.01 \\
        --ranks benchmarks/results/bnn_region_10k_s12.json benchmarks/results/bnn_random1pct_10k_s12.json \\
        --out benchmarks/results/verdict_share_10k.json

For each seed the original fit of ``benchmarks.bnn_unlearning`` is redone (the same model, options and
seed, so the same θ*), and for each scenario this records the verdict's share check
(:func:`unlearning.verdict.forget_share`),

    κ = max_v vᵀ G_f(θ*) v / vᵀ Λ v,   flagged when κ > ½ (λ = κ/(1−κ) > 1),

its cost, and the verdict ``lm-refit`` now gets. ``--ranks`` joins, per seed and scenario, what the
benchmark measured for ``lm-refit`` against the retrain ensemble (its exchangeability rank among the
references and the held-out retrain, its ρ per split), so that each flag can be read against a miss.
No retrain runs here: the flag is computed without one, which is the point.

``--sweep docs/sweeps/NAME`` does the same for every task of a committed sweep (its own configuration, data,
model and forget set, refitted with today's code) and joins what the sweep recorded for ``lm-refit``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks._io import machine_state, write_result


def measured(paths: list[str]) -> dict:
    """``{(seed, scenario): lm-refit's row}`` from ``benchmarks.bnn_unlearning`` JSONs."""
    out = {}
    for p in paths or []:
        doc = json.loads(Path(p).read_text())
        for s in doc["per_seed"]:
            for r in s["rows"]:
                if r["method"] == "lm-refit":
                    out[(s["seed"], s["scenario"])] = r
    return out


def run_seed(seed: int, n: int, scenarios: list[str], joined: dict, fit_options: dict | None = None) -> list[dict]:
    from bayes_unlearn.models.data import synthetic_1d
    from bayes_unlearn.models.forget_sets import split
    from bayes_unlearn.unlearning import unlearn
    from bayes_unlearn.unlearning.verdict import VERDICT_RULES, forget_share

    from benchmarks.bnn_unlearning import SPLITS, forget_indices, original_fit

    data = synthetic_1d(n=n, seed=seed)
    t0 = time.perf_counter()
    post = original_fit(data, seed, fit_options=fit_options)
    fit_s = time.perf_counter() - t0
    rows = []
    for sc in scenarios:
        xr, yr, xf, yf = split(data.x, data.y, forget_indices(data.x, sc, seed))
        t0 = time.perf_counter()
        share = forget_share(post, xf, yf, seed=seed)
        share_s = time.perf_counter() - t0
        res = unlearn(post, xf, yf, "lm-refit", seed=seed)
        row = {"seed": seed, "scenario": sc, "num_forget": len(xf), "fit_time_s": fit_s, "share_time_s": share_s,
               **share, "flagged": share.get("forget_share", 0.0) > VERDICT_RULES["share_uncertain"],
               "lm_refit_verdict": res.verdict["verdict"], "lm_refit_reasons": res.verdict["reasons"],
               "lm_refit_wall_time_s": res.wall_time_s, "lm_refit_verdict_time_s": res.verdict_time_s}
        m = joined.get((seed, sc))
        if m is not None:
            row.update({"measured_rank": {s: m.get(f"{s}/rank") for s in SPLITS}, "measured_rank_n": m.get("rank_n"),
                        "measured_floor_ratio": {s: m.get(f"{s}/floor_ratio") for s in SPLITS},
                        "measured_within_floor": m.get("within_floor"), "measured_verdict": m.get("verdict")})
        rows.append(row)
    return rows


def run_sweep_task(folder: Path) -> dict:
    """One task of a committed sweep (``docs/sweeps/<name>/<scenario>/seedN``): its configuration refitted with
    today's code (the same seed and options), κ of its request, and what the sweep recorded for ``lm-refit``
    (verdict, gap closed, within the floor) -- the sweep's own θ* may differ where the fit changed since."""
    from bayes_unlearn.analysis.config import load_config
    from bayes_unlearn.analysis.experiment import _plan
    from bayes_unlearn.inference import fit
    from bayes_unlearn.models.forget_sets import split
    from bayes_unlearn.unlearning.verdict import VERDICT_RULES, forget_share

    from benchmarks.bnn_unlearning import SPLITS

    cfg = load_config(folder / "config.toml")
    _, data, model, idx, _, _ = _plan(cfg)
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, cfg["inference"]["method"], seed=cfg["seed"], progress=False,
               **cfg["inference"]["options"])
    fit_s = time.perf_counter() - t0
    xr, yr, xf, yf = split(data.x, data.y, idx)
    t0 = time.perf_counter()
    share = forget_share(post, xf, yf, seed=cfg["seed"], x_retain=xr, y_retain=yr)
    row = {"task": f"{folder.parent.name}/{folder.name}", "scenario": folder.parent.name, "seed": cfg["seed"],
           "num_forget": len(xf), "fit_time_s": fit_s, "share_time_s": time.perf_counter() - t0, **share,
           "flagged": share.get("forget_share", 0.0) > VERDICT_RULES["share_uncertain"]}
    doc = json.loads((folder / "metrics.json").read_text())
    lm = next((r for r in doc["results"] if r["method"] == "lm-refit"), None)
    if lm is not None:
        m = lm.get("metrics") or {}
        row.update({"measured_verdict": lm.get("verdict"),
                    "measured_gap_closed": {s: m.get(f"{s}/gap_closed") for s in SPLITS},
                    "measured_within_floor": all(m.get(f"{s}/within_noise_floor") == 1.0 for s in SPLITS)})
    return row


def summarise(rows: list[dict]) -> dict:
    """Per scenario: how many seeds were flagged, and how many of the measured misses (rank n of n on D_f
    or test, or ρ > 1 on some split) carried the flag."""
    out = {}
    for sc in sorted({r["scenario"] for r in rows}):
        rs = [r for r in rows if r["scenario"] == sc]
        kap = [r.get("forget_share") for r in rs if r.get("forget_share") is not None]
        miss = [r for r in rs if r.get("measured_rank") is not None and (
            r["measured_within_floor"] is False
            or (r.get("measured_rank_n") is not None  # a JSON from before the ranks: the floor alone
                and any(r["measured_rank"][s] == r["measured_rank_n"] for s in ("forget", "test"))))]
        out[sc] = {"seeds": len(rs), "flagged": sum(r["flagged"] for r in rs),
                   "kappa_min": min(kap) if kap else None, "kappa_max": max(kap) if kap else None,
                   "lm_refit_ok": sum(r["lm_refit_verdict"] == "ok" for r in rs),
                   "measured_misses": len(miss), "misses_flagged": sum(r["flagged"] for r in miss),
                   "misses_ok_before": sum(r.get("measured_verdict") == "ok" for r in miss),
                   "misses_ok_now": sum(r["lm_refit_verdict"] == "ok" for r in miss),
                   "share_time_s_max": max(r["share_time_s"] for r in rs)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.verdict_share", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    ap.add_argument("--scenarios", nargs="+", default=["region", "random:0.01"])
    ap.add_argument("--ranks", nargs="*", default=[], help="benchmarks.bnn_unlearning JSONs to join lm-refit's rows")
    ap.add_argument("--fit-options", default="{}", help="JSON options for the fit (default: the benchmarks' own)")
    ap.add_argument("--sweep", help="instead: every task folder of a committed sweep (docs/sweeps/NAME), refitted")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.sweep:
        rows = []
        doc = {"config": vars(a), "machine_before": machine_state(), "rows": rows}
        for folder in sorted(Path(a.sweep).glob("*/seed*")):
            rows.append(run_sweep_task(folder))
            print(json.dumps({k: rows[-1].get(k) for k in ("task", "forget_share", "flagged", "measured_verdict",
                                                            "measured_gap_closed", "measured_within_floor")}), flush=True)
            write_result(a.out, doc, threads=1)
        return doc
    joined = measured(a.ranks)
    rows: list[dict] = []
    doc = {"config": vars(a), "machine_before": machine_state(), "rows": rows}
    for seed in a.seeds:
        rows += run_seed(seed, a.n, a.scenarios, joined, json.loads(a.fit_options))
        doc["summary"] = summarise(rows)
        write_result(a.out, doc, threads=1)
        for r in rows[-len(a.scenarios):]:
            print(json.dumps({k: r.get(k) for k in ("seed", "scenario", "forget_share", "flagged", "lm_refit_verdict",
                                                    "measured_rank", "measured_within_floor")}), flush=True)
    print(json.dumps(doc["summary"], indent=1))
    return doc


if __name__ == "__main__":
    main()
