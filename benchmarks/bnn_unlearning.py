"""Unlearning a Bayesian neural net against a retrain ensemble: gap closed, speed-ups and verdicts.

    python -m benchmarks.bnn_unlearning --scenario region --seeds 3 4 5 6 7 --out benchmarks/results/bnn_region.json
    python -m benchmarks.bnn_unlearning --table benchmarks/results/bnn_region.json     # the markdown table

For each seed: synthetic_1d(n, seed), the default 1-32-32-1 tanh BNN, a Laplace (GGN, ``--structure``)
or SVI (``--family``) posterior; a forget set (``region``: x ∈ (1.5, 3.5); ``random:F``: a fraction F
of rows). Methods are timed in the same process, one after another, on one torch thread.

Reference: K retrains from scratch (``retrain`` with seeds s, s+1000, …; the first one is the timed
``retrain``). Their predictive (linearised for Laplace posteriors, as ``bayes-unlearn run``) is
moment-matched per input into the ensemble predictive; every method's distance is the mean over inputs
of KL(method ‖ ensemble) on D_f, D_r and test, and

    gap closed = 1 − d(method, ensemble) / d(none, ensemble).

Noise floor: each retrain's distance to the ensemble of the other K−1 (leave-one-out), reported as the
gap closed a retrain itself reaches ("retrain-loo"): a method at or above it is indistinguishable from
retraining. Speed-ups are against the timed ``retrain`` (the library default) and ``retrain-lm`` (the
same inference with ``optimizer="lm"`` from a cold start, the fastest retraining the library offers).

Summary: median over seeds with a 95 % bootstrap interval (2000 resamples, seeded).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks._io import machine_state, print_table, write_result

SPLITS = ("forget", "retain", "test")


def bootstrap_ci(values: list[float], stat=None, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, 2.5 %, 97.5 %) of ``stat`` (default median) by resampling ``values`` with replacement
    (:func:`analysis.stats.bootstrap_ci`, 95 % percentile interval)."""
    import numpy as np

    from bayes_unlearn.analysis.stats import bootstrap_ci as _bootstrap_ci

    return _bootstrap_ci(values, level=0.95, n_boot=n_boot, seed=seed, stat=stat or np.median)


