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
gap closed a retrain itself reaches ("retrain-loo"). A method is compared with it on the same footing,
against the same K−1-member ensembles (``gap_closed_loo``), and by the ratio of distances

    floor ratio ρ = Σ_k d(method, ens₋ₖ) / Σ_k d(retrainₖ, ens₋ₖ),

so ρ ≤ 1 on a split means the method is as close to the retrains as a further retrain is: "within the
noise floor". ρ(none) says whether the deletion is visible at all: ρ(none) ≈ 1 means retrains disagree
with one another as much as the deletion moves the posterior, and every method is trivially within the
floor. (The plain ``gap_closed`` compares a method with all K retrains but the floor with K−1: a K-member
mixture is wider, which flatters the method; ``gap_closed_loo`` and ρ do not.)

ρ ≤ 1 on one seed has no error rate (a held-out retrain fails it on 2–3 seeds in 10). The calibrated
comparison is the exchangeability rank (``analysis.ensemble.exchangeable_rank``): each row is ranked among itself,
the K references and the held-out retrains (``retrain@…`` run with only ``seed_offset``; a held-out retrain among
the references and the other held-out ones) by each member's KL to the mixture of the others, ``{split}/rank`` of
``rank_n`` (1 closest). A row that were one more retrain would rank uniformly; the summary pools the ranks over
seeds into the exact one-sided p-value of their sum (``{split}/rank_p``, ``pooled_rank_test``). Against the
same retrains, ``{split}/memory`` (``residual_memory``) is the share of θ*'s departure from their mean that the
row kept on the predictive mean, Σ (μ − m̄)(μ* − m̄) / Σ (μ* − m̄)²: on a forget set, what it still knows of D_f.

Speed-ups are against the timed ``retrain`` (the library default), against the mean time of every default
retrain the seed ran (``speedup_vs_retrains_mean``: the K references and any held-out ``retrain@…``; one
retrain's time varies by up to 2× with its seed, so this is the steadier figure), and ``retrain-lm`` (the same
inference with ``optimizer="lm"`` from a cold start, the fastest retraining the library offers). When ``retrain-lm``
is not run and the default retrain itself resolved to LM (``optimizer="auto"`` at N ≥ 1024), the two are
the same computation and "× retrain-lm" is "× retrain" (``retrain_lm_is_retrain`` in the JSON).

Several ``--scenario`` values share one original fit per seed (one ``--out`` each). Seeds run as separate
processes merge with ``--merge A.json B.json … --out ALL.json``.

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


def _kl_pred(p, ref) -> float:
    return _kl(p, ref.mean, ref.std)


def _kl_to(p, ref) -> dict[str, float]:
    return {"kl": _kl_pred(p, ref)}


