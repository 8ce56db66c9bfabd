"""Deletion scenarios of ``bayes-unlearn run`` beyond a single request: ``corrupted`` and ``sequential``.

``forget.kind = "corrupted"`` -- before the fit, the targets of a seeded random subset D_f of the training
rows are corrupted (:func:`models.forget_sets.corrupt_targets`: shifted by ``shift``·std(y), or replaced by
wide noise); q(θ|D) is fitted on the corrupted data and every method is asked to forget exactly D_f. The
test set is clean, so test error measures how much of the damage a method undoes (Warnecke et al., 2023,
*Machine Unlearning of Features and Labels*):

    utility/test_<e>_recovered = (e_none − e_method) / (e_none − e_retrain),  e = test RMSE or NLL

(1 = retraining's test error, 0 = no better than keeping the corrupted rows).

``forget.kind = "sequential"`` -- a random D_f is cut into ``requests`` consecutive deletion requests of
(nearly) equal size, and every non-reference method removes them one after another
(:func:`unlearning.unlearn_sequential`, ``on_failure="continue"``): request j starts from the posterior
request j−1 produced, so approximation errors can accumulate (the drift reported by the CureNewton paper).
``retrain`` and ``none`` stay single-shot on the final D_r, so the final metrics are comparable with a
one-request run. After each request the method's predictive is scored on the test set and on the rows
deleted so far; with ``forget.step_references = true`` the run also retrains (one seed) after each request
and reports the predictive KL to that retrain and the gap closed -- this costs ``requests`` extra
retrainings, shared by all methods (about ``requests`` times the cost of the ``retrain`` row).

For every scenario each result row gets ``membership`` = NLL(D_f) − NLL(test) (a loss-based membership
signal, :func:`analysis.metrics.membership_signal`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..inference.posterior import Posterior
from ..inference.predict import Prediction
from ..models.data import RegressionData
from ..unlearning import unlearn, unlearn_sequential
from ..unlearning.base import UnlearningResult

from .metrics import gap_closed, membership_signal, nll, predictive_kl, recovered_fraction, rmse

__all__ = ["VERDICT_ORDER", "worst_verdict", "run_requests", "scenario_metrics", "scenario_request"]

#: verdicts from best to worst; a sequence of requests is as bad as its worst request
VERDICT_ORDER = ("ok", "uncertain", "failed")


def worst_verdict(verdicts: list[str | None]) -> str | None:
    """The worst of several verdicts (failed > uncertain > ok); None when none of them is known."""
    known = [v for v in verdicts if v in VERDICT_ORDER]
    return max(known, key=VERDICT_ORDER.index) if known else None


def run_requests(post: Posterior, data: RegressionData, requests: list[torch.Tensor], method: str,
                 options: dict, *, seed: int, predict_fn: Callable[[Posterior, torch.Tensor], Prediction],
                 step_references: bool = False, retrain_options: dict | None = None,
                 cache: dict | None = None) -> tuple[UnlearningResult, list[dict]]:
    """Remove ``requests`` (index tensors into ``data``'s training rows) from ``post`` one after another.

    Returns the combined result -- the last request's posterior, with wall time and verdict time summed over
    requests, the worst verdict (its reasons prefixed by the request), every request's warnings, ``diverged``
    if any diverged -- and one entry per request: ``{"request", "num_forget", "num_forgotten_so_far",
    "num_retain", "wall_time_s", "verdict", "test/rmse", "test/nll", "forget_so_far/nll"}`` scored with
    ``predict_fn`` (the run's predictive); with ``step_references`` also ``"test/predictive_kl"`` and
    ``"test/gap_closed"`` against a retrain (seed + 1) on the data left after the request. ``cache`` (one
    dict per run) shares those retrains and ``post``'s test predictive between methods.
    """
    cache = {} if cache is None else cache
    pairs = [(data.x[r], data.y[r]) for r in requests]
    results = unlearn_sequential(post, pairs, method, seed=seed, on_failure="continue", **options)
    if "none_test" not in cache:
        cache["none_test"] = predict_fn(post, data.x_test)
    steps, done = [], []
    for j, (res, r) in enumerate(zip(results, requests)):
        done.append(r)
        so_far = torch.cat(done)
        test_pred = predict_fn(res.posterior, data.x_test)
        entry: dict[str, Any] = {
            "request": j, "num_forget": len(r), "num_forgotten_so_far": len(so_far),
            "num_retain": None if res.posterior.x is None else len(res.posterior.x),
            "wall_time_s": res.wall_time_s, "verdict": res.verdict.get("verdict"),
            "test/rmse": rmse(test_pred, data.y_test), "test/nll": nll(test_pred, data.y_test),
            "forget_so_far/nll": nll(predict_fn(res.posterior, data.x[so_far]), data.y[so_far])}
        if step_references:
            if j not in cache:
                ref = unlearn(post, data.x[so_far], data.y[so_far], "retrain", seed=seed + 1, progress=False,
                              **(retrain_options or {}))
                cache[j] = predict_fn(ref.posterior, data.x_test)
            kl = predictive_kl(test_pred, cache[j])
            entry["test/predictive_kl"] = kl
            entry["test/gap_closed"] = gap_closed(kl, predictive_kl(cache["none_test"], cache[j]))
        steps.append(entry)
    last = results[-1]
    verdict = worst_verdict([res.verdict.get("verdict") for res in results])
    reasons = [f"request {j}: {why}" for j, res in enumerate(results) for why in res.verdict.get("reasons", [])
               if res.verdict.get("verdict") != "ok"]
    warns = tuple(dict.fromkeys(f"request {j}: {w}" for j, res in enumerate(results) for w in res.warnings))
    step_counts = [res.steps for res in results]
    combined = dataclasses.replace(
        last, wall_time_s=sum(res.wall_time_s for res in results),
        verdict_time_s=sum(res.verdict_time_s for res in results),
        verdict={"verdict": verdict, "reasons": reasons or list(last.verdict.get("reasons", [])),
                 "numbers": dict(last.verdict.get("numbers", {}))},
        warnings=warns, diverged=any(res.diverged for res in results),
        steps=None if any(s is None for s in step_counts) else sum(step_counts))
    return combined, steps


def scenario_request(corruption: dict | None, requests: list[torch.Tensor] | None, cfg: dict) -> dict:
    """Extra keys of metrics.json's "request": ``corruption`` (mode, shift, seed, std_y_train, num_corrupted,
    mean_abs_change) and/or ``sequential`` (requests, sizes, seed, step_references)."""
    out: dict[str, Any] = {}
    if corruption is not None:
        out["corruption"] = corruption
    if requests is not None:
        f = cfg["forget"]
        out["sequential"] = {"requests": len(requests), "sizes": [len(r) for r in requests],
                             "seed": f.get("seed", cfg["seed"]), "step_references": f.get("step_references", False)}
    return out


def scenario_metrics(doc: dict) -> None:
    """Add the derived metrics to every scored row of a metrics.json document (in place).

    ``membership`` (every scenario, from ``forget/nll`` and ``test/nll``) and, for ``forget.kind =
    "corrupted"``, ``utility/test_rmse_recovered`` and ``utility/test_nll_recovered`` against the ``none``
    and ``retrain`` rows (NaN when retraining did not improve on ``none``).
    """
    rows = [r for r in doc["results"] if not r.get("error")]
    for r in rows:
        m = r["metrics"]
        if m.get("forget/nll") is not None and m.get("test/nll") is not None:
            m["membership"] = membership_signal(m["forget/nll"], m["test/nll"])
    if doc["config"]["forget"]["kind"] != "corrupted":
        return
    by = {r["method"]: r["metrics"] for r in rows}
    if "none" not in by or "retrain" not in by:
        return
    for r in rows:
        for e in ("rmse", "nll"):
            vals = [m.get(f"test/{e}") for m in (by["none"], r["metrics"], by["retrain"])]
            if all(v is not None for v in vals):
                r["metrics"][f"utility/test_{e}_recovered"] = recovered_fraction(*vals)
