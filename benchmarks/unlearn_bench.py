"""Unlearning against exact retraining: wall time, speed-up and gap closed, in one run.

For a posterior q(θ|D) fitted with ``inference.fit`` and a forget set D_f, every method's
unlearning wall time t_m (median over ``repeats``) is set against the wall time t_rt of ``retrain``
(the same inference, same options and convergence rule, from scratch on D_r; median over
``retrain_repeats`` seeds) in the same process, and against its fidelity:

    speed-up      = t_rt / t_m
    d(a, b)       = mean over the test grid of KL(p_a(y|x) ‖ p_b(y|x))  (linearised predictives,
                    analysis.metrics.predictive_kl)
    gap closed    = 1 - d(method, retrain) / d(none, retrain)            (analysis.metrics.gap_closed)
    noise floor   = d(retrain with another seed, retrain): the spread between two valid retrainings

Forget sets: round(f·N) training points drawn uniformly at random (``forget_fraction``), or a fixed
k (``forget_random``), seeded. Every method is called once untimed first (imports, first-call
set-up), then timed ``repeats`` times.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any, Callable

import torch

from bayes_unlearn.analysis.metrics import gap_closed, predictive_kl
from bayes_unlearn.inference import fit, predict
from bayes_unlearn.inference.posterior import Posterior
from bayes_unlearn.models import BayesianLinearRegression, BayesianMLP
from bayes_unlearn.models.forget_sets import forget_fraction, forget_random, split
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.unlearning import unlearn

RBF_CENTRES = torch.linspace(-4.0, 4.0, 9)
RBF_WIDTH = 0.8


def rbf_features(x: torch.Tensor) -> torch.Tensor:
    """φ_j(x) = exp(-(x - c_j)² / (2 w²)), 9 centres on [-4, 4], w = 0.8: [N, 1] -> [N, 9]."""
    return torch.exp(-(x - RBF_CENTRES) ** 2 / (2 * RBF_WIDTH**2))


def problem(kind: str, n: int, seed: int = 0, hidden: tuple[int, ...] = (32, 32)) -> dict:
    """Model and data: "blr" (conjugate BLR on RBF features of synthetic_1d, d = 10) or "bnn"."""
    data = synthetic_1d(n=n, seed=seed)
    if kind == "blr":
        return {"model": BayesianLinearRegression(9, prior_scale=1.0, noise=0.1), "x": rbf_features(data.x),
                "y": data.y, "x_raw": data.x, "grid": rbf_features(data.x_grid)}
    return {"model": BayesianMLP(1, hidden, "tanh", prior_scale="fan_in", noise=0.1), "x": data.x, "y": data.y,
            "x_raw": data.x, "grid": data.x_grid}


def _timed(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> tuple[float, list[float], Any]:
    if warm_up:
        fn()
    times, out = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        out = out if r else res
    return statistics.median(times), times, out


def _unlearn(post: Posterior, xf, yf, method: str, seed: int, options: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return unlearn(post, xf, yf, method, seed=seed, **options)


def compare(post: Posterior, x_f: torch.Tensor, y_f: torch.Tensor, grid: torch.Tensor, methods: dict[str, dict],
            repeats: int = 3, retrain_repeats: int = 1, seed: int = 0) -> dict:
    """Time every method and ``retrain`` on one forget set and score them on the grid (module docstring)."""
    rt_times: list[float] = []
    refs = []
    for r in range(retrain_repeats):
        t0 = time.perf_counter()
        refs.append(_unlearn(post, x_f, y_f, "retrain", seed + 1 + r, {}))
        rt_times.append(time.perf_counter() - t0)
    t_rt, ref = statistics.median(rt_times), refs[0]
    ref_pred = predict(ref.posterior, grid, seed=seed, linearised=True)
    d_none = predictive_kl(predict(post, grid, seed=seed, linearised=True), ref_pred)
    floor = predictive_kl(predict(refs[1].posterior, grid, seed=seed, linearised=True), ref_pred) if len(refs) > 1 else None
    rows = []
    for label, opts in methods.items():
        name = opts.get("method", label)
        options = {k: v for k, v in opts.items() if k != "method"}
        try:
            t_m, times, res = _timed(lambda: _unlearn(post, x_f, y_f, name, seed, options), repeats)
        except Exception as e:  # a method that cannot run on this posterior is reported, not hidden
            rows.append({"method": label, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        d = predictive_kl(predict(res.posterior, grid, seed=seed, linearised=True), ref_pred)
        diag = {k: v for k, v in res.diagnostics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"method": label, "options": options, "unlearn_s": t_m, "unlearn_s_all": times,
                     "speedup": t_rt / t_m, "kl_to_retrain": d, "gap_closed": gap_closed(d, d_none),
                     "steps": res.steps, "diverged": res.diverged, "warnings": list(res.warnings),
                     "diagnostics": diag})
    return {"num_forget": len(x_f), "retrain_s": t_rt, "retrain_s_all": rt_times,
            "retrain_steps": ref.steps, "kl_none_to_retrain": d_none, "noise_floor_kl": floor, "methods": rows}


def fidelity_case(kind: str, family: str, fit_options: dict, n: int, fractions: list[float], methods: dict,
                  repeats: int, retrain_repeats: int, seed: int = 0, fixed_k: int | None = None,
                  fixed_k_repeats: int | None = None, hidden: tuple[int, ...] = (32, 32)) -> dict:
    """Fit once at size n; for each forget fraction compare the methods with retraining.

    With ``fixed_k``, also time the methods (no retraining) on the k largest-x points, for the
    cost-vs-N comparison at a fixed |D_f|."""
    p = problem(kind, n, seed, hidden)
    t0 = time.perf_counter()
    post = fit(p["model"], p["x"], p["y"], family, seed=seed, progress=False, **fit_options)
    out = {"model": kind, "family": family, "fit_options": fit_options, "n": n, "num_params": post.dim,
           "fit_s": time.perf_counter() - t0, "fit_report": {k: v for k, v in post.meta.get("report", {}).items()
                                                           if k != "jit"}, "cells": []}
    for f in fractions:
        idx = forget_fraction(n, f, seed=seed) if round(f * n) >= 1 else forget_random(n, 1, seed=seed)
        _, _, xf, yf = split(p["x"], p["y"], idx)
        cell = compare(post, xf, yf, p["grid"], methods, repeats, retrain_repeats, seed)
        cell["fraction"] = f
        out["cells"].append(cell)
    if fixed_k:
        _, _, xf, yf = split(p["x"], p["y"], forget_random(n, fixed_k, seed=seed))
        out["fixed_k"] = {"k": fixed_k, "unlearn_s": {}}
        for label, opts in methods.items():
            name = opts.get("method", label)
            options = {k: v for k, v in opts.items() if k != "method"}
            try:
                out["fixed_k"]["unlearn_s"][label] = _timed(lambda: _unlearn(post, xf, yf, name, seed, options),
                                                           fixed_k_repeats or repeats)[0]
            except Exception:
                out["fixed_k"]["unlearn_s"][label] = math.nan
    return out


def data_scaling(post: Posterior, x_big: torch.Tensor, y_big: torch.Tensor, x_f: torch.Tensor, y_f: torch.Tensor,
                 sizes: list[int], methods: dict, repeats: int, seed: int = 0) -> dict:
    """Unlearning time for one posterior and one forget set while the training data it carries grows.

    The posterior (mean, covariance) is held fixed and only its data D (the first N rows of a larger
    draw, which contain D_f) changes, so any growth in time is work that scales with |D_r|."""
    out = {"sizes": sizes, "k": len(x_f), "unlearn_s": {m: [] for m in methods}}
    for n in sizes:
        p_n = post.replace(x=x_big[:n], y=y_big[:n])
        for label, opts in methods.items():
            name = opts.get("method", label)
            options = {k: v for k, v in opts.items() if k != "method"}
            out["unlearn_s"][label].append(_timed(lambda: _unlearn(p_n, x_f, y_f, name, seed, options), repeats)[0])
    out["ratio_largest_to_smallest"] = {m: v[-1] / v[0] for m, v in out["unlearn_s"].items()}
    return out