class NoiseFloor:
    """The retrain ensemble's noise floor and a method's place against it, on the same footing
    (``analysis.ensemble``: :func:`leave_one_out_floor`, :func:`loo_distances`, :func:`floor_ratio`).

    ``refs``: K ≥ 2 retrains' predictives per split (objects with ``.mean``/``.std`` per input);
    ``p_none``: the original posterior's. With ens₋ₖ the moment-matched mixture of all retrains but k,

        ρ(method) = Σ_k d(method, ens₋ₖ) / Σ_k d(retrainₖ, ens₋ₖ),
        gap closed (LOO) = mean_k [1 − d(method, ens₋ₖ) / d(none, ens₋ₖ)],

    d the mean over inputs of KL(· ‖ ens₋ₖ). ρ ≤ 1 on every split is "within the noise floor"."""

    def __init__(self, refs: list[dict], p_none: dict):
        from bayes_unlearn.analysis.ensemble import leave_one_out_floor, loo_distances

        self.refs = refs
        self.d_refs = {s: v["kl"] for s, v in leave_one_out_floor(refs, _kl_to).items()}
        self.d_none = {s: v["kl"] for s, v in loo_distances(p_none, refs, _kl_to).items()}
        self.d_floor = {s: sum(v) for s, v in self.d_refs.items()}

    def _gap(self, d: list[float], s: str) -> float:
        return sum(1.0 - dk / d0 for dk, d0 in zip(d, self.d_none[s])) / len(d)

    def numbers(self, p: dict) -> dict:
        """``{split}/gap_closed_loo``, ``{split}/floor_ratio`` and ``within_floor`` of predictive ``p``."""
        from bayes_unlearn.analysis.ensemble import floor_ratio, loo_distances

        held = {s: v["kl"] for s, v in loo_distances(p, self.refs, _kl_to).items()}
        out = {}
        for s in SPLITS:
            out[f"{s}/gap_closed_loo"] = self._gap(held[s], s)
            out[f"{s}/floor_ratio"] = floor_ratio(held[s], self.d_refs[s])
        out["within_floor"] = all(out[f"{s}/floor_ratio"] <= 1.0 for s in SPLITS)
        return out

    def retrain_row(self) -> dict:
        """The "retrain-loo" row: the gap closed a retrain itself reaches against the others (ρ = 1)."""
        gaps = {s: self._gap(self.d_refs[s], s) for s in SPLITS}
        return {"method": "retrain-loo", **{f"{s}/gap_closed": g for s, g in gaps.items()},
                **{f"{s}/gap_closed_loo": g for s, g in gaps.items()}, **{f"{s}/floor_ratio": 1.0 for s in SPLITS}}


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB, from ``getrusage``)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def forget_indices(x: torch.Tensor, scenario: str, seed: int) -> torch.Tensor:
    """The forget set's rows: ``region`` (x ∈ (1.5, 3.5)) or ``random:F`` (a seeded fraction F)."""
    if scenario == "region":
        return torch.nonzero((x[:, 0] > 1.5) & (x[:, 0] < 3.5)).flatten()
    if not scenario.startswith("random:"):
        raise ValueError(f"unknown scenario {scenario!r}; use 'region' or 'random:FRACTION'")
    frac = float(scenario.split(":")[1])
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randperm(len(x), generator=g)[:max(1, int(round(frac * len(x))))]


def default_bnn():
    """The benchmarks' net: the default 1-32-32-1 tanh BNN (fan-in prior, noise 0.1)."""
    from bayes_unlearn.models import BayesianMLP

    return BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)


def original_fit(data, seed: int, *, family: str = "laplace", structure: str = "full", fit_options: dict | None = None):
    """The benchmarks' fit of q(θ|D) on ``data`` (default net, GGN Laplace in ``structure``): one place, so that every
    benchmark that refits a seed (``bnn_warm_starts``, ``verdict_share``) gets the same θ* as this one."""
    from bayes_unlearn.inference import fit

    opts = {"curvature": "ggn", "structure": structure} if family == "laplace" else {}
    opts.update(fit_options or {})
    return fit(default_bnn(), data.x, data.y, method=family, seed=seed, progress=False, **opts)


def run_seed(seed: int, *, n: int, scenario: str | list[str], family: str, structure: str, methods: list[str],
             K: int, method_options: dict, fit_options: dict | None = None) -> dict | list[dict]:
    """One seed: fit once, then for each scenario the K retrains, the methods and the distances.
    Returns one document per scenario (a list when ``scenario`` is a list)."""
    from bayes_unlearn.models.data import synthetic_1d

    if K < 2:
        raise ValueError(f"references={K}: the noise floor needs at least 2 retrains")
    data = synthetic_1d(n=n, seed=seed)
    state_before = machine_state()
    t0 = time.perf_counter()
    post = original_fit(data, seed, family=family, structure=structure, fit_options=fit_options)
    fit_time = time.perf_counter() - t0
    scenarios = [scenario] if isinstance(scenario, str) else list(scenario)
    docs = [{"seed": seed, "fit_time_s": fit_time, "machine_before": state_before,
             **_run_scenario(post, data, sc, seed=seed, family=family, methods=methods, K=K,
                             method_options=method_options),
             "machine_after": machine_state(), "peak_rss_mb": _peak_rss_mb()} for sc in scenarios]
    return docs[0] if isinstance(scenario, str) else docs


