"""The pitfalls study: where Bayesian unlearning of a BNN breaks, measured against exact retraining.

Setup (the default of ``bayes-unlearn run``): ``synthetic_1d(n=300, seed)``, a 1-32-32-1 tanh
``BayesianMLP`` (fan-in prior, σ = 0.1, d = 1153), a full-GGN Laplace posterior q(θ | D) = N(θ*, Λ⁻¹);
the forget set D_f is the region x ∈ (1.5, 3.5) unless said otherwise. Every method is scored by the
averaged per-input predictive KL (linearised Gaussian predictives, ``inference.predict``, ``analysis.metrics``) to ``retrain``
(the same inference from scratch on D_r) on D_f, D_r and a test grid, and by

    gap closed = 1 − d(method, retrain) / d(none, retrain)

(1: as good as retraining; 0: no better than doing nothing; < 0: worse than doing nothing).

The maths (Nguyen, Low & Jaillet, "Variational Bayesian Unlearning", NeurIPS 2020). Exact
unlearning is p(θ | D_r) ∝ p(θ | D) / p(D_f | θ); from an approximation q(θ | D) the EUBO re-fit
minimises U(q_u) = E_{q_u}[log p(D_f|θ)] + KL(q_u ‖ q(θ|D)), which is unbounded below for a neural
net. The paper's remedy is the *adjusted likelihood* with threshold λ ∈ [0, 1],

    p_adj(D_f | θ) = p(D_f | θ)  if q(θ | D) > λ · max_θ q(θ | D),   else 1,

used both by the EUBO re-fit ("eubo-adjusted") and by the reverse-KL moment match of
importance-weighted draws of q(θ|D) ("rkl"). For a Gaussian q the condition is a Mahalanobis ball
(θ−μ)ᵀΛ(θ−μ) < −2 log λ, and draws of q have a squared radius ≈ χ²_d; so λ is most naturally given by
the mass ``quantile`` p of q that the ball holds, λ = exp(−½ χ²_{d,p}). In d = 1153 dimensions
p = 0.5 means λ ≈ 10⁻²⁵⁰ and any "ordinary" λ such as 10⁻³ switches the likelihood off everywhere
q puts mass. λ = 0 is the plain (unadjusted) objective.

Four questions, each with a figure and a JSON section (``run`` returns the dict, ``main`` writes
``pitfalls.json`` and the PNGs):

1. ``lambda_sweep``: λ against the predictive KL to retrain on D_f / D_r / test (the shape of Nguyen
   et al.'s figure), for eubo-adjusted and rkl, with ``none`` as the reference line.
2. ``downdate_pd``: the Laplace down-date Λ_r = Λ − H_f with the exact Hessian (whose fit itself
   needs ``repair="clip"``) and with the GGN, over 3 seeds: how often Λ_r is not positive definite,
   its smallest eigenvalue and number of non-positive eigenvalues; spectra before/after for seed 0.
3. ``region_vs_random``: the region against a random forget set of the same size.
4. ``deletion_fraction``: random deletion of 1–30 % of the data.

One retrain is computed per forget set and shared by every method and λ.

A research study, not part of the installed library: run it from the repository root,

    python -m benchmarks.pitfalls --out docs/pitfalls [--quick]

Runtime: full ~14 min, quick ~15–25 s on a shared 2-core CPU with OMP_NUM_THREADS=1 (with two torch
threads competing against another process the same run was several times slower).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bayes_unlearn.analysis.figures import (plot_gap_closed, plot_gap_closed_sweep, plot_kl_sweep, plot_loss_curves,
                                            plot_predictive_bands, plot_spectra)
from bayes_unlearn.analysis.metrics import gap_closed, predictive_kl
from bayes_unlearn.inference import fit, predict
from bayes_unlearn.models import BayesianMLP
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.models.forget_sets import forget_fraction, forget_random, forget_region, split
from bayes_unlearn.unlearning import unlearn
from bayes_unlearn.unlearning.objective import lambda_from_quantile

from benchmarks._io import write_result

__all__ = ["run", "main", "CONFIGS", "downdate_parts"]


def downdate_parts(post, xf, yf, curvature: str) -> tuple[torch.Tensor, torch.Tensor, dict, str | None]:
    """(Λ, H_f, facts of Λ's fit, refusal) for the Laplace down-date Λ_r = Λ − H_f of a full-GGN ``post``.

    Λ: for ``curvature="ggn"`` the posterior's own precision; for ``"exact"`` the exact negative Hessian
    of the log joint at the posterior's mode, eigenvalue-clipped as ``fit(..., curvature="exact",
    repair="clip")`` clips it (the same mode as the GGN fit, so the MAP search is not run twice).
    H_f: −∇² log p(D_f | θ*) (or its GGN) over D_f = (xf, yf). refusal: the message of the positive-
    definiteness check ``laplace-downdate`` runs on Λ − H_f (it refuses unless ``repair=`` is given), or
    None. ``unlearn`` refuses an indefinite Λ_r instead of returning it, so the study builds the parts from
    the library's public pieces: the Laplace covariance at a given θ*, the forget set's curvature and the
    ``Precision`` class's down-date (the check ``laplace-downdate`` runs).
    """
    from bayes_unlearn.inference.covariance import NotPositiveDefiniteError, Precision
    from bayes_unlearn.inference.laplace import laplace_covariance
    from bayes_unlearn.unlearning import locate_forget_set
    from bayes_unlearn.unlearning.laplace import forget_curvature

    if not isinstance(post.cov, Precision):
        raise ValueError(f"downdate_parts needs a full Laplace posterior (structure 'precision'), got {post.structure!r}")
    theta = post.loc.detach().to(torch.float64)
    if curvature == "exact":
        cov, fit_facts = laplace_covariance(post.bound_model(), post.x, post.y, theta, curvature="exact", repair="clip")
        prec = cov.precision
    else:
        prec, fit_facts = post.precision.to(torch.float64), post.meta.get("curvature") or {}
    _, H = forget_curvature(post, locate_forget_set(post, xf, yf), theta, "dense", curvature)
    try:
        Precision(prec).downdate(H)
    except NotPositiveDefiniteError as e:
        return prec, H, fit_facts, str(e)
    return prec, H, fit_facts, None


SPLITS = ("forget", "retain", "test")
METHODS = ["laplace-downdate", "eubo-adjusted", "rkl", "retrain-warm"]

# The λ grid: λ = 0 (plain objective), λ from mass quantiles of q (d-dependent), and two λ values of
# "ordinary" size. Entries: ("lam", value) or ("quantile", p).
FULL_GRID = [("lam", 0.0), ("quantile", 0.99), ("quantile", 0.9), ("quantile", 0.5), ("quantile", 0.1),
             ("quantile", 0.01), ("lam", 1e-3), ("lam", 1.0)]
QUICK_GRID = [("lam", 0.0), ("quantile", 0.99)]
BOTH, RKL_ONLY = ("eubo-adjusted", "rkl"), ("rkl",)

# The full study is sized for a shared 2-core CPU (~20 min): the EUBO re-fits are capped at 1500 steps (their
# other settings are the defaults, so the divergence rule is the one users get), eubo-adjusted is swept on 5
# of the 8 λ values (rkl on all 8), and retrain-warm is run in question 3 only.
CONFIGS = {
    "full": {"n": 300, "hidden": (32, 32), "seeds": (0, 1, 2), "fractions": (0.01, 0.05, 0.1, 0.2, 0.3),
             "grid": FULL_GRID, "eubo_grid": (0.0, 0.99, 0.5, 0.01, 1.0),
             "fit": {}, "eubo": {"num_steps": 1500},
             "rkl": {"num_samples": 4000}, "fraction_methods": ("laplace-downdate", "eubo-adjusted", "rkl")},
    "quick": {"n": 60, "hidden": (8, 8), "seeds": (0,), "fractions": (0.05, 0.2), "grid": QUICK_GRID,
              "eubo_grid": (0.0, 0.99), "fit": {"num_steps": 150, "lbfgs_steps": 30},
              "eubo": {"num_steps": 40, "window": 20}, "rkl": {"num_samples": 300},
              "fraction_methods": ("laplace-downdate", "eubo-adjusted", "rkl")},
}


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


def _clean(v):
    """JSON-able: tensors to lists, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): _clean(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(u) for u in v]
    if isinstance(v, torch.Tensor):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Deletion:
    """One forget set on one fitted posterior, with its retrain (computed once) and ``none`` distances."""

    def __init__(self, post, data, idx, seed: int, progress: bool = False):
        self.post, self.data, self.seed, self.progress = post, data, seed, progress
        self._cache: dict = {}
        xr, self.y_retain, self.xf, self.yf = split(data.x, data.y, idx)
        self.num_forget = len(idx)
        self.splits = {"forget": self.xf, "retain": xr, "test": data.x_grid}
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = unlearn(post, self.xf, self.yf, "retrain", seed=seed + 1, progress=progress)
        self.retrain_time_s = time.perf_counter() - t0
        self.ref_preds = self._predict(ref.posterior)
        self.none_preds = self._predict(post)
        self.d_none = {s: predictive_kl(self.none_preds[s], self.ref_preds[s]) for s in SPLITS}

    def _predict(self, posterior) -> dict:
        return {s: predict(posterior, x, seed=self.seed, linearised=True) for s, x in self.splits.items()}

    def score(self, method: str, **opts) -> tuple[dict, dict | None, object]:
        """(row, predictions or None, result or None) for ``unlearn(method, **opts)`` against the retrain.

        Cached per (method, options): the λ sweep, the method comparison and the figures share runs."""
        key = (method, json.dumps(opts, sort_keys=True, default=str))
        if key not in self._cache:
            self._cache[key] = self._score(method, **opts)
        row, preds, res = self._cache[key]
        return dict(row), preds, res

    def _score(self, method: str, **opts) -> tuple[dict, dict | None, object]:
        row = {"method": method, "options": dict(opts)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = unlearn(self.post, self.xf, self.yf, method, seed=self.seed, progress=self.progress, **opts)
            except Exception as e:  # reported, not hidden
                row["error"] = f"{type(e).__name__}: {e}"
                for s in SPLITS:
                    row[f"{s}/predictive_kl"] = row[f"{s}/gap_closed"] = math.nan
                return row, None, None
        preds = self._predict(res.posterior)
        for s in SPLITS:
            kl = predictive_kl(preds[s], self.ref_preds[s])
            row[f"{s}/predictive_kl"] = kl
            row[f"{s}/gap_closed"] = gap_closed(kl, self.d_none[s])
        row.update(wall_time_s=res.wall_time_s, diverged=res.diverged, steps=res.steps,
                   warnings=[w[:200] for w in res.warnings],
                   diagnostics={k: v for k, v in res.diagnostics.items() if not isinstance(v, torch.Tensor)})
        return row, preds, res

    def none_row(self) -> dict:
        row = {"method": "none", "options": {}}
        for s in SPLITS:
            row[f"{s}/predictive_kl"] = self.d_none[s]
            row[f"{s}/gap_closed"] = 0.0
        return row


def _method_options(method: str, cfg: dict) -> dict:
    """Run-length options of the config, and the default threshold spelled out (so runs are shared)."""
    if method.startswith("eubo"):
        return {**cfg["eubo"], **({"quantile": 0.99} if method == "eubo-adjusted" else {})}
    return {**cfg["rkl"], "quantile": 0.99} if method == "rkl" else {}


def _fit(data, cfg: dict, seed: int, curvature: str = "ggn", progress: bool = False, **extra):
    model = BayesianMLP(1, tuple(cfg["hidden"]), "tanh", prior_scale="fan_in", noise=0.1)
    opts = {"structure": "full", **cfg["fit"], "curvature": curvature, **extra}
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, "laplace", seed=seed, progress=progress, **opts)
    return post, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# 1. the λ sweep