def _mixture(preds: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the moment-matched mixture (``analysis.ensemble.mixture``, the reference of `run`)."""
    from bayes_unlearn.analysis.ensemble import mixture

    mix = mixture(preds)
    return mix.mean, mix.std


def _kl(p, mean, std) -> float:
    from bayes_unlearn.analysis.metrics import gaussian_kl_1d

    return float(gaussian_kl_1d(p.mean.double(), p.std.double(), mean, std).mean())


def run_seed(seed: int, *, n: int, scenario: str, family: str, structure: str, methods: list[str], K: int,
             method_options: dict, fit_options: dict | None = None) -> dict:
    from bayes_unlearn.inference import fit, predict
    from bayes_unlearn.models import BayesianMLP
    from bayes_unlearn.models.forget_sets import split
    from bayes_unlearn.models.data import synthetic_1d
    from bayes_unlearn.unlearning import unlearn

    data = synthetic_1d(n=n, seed=seed)
    model = BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)
    opts = {"curvature": "ggn", "structure": structure} if family == "laplace" else {}
    opts.update(fit_options or {})
    state_before = machine_state()
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, method=family, seed=seed, progress=False, **opts)
    fit_time = time.perf_counter() - t0
    if scenario == "region":
        idx = torch.nonzero((data.x[:, 0] > 1.5) & (data.x[:, 0] < 3.5)).flatten()
    else:
        frac = float(scenario.split(":")[1])
        g = torch.Generator().manual_seed(10_000 + seed)
        idx = torch.randperm(len(data.x), generator=g)[:max(1, int(round(frac * len(data.x))))]
    xr, yr, xf, yf = split(data.x, data.y, idx)
    xs = {"forget": xf, "retain": xr, "test": data.x_test}
    lin = family == "laplace"
    preds = lambda p: {s: predict(p, x, linearised=lin, num_samples=200, seed=seed) for s, x in xs.items()}  # noqa: E731

    results = {}
    refs, ref_grad_norms = [], []
    for k in range(K):
        r = unlearn(post, xf, yf, "retrain", seed=seed + 1000 * k)
        refs.append(preds(r.posterior))
        ref_grad_norms.append(r.posterior.meta.get("report", {}).get("grad_norm_at_map"))
        if k == 0:
            results["retrain"] = r
    for name in methods:
        mname, _, tag = name.partition("@")
        o = dict(method_options.get(name, {}))
        try:  # "retrain-lm": the registered cold LM retrain (the original fit's Adam-only options dropped)
            results[name] = unlearn(post, xf, yf, mname, seed=seed, **o)
        except Exception as e:  # noqa: BLE001 -- recorded, the benchmark goes on
            results[name] = e
    ens = {s: _mixture([r[s] for r in refs]) for s in SPLITS}
    p_none = preds(post)
    d_none = {s: _kl(p_none[s], *ens[s]) for s in SPLITS}
    rows = []
    t_ret = results["retrain"].wall_time_s
    t_lm = results["retrain-lm"].wall_time_s if "retrain-lm" in results and not isinstance(results["retrain-lm"], Exception) else None
    # "retrain@adam" (with --method-options '{"retrain@adam": {"optimizer": "adam-lbfgs"}}'): the pre-LM default
    t_adam = results["retrain@adam"].wall_time_s if not isinstance(results.get("retrain@adam", 0), (int, Exception)) else None
    for name, r in results.items():
        if isinstance(r, Exception):
            rows.append({"method": name, "error": f"{type(r).__name__}: {r}"})
            continue
        p = refs[0] if name == "retrain" else preds(r.posterior)
        row = {"method": name, "wall_time_s": r.wall_time_s, "verdict": r.verdict.get("verdict"),
               "grad_ratio": r.verdict.get("numbers", {}).get("grad_ratio"), "reasons": r.verdict.get("reasons"),
               "speedup_vs_retrain": t_ret / r.wall_time_s if r.wall_time_s > 0 else None,
               "speedup_vs_retrain_lm": (t_lm / r.wall_time_s) if (t_lm and r.wall_time_s > 0) else None,
               "speedup_vs_retrain_adam": (t_adam / r.wall_time_s) if (t_adam and r.wall_time_s > 0) else None,
               "verdict_time_s": r.verdict_time_s}
        if name == "auto":
            row["auto_chosen"] = r.diagnostics.get("chosen")
        for s in SPLITS:
            row[f"{s}/gap_closed"] = 1.0 - _kl(p[s], *ens[s]) / d_none[s]
            # against each single retrain too (the one-reference figure, noisier)
            row[f"{s}/gap_closed_single"] = [1.0 - _kl(p[s], rp[s].mean.double(), rp[s].std.double())
                                              / _kl(p_none[s], rp[s].mean.double(), rp[s].std.double()) for rp in refs]
        if "iterations" in r.diagnostics:
            row["iterations"] = r.diagnostics["iterations"]
        rep = getattr(r.posterior, "meta", {}).get("report") or {}
        if rep.get("grad_norm_at_map") is not None:  # a retrain's own MAP gradient (is its Laplace at a mode?)
            row["map_grad_norm"] = rep["grad_norm_at_map"]
        if "grad_norm" in r.diagnostics:
            row["grad_norm"] = r.diagnostics["grad_norm"]
        rows.append(row)
    # noise floor: each retrain against the ensemble of the others
    loo = {s: [] for s in SPLITS}
    for k in range(K):
        others = [refs[j] for j in range(K) if j != k]
        for s in SPLITS:
            m, sd = _mixture([o[s] for o in others])
            d0 = _kl(p_none[s], m, sd)
            loo[s].append(1.0 - _kl(refs[k][s], m, sd) / d0)
    rows.append({"method": "retrain-loo", **{f"{s}/gap_closed": sum(v) / len(v) for s, v in loo.items()}})
    return {"seed": seed, "fit_time_s": fit_time, "num_forget": len(idx), "d_none": d_none,
            "fit_grad_norm": post.meta["report"].get("grad_norm_at_map"), "reference_grad_norms": ref_grad_norms,
            "machine_before": state_before, "machine_after": machine_state(), "rows": rows}


def summarise(per_seed: list[dict]) -> list[dict]:
    names = list(dict.fromkeys(r["method"] for s in per_seed for r in s["rows"]))
    out = []
    for name in names:
        rows = [r for s in per_seed for r in s["rows"] if r["method"] == name and "error" not in r]
        cell = {"method": name, "n": len(rows)}
        for key in [f"{s}/gap_closed" for s in SPLITS] + ["speedup_vs_retrain", "speedup_vs_retrain_lm",
                                                           "speedup_vs_retrain_adam", "wall_time_s", "grad_ratio",
                                                           "map_grad_norm"]:
            vals = [r.get(key) for r in rows if r.get(key) is not None]
            if vals:
                cell[key] = bootstrap_ci(vals)
        cell["verdicts"] = {v: sum(1 for r in rows if r.get("verdict") == v) for v in ("ok", "uncertain", "failed")}
        cell["min_gap"] = min((min(r[f"{s}/gap_closed"] for s in SPLITS) for r in rows
                               if "forget/gap_closed" in r), default=None)
        out.append(cell)
    return out


def verdict_counts(per_seed: list[dict]) -> dict:
    """Silent failures ("ok" with gap closed < 0.5 on a split) and false alarms ("failed" with ≥ 0.9 on all)."""
    silent, alarms, total = [], [], 0
    for s in per_seed:
        for r in s["rows"]:
            if "verdict" not in r or r.get("verdict") is None:
                continue
            total += 1
            gaps = [r[f"{sp}/gap_closed"] for sp in SPLITS]
            if r["verdict"] == "ok" and min(gaps) < 0.5:
                silent.append((s["seed"], r["method"], gaps))
            if r["verdict"] == "failed" and min(gaps) >= 0.9:
                alarms.append((s["seed"], r["method"], gaps))
    return {"results": total, "ok_with_gap_below_0.5": silent, "failed_with_gap_at_least_0.9": alarms}


def markdown_table(doc: dict) -> str:
    """The summary as a markdown table: median [95 % interval] over seeds of gap closed per split, the
    speed-ups, and the verdict counts."""
    def cell(c: dict, key: str, fmt: str = "{:.2f}") -> str:
        v = c.get(key)
        if not v:
            return "–"
        return f"{fmt.format(v[0])} [{fmt.format(v[1])}, {fmt.format(v[2])}]"
    adam = any(c.get("speedup_vs_retrain_adam") for c in doc["summary"])
    lines = ["| method | gap closed D_f | gap closed D_r | gap closed test | × retrain | × retrain-lm | "
             + ("× retrain@adam | " if adam else "") + "time (s) | verdicts ok/unc./failed |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if adam else "")]
    for c in doc["summary"]:
        v = c.get("verdicts", {})
        vs = "–" if c["method"] == "retrain-loo" else f"{v.get('ok', 0)}/{v.get('uncertain', 0)}/{v.get('failed', 0)}"
        name = "retrain-loo (noise floor)" if c["method"] == "retrain-loo" else c["method"]
        lines.append(f"| {name} | {cell(c, 'forget/gap_closed')} | {cell(c, 'retain/gap_closed')} | "
                     f"{cell(c, 'test/gap_closed')} | {cell(c, 'speedup_vs_retrain', '{:.1f}')} | "
                     f"{cell(c, 'speedup_vs_retrain_lm', '{:.1f}')} | "
                     + (f"{cell(c, 'speedup_vs_retrain_adam', '{:.1f}')} | " if adam else "")
                     + f"{cell(c, 'wall_time_s', '{:.2f}')} | {vs} |")
    vc = doc["verdict_counts"]
    lines.append("")
    lines.append(f"Seeds {doc['config']['seeds']}; {vc['results']} verdicts; \"ok\" with gap closed < 0.5 on a split: "
                 f"{len(vc['ok_with_gap_below_0.5'])}; \"failed\" with gap closed ≥ 0.9 on every split: "
                 f"{len(vc['failed_with_gap_at_least_0.9'])}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bnn_unlearning", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    ap.add_argument("--scenario", default="region", help="region | random:FRACTION")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--family", default="laplace")
    ap.add_argument("--structure", default="full")
    ap.add_argument("--references", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["none", "retrain-lm", "retrain-warm", "laplace-downdate",
                                                    "lm-refit", "auto"])
    ap.add_argument("--fit-options", default="{}",
                    help='JSON options for the original fit (and so for every retrain), e.g. \'{"optimizer": "lm"}\'')
    ap.add_argument("--method-options", default="{}",
                    help='JSON {method: options}; a method "NAME@TAG" runs NAME with the options of "NAME@TAG", e.g. '
                         '\'{"retrain@adam": {"optimizer": "adam-lbfgs"}}\' (speed-ups against it: "× retrain@adam")')
    ap.add_argument("--out", help="where to write the JSON")
    ap.add_argument("--table", help="print the markdown table of an existing JSON and exit")
    a = ap.parse_args(argv)
    if a.table:
        return print_table(a.table, markdown_table)
    if not a.out:
        ap.error("--out is required (or --table FILE)")
    torch.set_num_threads(1)
    per_seed = []
    for s in a.seeds:
        t0 = time.perf_counter()
        per_seed.append(run_seed(s, n=a.n, scenario=a.scenario, family=a.family, structure=a.structure,
                                 methods=a.methods, K=a.references,
                                 method_options=json.loads(a.method_options),
                                 fit_options=json.loads(a.fit_options)))
        print(f"seed {s} done in {time.perf_counter() - t0:.0f} s", flush=True)
        doc = {"config": vars(a), "per_seed": per_seed, "summary": summarise(per_seed),
               "verdict_counts": verdict_counts(per_seed)}
        write_result(a.out, doc)
    print(markdown_table(doc))
    return doc


if __name__ == "__main__":
    main()