def _run_scenario(post, data, scenario: str, *, seed: int, family: str, methods: list[str], K: int,
                  method_options: dict) -> dict:
    from bayes_unlearn.analysis.ensemble import exchangeable_rank, residual_memory
    from bayes_unlearn.inference import predict
    from bayes_unlearn.models.forget_sets import split
    from bayes_unlearn.unlearning import unlearn

    idx = forget_indices(data.x, scenario, seed)
    xr, yr, xf, yf = split(data.x, data.y, idx)
    xs = {"forget": xf, "retain": xr, "test": data.x_test}
    lin = family == "laplace"
    preds = lambda p: {s: predict(p, x, linearised=lin, num_samples=200, seed=seed) for s, x in xs.items()}  # noqa: E731

    from bayes_unlearn.inference.gauss_newton import NegLogJoint
    from bayes_unlearn.inference.latent import BoundModel

    retained = NegLogJoint(BoundModel(post.model, xr, yr), xr, yr)
    loss_r = lambda p: float(retained.value(p.loc.detach().to(torch.float64)))  # noqa: E731  L_r at the mean

    results = {}
    refs, ref_grad_norms, ref_losses, ref_times = [], [], [], []
    for k in range(K):
        r = unlearn(post, xf, yf, "retrain", seed=seed + 1000 * k)
        refs.append(preds(r.posterior))
        ref_grad_norms.append(r.posterior.meta.get("report", {}).get("grad_norm_at_map"))
        ref_losses.append(loss_r(r.posterior))
        ref_times.append(r.wall_time_s)
        if k == 0:
            results["retrain"] = r
    for name in methods:
        mname, _, tag = name.partition("@")
        o = dict(method_options.get(name, {}))
        # "seed_offset": run the method with seed + offset, e.g. a held-out retrain scored like a method
        # ('{"retrain@holdout": {"seed_offset": 1000 * K}}', a seed no reference used): how often a retrain
        # itself is within the floor
        offset = int(o.pop("seed_offset", 0))
        try:  # "retrain-lm": the registered cold LM retrain (the original fit's Adam-only options dropped)
            results[name] = unlearn(post, xf, yf, mname, seed=seed + offset, **o)
        except Exception as e:  # noqa: BLE001 -- recorded, the benchmark goes on
            results[name] = e
    ens = {s: _mixture([r[s] for r in refs]) for s in SPLITS}
    p_none = preds(post)
    d_none = {s: _kl(p_none[s], *ens[s]) for s in SPLITS}
    floor = NoiseFloor(refs, p_none)
    rows = []
    t_ret = results["retrain"].wall_time_s
    # every timed retrain of this seed (the K references and any "retrain@…" variant, e.g. a held-out one, that
    # ran the default retrain): one retrain's time varies by up to 2x with its seed, their mean much less
    # held-out retrains: "retrain@…" with no option but seed_offset (the default retrain under another seed)
    held_out = [n for n, r in results.items() if n.startswith("retrain@") and not isinstance(r, Exception)
                and not method_options.get(n, {}).keys() - {"seed_offset"}]
    t_rets = ref_times + [results[n].wall_time_s for n in held_out]
    t_mean = sum(t_rets) / len(t_rets)
    retrain_opt = (results["retrain"].posterior.meta.get("report") or {}).get("optimizer")
    lm_is_retrain = "retrain-lm" not in results and retrain_opt == "lm"
    if lm_is_retrain:
        t_lm = t_ret
    else:
        t_lm = results["retrain-lm"].wall_time_s if "retrain-lm" in results and not isinstance(results["retrain-lm"], Exception) else None
    # "retrain@adam" (with --method-options '{"retrain@adam": {"optimizer": "adam-lbfgs"}}'): the pre-LM default
    t_adam = results["retrain@adam"].wall_time_s if not isinstance(results.get("retrain@adam", 0), (int, Exception)) else None
    pred_of = {n: refs[0] if n == "retrain" else preds(r.posterior) for n, r in results.items()
               if not isinstance(r, Exception)}
    # the exchangeability rank (analysis.ensemble.exchangeable_rank): each method among the references and the
    # held-out retrains (a held-out retrain among the references and the other held-out ones)
    for name, r in [("none", None)] * ("none" not in results) + list(results.items()):
        if isinstance(r, Exception):
            rows.append({"method": name, "error": f"{type(r).__name__}: {r}"})
            continue
        if r is None:  # "none" is measured even when not asked for: rho(none) says whether the deletion is visible
            p, row = p_none, {"method": "none", "measured_only": True}
        else:
            p = pred_of[name]
            row = {"method": name, "wall_time_s": r.wall_time_s, "verdict": r.verdict.get("verdict"),
                   "grad_ratio": r.verdict.get("numbers", {}).get("grad_ratio"), "reasons": r.verdict.get("reasons"),
                   "speedup_vs_retrain": t_ret / r.wall_time_s if r.wall_time_s > 0 else None,
                   "speedup_vs_retrains_mean": t_mean / r.wall_time_s if r.wall_time_s > 0 else None,
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
        if name != "retrain":  # the timed retrain is refs[0], a member of every other LOO ensemble
            row.update(floor.numbers(p))
            pool = refs + [pred_of[h] for h in held_out if h != name]
            row.update({f"{s}/rank": v for s, v in exchangeable_rank(p, pool, _kl_pred).items()})
            row["rank_n"] = len(pool) + 1
            # the share of θ*'s departure from the same retrains' mean that the result kept (0: none, 1: all)
            row.update({f"{s}/memory": v for s, v in residual_memory(p, pool, p_none).items()})
        if r is None:  # θ* itself: is the original fit's mode worse on D_r than the retrains' modes?
            row["retained_loss_minus_retrains"] = loss_r(post) - sum(ref_losses) / K
            rows.append(row)
            continue
        # the retained objective at the result's mean, against the retrains' modes (> 0: a worse mode of D_r)
        row["retained_loss_minus_retrains"] = loss_r(r.posterior) - sum(ref_losses) / K
        for key in ("mode_kl", "forget_share"):  # the verdict's distance to the mode; its emptied-region share κ
            if r.verdict.get("numbers", {}).get(key) is not None:
                row[key] = r.verdict["numbers"][key]
        if "iterations" in r.diagnostics:
            row["iterations"] = r.diagnostics["iterations"]
        rep = getattr(r.posterior, "meta", {}).get("report") or {}
        if rep.get("grad_norm_at_map") is not None:  # a retrain's own MAP gradient (is its Laplace at a mode?)
            row["map_grad_norm"] = rep["grad_norm_at_map"]
        if "grad_norm" in r.diagnostics:
            row["grad_norm"] = r.diagnostics["grad_norm"]
        rows.append(row)
    rows.append(floor.retrain_row())  # noise floor: each retrain against the ensemble of the others
    return {"scenario": scenario, "num_forget": len(idx), "d_none": d_none,
            "d_floor": {s: floor.d_floor[s] / K for s in SPLITS},
            "fit_grad_norm": post.meta["report"].get("grad_norm_at_map"), "reference_grad_norms": ref_grad_norms,
            "reference_retained_losses": ref_losses, "reference_wall_times_s": ref_times,
            "retrain_wall_times_s": t_rets,
            "retrain_optimizer": retrain_opt, "retrain_lm_is_retrain": lm_is_retrain, "rows": rows}


def summarise(per_seed: list[dict]) -> list[dict]:
    from bayes_unlearn.analysis.ensemble import pool_ranks

    names = list(dict.fromkeys(r["method"] for s in per_seed for r in s["rows"]))
    out = []
    for name in names:
        rows = [r for s in per_seed for r in s["rows"] if r["method"] == name and "error" not in r]
        cell = {"method": name, "n": len(rows)}
        for key in [f"{s}/{k}" for k in ("gap_closed", "gap_closed_loo", "floor_ratio", "memory") for s in SPLITS] + [
                    "speedup_vs_retrain", "speedup_vs_retrains_mean", "speedup_vs_retrain_lm",
                                                           "speedup_vs_retrain_adam", "wall_time_s", "grad_ratio",
                                                           "map_grad_norm", "mode_kl", "retained_loss_minus_retrains"]:
            vals = [r.get(key) for r in rows if r.get(key) is not None]
            if vals:
                cell[key] = bootstrap_ci(vals)
        cell["verdicts"] = {v: sum(1 for r in rows if r.get("verdict") == v) for v in ("ok", "uncertain", "failed")}
        if any("within_floor" in r for r in rows):  # seeds on which rho <= 1 on every split
            cell["within_floor"] = [sum(bool(r.get("within_floor")) for r in rows), len(rows)]
        pooled = pool_ranks(rows, SPLITS)  # over seeds: P(sum of ranks >= observed) if one more retrain
        if pooled:
            cell["rank_seeds"] = max(v["seeds"] for v in pooled.values())
            for s, v in pooled.items():
                cell[f"{s}/rank_mean"] = [v["mean"], v["null_mean"]]
                cell[f"{s}/rank_p"] = v["p"]
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
    mean = any(c.get("speedup_vs_retrains_mean") for c in doc["summary"])  # runs before session 11 lack it
    lines = ["| method | gap closed D_f | gap closed D_r | gap closed test | × retrain | "
             + ("× retrains (mean) | " if mean else "") + "× retrain-lm | "
             + ("× retrain@adam | " if adam else "") + "time (s) | verdicts ok/unc./failed |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if mean else "") + ("---|" if adam else "")]
    for c in doc["summary"]:
        v = c.get("verdicts", {})
        vs = "–" if c["method"] == "retrain-loo" else f"{v.get('ok', 0)}/{v.get('uncertain', 0)}/{v.get('failed', 0)}"
        name = "retrain-loo (noise floor)" if c["method"] == "retrain-loo" else c["method"]
        lines.append(f"| {name} | {cell(c, 'forget/gap_closed')} | {cell(c, 'retain/gap_closed')} | "
                     f"{cell(c, 'test/gap_closed')} | {cell(c, 'speedup_vs_retrain', '{:.1f}')} | "
                     + (f"{cell(c, 'speedup_vs_retrains_mean', '{:.1f}')} | " if mean else "")
                     + f"{cell(c, 'speedup_vs_retrain_lm', '{:.1f}')} | "
                     + (f"{cell(c, 'speedup_vs_retrain_adam', '{:.1f}')} | " if adam else "")
                     + f"{cell(c, 'wall_time_s', '{:.2f}')} | {vs} |")
    if any(c.get("forget/floor_ratio") for c in doc["summary"]):
        lines += ["", "Against the noise floor, on the same footing (each method and each retrain held against the "
                  "same leave-one-out ensembles; ρ = d(method) / d(retrain), ρ ≤ 1: within the floor):", "",
                  "| method | ρ D_f | ρ D_r | ρ test | gap closed (LOO) D_f | D_r | test | seeds within on all splits |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in doc["summary"]:
            if not c.get("forget/floor_ratio"):
                continue
            w = c.get("within_floor")
            name = "retrain-loo (noise floor)" if c["method"] == "retrain-loo" else c["method"]
            lines.append(f"| {name} | " + " | ".join(cell(c, f"{s}/floor_ratio") for s in SPLITS) + " | "
                         + " | ".join(cell(c, f"{s}/gap_closed_loo") for s in SPLITS) + " | "
                         + (f"{w[0]}/{w[1]}" if w else "–") + " |")
    if any(c.get("rank_seeds") for c in doc["summary"]):
        lines += ["", "Exchangeability (``analysis.ensemble.exchangeable_rank``): each method's rank among itself, the "
                  "references and the held-out retrains by distance to the mixture of the others (1 closest … n), "
                  "mean over seeds against its mean if the method were one more retrain, and the pooled one-sided "
                  "p-value (small: farther from the retrains than a retrain is):", "",
                  "| method | seeds | mean rank D_f / D_r / test (null) | p D_f | p D_r | p test |", "|---|---|---|---|---|---|"]
        for c in doc["summary"]:
            if not c.get("rank_seeds"):
                continue
            means = " / ".join(f"{c[f'{s}/rank_mean'][0]:.2f}" for s in SPLITS)
            lines.append(f"| {c['method']} | {c['rank_seeds']} | {means} ({c['forget/rank_mean'][1]:.2f}) | "
                         + " | ".join(f"{c[f'{s}/rank_p']:.3g}" for s in SPLITS) + " |")
    if any(c.get("forget/memory") for c in doc["summary"]):
        lines += ["", "Residual memory (``analysis.ensemble.residual_memory``): the share of θ*'s departure from the "
                  "retrains' mean that the result kept, against the same retrains as its rank (0: like them, 1: like "
                  "`none`; a held-out retrain shows the spread of one more retrain):", "",
                  "| method | memory D_f | memory D_r | memory test |", "|---|---|---|---|"]
        for c in doc["summary"]:
            if c.get("forget/memory") and c["method"] != "none":
                lines.append(f"| {c['method']} | " + " | ".join(cell(c, f"{s}/memory") for s in SPLITS) + " |")
    vc = doc["verdict_counts"]
    lines.append("")
    lines.append(f"Seeds {doc['config']['seeds']}; {vc['results']} verdicts; \"ok\" with gap closed < 0.5 on a split: "
                 f"{len(vc['ok_with_gap_below_0.5'])}; \"failed\" with gap closed ≥ 0.9 on every split: "
                 f"{len(vc['failed_with_gap_at_least_0.9'])}.")
    return "\n".join(lines)


def merge(paths: list[str]) -> dict:
    """One document from benchmark JSONs of the same configuration run as separate processes (seeds
    concatenated in the order given, summary recomputed). The methods may differ between the files (a
    variant added to later seeds): each method's summary counts the seeds that ran it (``n``)."""
    from benchmarks._io import read_result

    docs = [read_result(p) for p in paths]
    keys = ("n", "scenario", "family", "structure", "references", "fit_options")
    first = {k: docs[0]["config"].get(k) for k in keys}
    for p, d in zip(paths[1:], docs[1:]):
        other = {k: d["config"].get(k) for k in keys}
        if other != first:
            diff = sorted(k for k in keys if other[k] != first[k])
            raise ValueError(f"{p}: its configuration differs from {paths[0]} in {diff}; merge like runs only")
    per_seed = [s for d in docs for s in d["per_seed"]]
    seeds = [s["seed"] for s in per_seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat across {paths}; merge disjoint seed sets")
    methods = list(dict.fromkeys(m for d in docs for m in d["config"].get("methods", [])))
    options = {}
    for d in docs:
        options.update(json.loads(d["config"].get("method_options") or "{}"))
    config = {**docs[0]["config"], "seeds": seeds, "merged_from": list(paths), "methods": methods,
              "method_options": json.dumps(options)}
    return {"config": config, "per_seed": per_seed, "summary": summarise(per_seed),
            "verdict_counts": verdict_counts(per_seed)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bnn_unlearning", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    ap.add_argument("--scenario", nargs="+", default=["region"],
                    help="region | random:FRACTION; several share one original fit per seed (one --out each)")
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
    ap.add_argument("--out", nargs="+", help="where to write the JSON (one per --scenario)")
    ap.add_argument("--merge", nargs="+", help="merge these JSONs (disjoint seeds, same configuration) into --out")
    ap.add_argument("--table", help="print the markdown table of an existing JSON and exit")
    a = ap.parse_args(argv)
    if a.table:
        return print_table(a.table, markdown_table)
    if not a.out:
        ap.error("--out is required (or --table FILE)")
    if a.merge:
        if len(a.out) != 1:
            ap.error("--merge writes one --out")
        doc = merge(a.merge)
        write_result(a.out[0], doc)
        print(markdown_table(doc))
        return doc
    if len(a.out) != len(a.scenario):
        ap.error(f"{len(a.scenario)} scenarios need {len(a.scenario)} --out paths, got {len(a.out)}")
    for sc in a.scenario:
        forget_indices(torch.zeros(1, 1), sc, 0)  # an unknown scenario fails before the first fit
    torch.set_num_threads(1)
    per_seed = {sc: [] for sc in a.scenario}
    docs = {}
    for s in a.seeds:
        t0 = time.perf_counter()
        got = run_seed(s, n=a.n, scenario=list(a.scenario), family=a.family, structure=a.structure,
                       methods=a.methods, K=a.references, method_options=json.loads(a.method_options),
                       fit_options=json.loads(a.fit_options))
        print(f"seed {s} done in {time.perf_counter() - t0:.0f} s", flush=True)
        for sc, out, d in zip(a.scenario, a.out, got):
            per_seed[sc].append(d)
            docs[sc] = {"config": {**vars(a), "scenario": sc, "out": out}, "per_seed": per_seed[sc],
                        "summary": summarise(per_seed[sc]), "verdict_counts": verdict_counts(per_seed[sc])}
            write_result(out, docs[sc])
    for sc in a.scenario:
        print(f"## {sc}\n" + markdown_table(docs[sc]))
    return docs[a.scenario[0]] if len(a.scenario) == 1 else docs


if __name__ == "__main__":
    main()