def lambda_sweep(deletion: Deletion, cfg: dict, dim: int) -> tuple[dict, dict]:
    """eubo-adjusted and rkl over the λ grid; returns (section, {label: result}) for later figures."""
    points, results = [], {}
    for kind, value in cfg["grid"]:
        if kind == "lam":
            log_lam = -math.inf if value == 0 else math.log(value)
            q_mass = 0.0 if value == 0 else _mass_inside(dim, log_lam)
        else:
            log_lam, q_mass = lambda_from_quantile(dim, value), value
        entry = {"kind": kind, "value": value, "log10_lambda": log_lam / math.log(10), "q_mass_inside": q_mass}
        for method in ("eubo-adjusted", "rkl"):
            if method == "eubo-adjusted" and value not in cfg["eubo_grid"]:
                continue
            opts = {k: v for k, v in _method_options(method, cfg).items() if k != "quantile"}
            opts[kind] = value
            row, _, res = deletion.score(method, **opts)
            entry[method] = row
            results[(method, kind, value)] = res
        points.append(entry)
    return {"points": points, "none": deletion.none_row(), "num_forget": deletion.num_forget, "dim": dim}, results


def _mass_inside(d: int, log_lam: float) -> float:
    """Mass of a d-dim Gaussian inside its ball q > λ max q, i.e. P(χ²_d < −2 log λ)."""
    from scipy.stats import chi2

    return float(chi2.cdf(-2.0 * log_lam, d)) if log_lam < 0 else 0.0


def _lambda_label(p: dict) -> str:
    if p["kind"] == "lam" and p["value"] == 0:
        return "0\nplain"
    lam = f"{p['value']:g}" if p["kind"] == "lam" else f"1e{p['log10_lambda']:.0f}"
    return f"{lam}\n{100 * p['q_mass_inside']:.3g}%"


def plot_lambda_sweep(path, section: dict) -> Path:
    """The λ sweep's figure: predictive KL to retrain per split against λ (``figures.plot_kl_sweep``)."""
    pts, methods = section["points"], ("eubo-adjusted", "rkl")
    kl = {m: {s: [p[m][f"{s}/predictive_kl"] if m in p else None for p in pts] for s in SPLITS} for m in methods}
    flagged = {m: [bool(p[m].get("diverged")) if m in p else False for p in pts] for m in methods}
    return plot_kl_sweep(
        path, [_lambda_label(p) for p in pts], kl, flagged=flagged,
        reference={s: section["none"][f"{s}/predictive_kl"] for s in SPLITS},
        xlabel="threshold λ (top line) and the mass of q(θ|D) inside the ball\n"
               "q > λ·max q where the forget likelihood counts (bottom line)",
        title=f"Adjusted-likelihood threshold λ vs. distance to exact retraining "
              f"(region deletion, {section['num_forget']} points, d = {section['dim']})\n"
              "below the dashed line = better than doing nothing")


# ------------------------------------------------------------------------------------------------
# 2. positive definiteness of the down-date


def _sym_eigvals(m: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(0.5 * (m + m.T)).numpy()


def downdate_check(post, xf, yf, curvature: str) -> tuple[dict, dict]:
    """The down-date Λ − H_f of ``post`` in the given curvature (:func:`downdate_parts`), checked as
    ``laplace-downdate`` checks it. Returns (facts, spectra of Λ, Λ − H_f and H_f)."""
    prec, H, fit_facts, refusal = downdate_parts(post, xf, yf, curvature)
    facts = {}
    facts["fit_min_eigenvalue"] = fit_facts.get("min_eigenvalue")
    facts["fit_num_nonpositive"] = fit_facts.get("num_nonpositive")
    facts["fit_repair"] = fit_facts.get("repair")
    spectra = {"before": _sym_eigvals(prec), "after": _sym_eigvals(prec - H), "forget": _sym_eigvals(H)}
    facts["dim"] = len(spectra["before"])
    facts["downdate_min_eigenvalue"] = float(spectra["after"].min())
    facts["downdate_num_negative"] = int((spectra["after"] <= 0).sum())
    facts["forget_curvature_num_negative"] = int((spectra["forget"] < 0).sum())
    facts["downdate_refused"] = refusal is not None  # the very check laplace-downdate runs
    if refusal is not None:
        facts["refusal"] = refusal[:300]
    return facts, spectra


def downdate_pd(cfg: dict, base_ggn: dict, progress: bool = False) -> tuple[dict, dict]:
    """Per seed and curvature: the fit's own PD repair, then the down-date's PD failure and spectrum."""
    rows, spectra = [], {}
    for seed in cfg["seeds"]:
        data = synthetic_1d(n=cfg["n"], seed=seed)
        idx = forget_region(data.x, *data.region)
        _, _, xf, yf = split(data.x, data.y, idx)
        if seed in base_ggn:
            post, fit_time = base_ggn[seed]
        else:
            post, fit_time = _fit(data, cfg, seed, "ggn", progress)
        for curvature in ("exact", "ggn"):
            row = {"seed": seed, "curvature": curvature, "num_forget": len(idx), "map_fit_time_s": fit_time}
            t0 = time.perf_counter()
            try:
                facts, sp = downdate_check(post, xf, yf, curvature)
            except Exception as e:  # reported, not hidden
                row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                continue
            row.update(facts, curvature_time_s=time.perf_counter() - t0)
            if seed == cfg["seeds"][0]:
                spectra[curvature] = sp
            rows.append(row)
    summary = {}
    for curvature in ("exact", "ggn"):
        rs = [r for r in rows if r["curvature"] == curvature and "error" not in r]
        summary[curvature] = {
            "seeds": len(rs), "downdate_failures": sum(r["downdate_refused"] for r in rs),
            "num_negative_per_seed": [r["downdate_num_negative"] for r in rs],
            "min_eigenvalue": min((r["downdate_min_eigenvalue"] for r in rs), default=None),
            "fit_needed_repair": sum(bool(r["fit_repair"]) for r in rs),
            "fit_num_nonpositive_per_seed": [r["fit_num_nonpositive"] for r in rs]}
    return {"rows": rows, "summary": summary}, spectra


# ------------------------------------------------------------------------------------------------
# 3./4. gap closed per method on a forget set


def method_rows(deletion: Deletion, cfg: dict, methods=METHODS) -> list[dict]:
    rows = [deletion.none_row()]
    for m in methods:
        name, opts = parse_variant(m)
        row, _, _ = deletion.score(name, **{**_method_options(name, cfg), **opts})
        rows.append(row)
    return rows


def _gap_rows(rows: list[dict], suffix: str = "") -> list[dict]:
    return [{"method": r["method"] + suffix, "split": s, "gap_closed": r[f"{s}/gap_closed"]}
            for r in rows if r["method"] != "none" for s in SPLITS]


def plot_fraction(path, section: dict) -> Path:
    """The deletion-fraction figure: gap closed per split against the fraction deleted
    (``figures.plot_gap_closed_sweep``)."""
    entries = section["entries"]
    fr = [100 * e["fraction"] for e in entries]
    present = {r["method"] for e in entries for r in e["rows"]}
    gaps = {}
    for m in (m for m in METHODS if m in present):
        rows = [next((r for r in e["rows"] if r["method"] == m), None) for e in entries]
        gaps[m] = {s: [None if r is None else r[f"{s}/gap_closed"] for r in rows] for s in SPLITS}
    return plot_gap_closed_sweep(
        path, fr, gaps, xticklabels=[f"{f:g}%" for f in fr], log_x=True,
        xlabel="fraction of the data deleted (random points)",
        title="Gap closed towards retraining vs. how much is deleted (random deletion)\n"
              "small forget sets: d(none, retrain) is tiny, so gap closed is a ratio of two small numbers")


# ------------------------------------------------------------------------------------------------


def run(out_dir: str | Path | None = None, *, quick: bool = False, seed: int = 0, progress: bool = False,
        log=print) -> dict:
    """Run all four questions; write ``pitfalls.json`` and the PNGs into ``out_dir`` if given."""
    cfg = CONFIGS["quick" if quick else "full"]
    cfg = {**cfg, "seeds": tuple(seed + s for s in cfg["seeds"])}
    out = Path(out_dir) if out_dir is not None else None
    t_start = time.perf_counter()
    timings = {}
    say = log or (lambda *_: None)

    # the base problem: region deletion on seed `seed`
    data = synthetic_1d(n=cfg["n"], seed=seed)
    post, fit_time = _fit(data, cfg, seed, "ggn", progress)
    dim = post.dim
    region = Deletion(post, data, forget_region(data.x, *data.region), seed, progress)
    say(f"fit {fit_time:.1f} s, retrain {region.retrain_time_s:.1f} s, d = {dim}, {region.num_forget} in region")
    timings["fit_s"], timings["region_retrain_s"] = fit_time, region.retrain_time_s

    t0 = time.perf_counter()
    sweep, sweep_results = lambda_sweep(region, cfg, dim)
    timings["lambda_sweep_s"] = time.perf_counter() - t0
    say(f"1. λ sweep: {timings['lambda_sweep_s']:.1f} s")

    t0 = time.perf_counter()
    pd, spectra = downdate_pd(cfg, {seed: (post, fit_time)}, progress)
    timings["downdate_pd_s"] = time.perf_counter() - t0
    say(f"2. down-date PD: {timings['downdate_pd_s']:.1f} s")

    # 3. region vs random of the same size (eubo-adjusted / rkl at quantile 0.99 reuse the λ sweep's runs)
    t0 = time.perf_counter()
    region_rows = method_rows(region, cfg)
    rand = Deletion(post, data, forget_random(len(data.x), region.num_forget, seed=seed), seed, progress)
    random_rows = method_rows(rand, cfg)
    rvr = {"num_forget": region.num_forget, "region": region_rows, "random": random_rows,
           "retrain_time_s": {"region": region.retrain_time_s, "random": rand.retrain_time_s}}
    timings["region_vs_random_s"] = time.perf_counter() - t0
    say(f"3. region vs random: {timings['region_vs_random_s']:.1f} s")

    # 4. deletion fraction
    t0 = time.perf_counter()
    entries = []
    for f in cfg["fractions"]:
        idx = forget_fraction(len(data.x), f, seed=seed)
        dl = Deletion(post, data, idx, seed, progress)
        entries.append({"fraction": f, "num_forget": len(idx), "retrain_time_s": dl.retrain_time_s,
                        "rows": method_rows(dl, cfg, cfg["fraction_methods"])})
    frac = {"entries": entries}
    timings["deletion_fraction_s"] = time.perf_counter() - t0
    say(f"4. deletion fraction: {timings['deletion_fraction_s']:.1f} s")
    timings["total_s"] = time.perf_counter() - t_start

    result = {"config": {"quick": quick, "seed": seed, "n": cfg["n"], "hidden": list(cfg["hidden"]), "dim": dim,
                         "family": "laplace (GGN, full)", "pd_seeds": list(cfg["seeds"]),
                         "fractions": list(cfg["fractions"]), "eubo_options": cfg["eubo"],
                         "rkl_options": cfg["rkl"], "methods": METHODS},
              "lambda_sweep": sweep, "downdate_pd": pd, "region_vs_random": rvr, "deletion_fraction": frac,
              "timings": timings, "figures": {}}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        figs = result["figures"]
        figs["lambda_sweep"] = plot_lambda_sweep(out / "lambda_sweep.png", sweep).name
        if spectra:
            first = cfg["seeds"][0]
            sp = {}
            for c, s in spectra.items():
                sp[f"{c}: Λ (fit on D)"] = s["before"]
                sp[f"{c}: Λ − H_f (down-dated)"] = s["after"]
            figs["spectra"] = plot_spectra(out / "downdate_spectra.png", sp).name
            result["downdate_pd"]["spectra_seed"] = first
            result["downdate_pd"]["spectra"] = {k: np.asarray(v).tolist() for k, v in sp.items()}
        figs["region_vs_random"] = plot_gap_closed(
            out / "region_vs_random.png", _gap_rows(region_rows, " · region") + _gap_rows(random_rows, " · random")).name
        figs["deletion_fraction"] = plot_fraction(out / "deletion_fraction.png", frac).name
        # predictive bands of the region deletion and the EUBO loss curves over λ
        bands = {"none": _band(region.none_preds["test"]), "retrain": _band(region.ref_preds["test"])}
        curves = {}
        for m in METHODS:
            _, preds, _ = region.score(m, **_method_options(m, cfg))
            if preds is not None:
                bands[m] = _band(preds["test"])
        for (m, kind, value), res in sweep_results.items():
            if m == "eubo-adjusted" and res is not None and res.losses:
                curves[f"λ = {value:g}" if kind == "lam" else f"quantile {value:g}"] = list(res.losses)
        figs["bands"] = plot_predictive_bands(out / "region_bands.png", data.x_grid, bands,
                                              x_retain=region.splits["retain"], y_retain=region.y_retain,
                                              x_forget=region.xf, y_forget=region.yf, region=data.region,
                                              max_cols=4).name
        if curves:
            figs["eubo_losses"] = plot_loss_curves(out / "eubo_adjusted_losses.png", curves).name
        timings["total_with_figures_s"] = time.perf_counter() - t_start
        write_result(out / "pitfalls.json", _clean(result))
    return result


def _band(pred) -> tuple:
    return pred.mean.detach(), pred.std.detach()


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pitfalls", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/pitfalls", help="folder for pitfalls.json and the PNGs")
    ap.add_argument("--quick", action="store_true", help="tiny problem, few steps, 2 λ values (< 1 min)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    res = run(args.out, quick=args.quick, seed=args.seed, progress=args.progress)
    print("1. λ sweep (predictive KL to retrain, forget / retain):")
    print(f"   none: {_fmt(res['lambda_sweep']['none']['forget/predictive_kl'])} / "
          f"{_fmt(res['lambda_sweep']['none']['retain/predictive_kl'])}")
    for p in res["lambda_sweep"]["points"]:
        line = "   " + f"{p['kind']}={p['value']:g} (log10 λ {_fmt(p['log10_lambda'])})".ljust(36)
        for m in ("eubo-adjusted", "rkl"):
            if m in p:
                r = p[m]
                line += f"{m}: {_fmt(r['forget/predictive_kl'])} / {_fmt(r['retain/predictive_kl'])}   "
        print(line)
    print("2. down-date positive definiteness:", json.dumps(_clean(res["downdate_pd"]["summary"])))
    print("3. region vs random, gap closed forget / retain / test:")
    for kind in ("region", "random"):
        for r in res["region_vs_random"][kind][1:]:
            print(f"   {kind:<7}{r['method']:<18}" + " ".join(_fmt(r[f'{s}/gap_closed']).rjust(8) for s in SPLITS))
    print("4. deletion fraction, gap closed on the test grid:")
    for e in res["deletion_fraction"]["entries"]:
        print(f"   {100 * e['fraction']:>4g}% ({e['num_forget']:>3} pts) " +
              " ".join(f"{r['method']}={_fmt(r['test/gap_closed'])}" for r in e["rows"][1:]))
    print(f"total {res['timings']['total_s']:.1f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
