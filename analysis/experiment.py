"""One unlearning experiment against exact retraining: ``bayes-unlearn run`` (DESIGN.md §5).

Fit q(θ|D) with the configured inference family, remove D_f with every configured method, and score
each result (through its linearised predictive by default, ``analysis.predictive``) against ``retrain`` (the same inference from scratch on D_r, same family) on the
forget set D_f, the retained set D_r and the held-out test set (and a 1-D input grid when the data
has one). Per split, with p_m the method's and p_r the retrained moment-matched predictive:

    predictive_kl          mean_x KL(p_m(y|x) ‖ p_r(y|x))       (Nguyen et al., 2020)
    predictive_kl_reverse  mean_x KL(p_r(y|x) ‖ p_m(y|x))
    w2                     mean_x W₂(p_m(y|x), p_r(y|x))
    gap_closed             1 - predictive_kl(method) / predictive_kl(none)   (1 = retraining, 0 = nothing)
    gap_closed_w2          the same with W₂
    rmse, nll              against the targets (D_f, D_r, test)

plus ``region/predictive_std`` (mean predictive std on the grid inside a deleted region),
weight-space Gaussian KL/W₂ where meaningful (``weight/*`` against ``retrain`` for the linear model;
``weight_warm/*`` against ``retrain-warm`` for nets, whose retrained mode need not match), and
``retain/elpd_loo`` with ``retain/loo_khat_max`` (ArviZ PSIS-LOO on D_r, of the linearised predictive when
the metrics use it, ``analysis.arviz_io.linearised_loo``). The run also records the noise floor -- the same
distances between two retrainings with different seeds -- and the request's Pareto k̂ for
importance weights 1/p(D_f|θ) on draws of q(θ|D) (Vehtari et al.), a reliability signal that needs
no retraining. Every result also carries the method's own verdict ("ok" | "uncertain" | "failed",
``unlearning.verdict``: optimality on D_r, checked without retraining) with its reasons, numbers and cost;
a method that raised is "failed" with the error as its reason.

Outputs (:func:`run_experiment`): ``metrics.json``, ``metrics.csv``, ``report.md``, ``figures/*.png``,
``posteriors/<method>.nc`` (ArviZ InferenceData) with ``posteriors/<method>_summary.csv`` (``az.summary``),
``config.toml`` and ``environment.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..inference.covariance import Precision
from ..inference import fit, predict
from ..inference.laplace import median_example_gradient_norm
from ..inference.posterior import Posterior
from ..inference.predict import Prediction
from ..models.forget_sets import split
from ..unlearning import unlearn

from .ensemble import exchangeable_rank, floor_ratio, leave_one_out_floor, loo_distances, mixture, residual_memory
from .files import run_status, write_json_atomic, write_text_atomic
from .config import build_data, build_forget_indices, build_model, dump_toml, methods_to_run, region_bounds
from .metrics import gap_closed, gaussian_kl, gaussian_w2, nll, predictive_distances, rmse
from .config import corrupt_forget_set, forget_requests
from .scenarios import run_requests, scenario_metrics, scenario_request

__all__ = ["run_experiment", "SPLITS"]

SPLITS = ("forget", "retain", "test")
_PACKAGES = ("torch", "pyro-ppl", "arviz", "numpy", "seaborn", "scikit-learn", "bayes-unlearn")


def _weight_metrics(post: Posterior, ref: Posterior) -> dict[str, float]:
    try:
        return {"kl": gaussian_kl(post, ref), "w2": gaussian_w2(post, ref)}
    except (ValueError, RuntimeError):  # a singular covariance (e.g. too few empirical draws)
        return {"kl": math.nan, "w2": math.nan}


def environment(seed: int) -> dict:
    """Package versions, seed and machine facts for ``environment.json``."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": seed, "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "packages": versions}


def run_experiment(cfg: dict, out: str | Path, *, progress: bool = True) -> dict:
    """Run the experiment of a resolved configuration (see :func:`_run`) with ``analysis.threads`` torch threads.

    ``out/status.json`` says ``"running"`` while it runs, then ``"complete"``, ``"interrupted"`` (Ctrl-C; the
    KeyboardInterrupt is re-raised) or ``"failed"`` with the error (re-raised); every file is written atomically.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["analysis"]["threads"])
    try:
        plan = _plan(cfg)  # a bad configuration raises here, before anything is written
        with run_status(out):  # status.json: running -> complete | interrupted | failed (analysis.files)
            return _run(cfg, out, progress, plan)
    finally:
        torch.set_num_threads(threads)


def _plan(cfg: dict) -> tuple:
    """Everything that can fail on the configuration, before any work: the methods, data, model, forget set."""
    methods = methods_to_run(cfg)
    data = build_data(cfg)
    model = build_model(cfg, in_dim=data.x.shape[1])
    idx = build_forget_indices(cfg, data)
    data, corruption = corrupt_forget_set(cfg, data, idx)  # kind "corrupted": D_f's targets corrupted before fit
    requests = forget_requests(cfg, idx, len(data.x))      # kind "sequential": D_f as consecutive requests
    return methods, data, model, idx, corruption, requests


def _run(cfg: dict, out: str | Path, progress: bool, plan: tuple) -> dict:
    """Run the experiment of a resolved configuration (:func:`analysis.config.load_config`) into ``out``.

    Returns the ``metrics.json`` document: ``{"config", "request", "noise_floor", "results"}`` where
    each result is ``{"method", "wall_time_s", "metrics": {"<split>/<metric>": float}, "warnings", "verdict",
    "verdict_reasons", "verdict_numbers", "verdict_time_s"}`` (the verdict of ``unlearning.verdict``, computed
    without retraining: "ok" | "uncertain" | "failed"; a method that raised is "failed" with the error as reason).
    Invalid configurations raise :class:`analysis.config.ConfigError` before any fitting.
    """
    out = Path(out)
    seed = cfg["seed"]
    an = cfg["analysis"]
    methods, data, model, idx, corruption, requests = plan
    xr, yr, xf, yf = split(data.x, data.y, idx)
    for sub in ("figures", "posteriors"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.toml", dump_toml(cfg))
    write_json_atomic(out / "environment.json", environment(seed))

    family = cfg["inference"]["method"]
    t0 = time.perf_counter()
    post = fit(model, data.x, data.y, family, seed=seed, progress=progress, **cfg["inference"]["options"])
    fit_time = time.perf_counter() - t0
    inputs = {"forget": (xf, yf), "retain": (xr, yr), "test": (data.x_test, data.y_test)}
    if data.x_grid is not None:
        inputs["grid"] = (data.x_grid, None)
    S, linear_pred = an["predictive_samples"], an["predictive"] == "linearised"

    def predictions(p: Posterior) -> dict[str, Prediction]:
        return {s: predict(p, x, num_samples=S, seed=seed, linearised=linear_pred) for s, (x, _) in inputs.items()}

    opts = cfg["methods"].get("options", {})
    bar = tqdm(methods, desc="unlearning methods", disable=not progress)
    results, runs = [], {}
    seq, seq_cache = {}, {}  # kind "sequential": per-request entries by method; retrains shared between methods
    for name in bar:
        bar.set_postfix_str(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if requests is not None and name not in ("none", "retrain"):  # the references stay single-shot
                    res, seq[name] = run_requests(
                        post, data, requests, name, opts.get(name, {}), seed=seed, cache=seq_cache,
                        predict_fn=lambda p, x: predict(p, x, num_samples=S, seed=seed, linearised=linear_pred),
                        step_references=cfg["forget"].get("step_references", False),
                        retrain_options=opts.get("retrain", {}))
                else:
                    res = unlearn(post, xf, yf, name, seed=seed + (1 if name == "retrain" else 0), progress=False,
                                  **opts.get(name, {}))
            except Exception as e:  # a method that cannot run on this posterior is reported, not hidden
                err = f"{type(e).__name__}: {e}"
                results.append({"method": name, "wall_time_s": None, "metrics": {},
                                "warnings": [f"failed: {err}"], "error": True, "verdict": "failed",
                                "verdict_reasons": [f"the method raised {err}"], "verdict_numbers": {},
                                "verdict_time_s": None})
                continue
        runs[name] = (res, predictions(res.posterior))
        results.append({"method": name, "wall_time_s": res.wall_time_s, "metrics": {},
                        "warnings": list(res.warnings) + sorted({str(w.message) for w in caught if not issubclass(
                            w.category, (FutureWarning, DeprecationWarning))}),
                        "diverged": res.diverged, "steps": res.steps, **_verdict_fields(res),
                        "diagnostics": json.loads(json.dumps(res.diagnostics, default=str))})
        if name in seq:
            results[-1]["sequential"] = seq[name]
    bar.close()

    doc: dict[str, Any] = {"config": cfg, "request": _request(cfg, data, post, idx, xr, yr, xf, yf, fit_time),
                           "reference": {}, "noise_floor": {}, "results": results}
    doc["request"].update(scenario_request(corruption, requests, cfg))  # corrupted / sequential: what was done
    if "retrain" not in runs or "none" not in runs:  # a failed reference: report the rest, score nothing
        doc["reference"] = {"error": "the reference (retrain or none) failed; no method could be scored against it"}
        return _finish(doc, out, cfg, an, runs, results, data, post, xr, yr, xf, yf, seed)
    ref_res = runs["retrain"][0]
    retrain_preds, floor = _reference_ensemble(cfg, post, xf, yf, runs, predictions, opts, doc)
    ref_pred = {s: mixture([p[s] for p in retrain_preds]) for s in inputs}
    none_pred = runs["none"][1]
    d_none = {s: predictive_distances(none_pred[s], ref_pred[s]) for s in inputs}
    region = _region_mask(cfg, data)
    linear = cfg["model"]["name"] == "linear"
    warm_ref = runs.get("retrain-warm", (None,))[0]
    for row in results:
        if row.get("error"):
            continue
        res, pred = runs[row["method"]]
        m = row["metrics"]
        # K >= 2: against each leave-one-out mixture; K = 1: the floor is a second retrain against the reference
        loo = loo_distances(pred, retrain_preds, predictive_distances) if floor and len(retrain_preds) >= 2 else None
        for s in inputs:
            d = predictive_distances(pred[s], ref_pred[s])
            for k, v in d.items():
                m[f"{s}/{k}"] = v
            m[f"{s}/gap_closed"] = gap_closed(d["predictive_kl"], d_none[s]["predictive_kl"])
            m[f"{s}/gap_closed_w2"] = gap_closed(d["w2"], d_none[s]["w2"])
            if floor:  # the method against the references the floor's retrains faced (analysis.ensemble)
                held = (loo[s]["predictive_kl"] if loo else [d["predictive_kl"]])
                m[f"{s}/floor_ratio"] = floor_ratio(held, floor[s]["predictive_kl"])
                m[f"{s}/within_noise_floor"] = float(m[f"{s}/floor_ratio"] <= 1.0)
            y = inputs[s][1]
            if y is not None:
                m[f"{s}/rmse"] = rmse(pred[s], y)
                m[f"{s}/nll"] = nll(pred[s], y)
        if region is not None:
            m["region/predictive_std"] = float(pred["grid"].std[region].mean())
        if linear:
            m.update({f"weight/{k}": v for k, v in _weight_metrics(res.posterior, ref_res.posterior).items()})
        elif warm_ref is not None:
            m.update({f"weight_warm/{k}": v for k, v in _weight_metrics(res.posterior, warm_ref.posterior).items()})
        if floor:
            row["indistinguishable"] = all(m.get(f"{s}/within_noise_floor") == 1.0 for s in SPLITS)
        if len(retrain_preds) >= 2 and row["method"] != "retrain":  # the reference's first member is "retrain"
            # the method's rank among itself and the K retrains (analysis.ensemble.exchangeable_rank): uniform on
            # 1 … K + 1 if it were one more retrain; `bayes-unlearn sweep` pools it over seeds into a p-value
            ranks = exchangeable_rank({sp: pred[sp] for sp in SPLITS}, retrain_preds, _kl_only)
            m.update({f"{sp}/rank": v for sp, v in ranks.items()})
            m["rank_n"] = len(retrain_preds) + 1
        if row["method"] != "retrain":  # the share of θ*'s departure from the retrains' mean it kept (0: none, 1: all)
            # against ref_pred, the retrains' mixture already formed above (a one-member mixture is itself)
            m.update({f"{s}/memory": v for s, v in residual_memory(pred, [ref_pred], none_pred).items()})

    if floor:
        for sp in inputs:
            for k, vals in floor[sp].items():
                doc["noise_floor"][f"{sp}/{k}"] = sum(vals) / len(vals)
                doc["noise_floor"][f"{sp}/{k}_max"] = max(vals)
            doc["noise_floor"][f"{sp}/gap_closed"] = gap_closed(doc["noise_floor"][f"{sp}/predictive_kl"],
                                                                d_none[sp]["predictive_kl"])
    return _finish(doc, out, cfg, an, runs, results, data, post, xr, yr, xf, yf, seed)


def _finish(doc: dict, out: Path, cfg: dict, an: dict, runs: dict, results: list, data, post: Posterior,
            xr, yr, xf, yf, seed: int) -> dict:
    """Write the posteriors, metrics.json/csv, figures and report.md of a scored run."""
    scenario_metrics(doc)  # membership (every row) and, for a corrupted D_f, utility/* (analysis.scenarios)
    if an["netcdf"]:
        linear_loo = an["predictive"] == "linearised" and cfg["model"]["name"] != "linear"
        doc["request"]["elpd_loo_from"] = "linearised predictive" if linear_loo else "posterior draws"
        _write_posteriors(out / "posteriors", runs, an["posterior_draws"], seed, results, linear_loo)
    # JSON-able, with NaN/inf (e.g. gap closed when d(none, retrain) = 0) written as null
    doc = json.loads(json.dumps(doc, default=_json_default), parse_constant=lambda c: None)
    write_json_atomic(out / "metrics.json", doc, default=None)
    from .report import write_csv, write_report

    write_csv(doc, out / "metrics.csv")
    figures = _figures(out / "figures", cfg, data, post, runs, doc, xr, yr, xf, yf) if an["figures"] else {}
    write_report(doc, out / "report.md", figures)
    return doc


def _kl_only(p, ref) -> float:
    """The predictive KL of :func:`analysis.metrics.predictive_distances` (the distance ρ uses)."""
    return predictive_distances(p, ref)["predictive_kl"]


def _reference_ensemble(cfg: dict, post: Posterior, xf, yf, runs: dict, predictions, opts: dict,
                        doc: dict) -> tuple[list[dict], dict]:
    """The K retrains of the reference (``runs["retrain"]`` and K − 1 more, seeds seed+2 … seed+K) and the
    noise floor ``{split: {distance: [K leave-one-out values]}}`` (``analysis.ensemble``). With K = 1 the floor
    comes from one extra retrain (seed + 2) that is not part of the reference, if ``analysis.noise_floor``."""
    seed, an = cfg["seed"], cfg["analysis"]
    K = an["references"]
    first_res, first_pred = runs["retrain"]
    preds, times, seeds, errors = [first_pred], [first_res.wall_time_s], [seed + 1], []

    def another(k: int):  # a failing extra retrain is reported; the reference and the methods stand
        try:
            return unlearn(post, xf, yf, "retrain", seed=seed + k, progress=False, **opts.get("retrain", {}))
        except Exception as e:  # noqa: BLE001
            errors.append(f"retrain seed {seed + k}: {type(e).__name__}: {e}")
            return None

    for k in range(2, K + 1):
        other = another(k)
        if other is not None:
            preds.append(predictions(other.posterior))
            times.append(other.wall_time_s)
            seeds.append(seed + k)
    floor: dict = {}
    if len(preds) >= 2:
        floor = leave_one_out_floor(preds, predictive_distances)
    elif K == 1 and an["noise_floor"]:
        other = another(2)
        if other is not None:
            other_pred = predictions(other.posterior)
            floor = {s: {k: [v] for k, v in predictive_distances(other_pred[s], first_pred[s]).items()}
                     for s in first_pred}
            doc["noise_floor"]["retrain_time_s"] = other.wall_time_s
    doc["reference"] = {"kind": "ensemble" if len(preds) >= 2 else "single", "retrains": len(preds), "seeds": seeds,
                        "retrain_times_s": times,
                        "noise_floor": ("leave-one-out: each retrain against the mixture of the others"
                                        if len(preds) >= 2 else "one more retrain (seed + 2) against the reference"
                                        if floor else None)}
    if errors:
        doc["reference"]["error"] = ("fewer retrains than asked for (" + "; ".join(errors) + ")"
                                     + ("" if floor else "; no noise floor"))
    return preds, floor


def _verdict_fields(res) -> dict:
    """The result's verdict (``unlearning.verdict``, computed without retraining) as metrics.json fields."""
    v = res.verdict or {}
    return {"verdict": v.get("verdict"), "verdict_reasons": [str(r) for r in v.get("reasons", [])],
            "verdict_numbers": json.loads(json.dumps(dict(v.get("numbers", {})), default=_json_default)),
            "verdict_time_s": res.verdict_time_s}


def _json_default(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (tuple, set)):
        return list(v)
    return str(v)


def _region_mask(cfg: dict, data) -> torch.Tensor | None:
    """Grid points inside the deleted region (None without a grid or a region)."""
    region = region_bounds(cfg, data)
    if region is None or data.x_grid is None:
        return None
    g = data.x_grid[:, cfg["forget"].get("dim", 0)]
    mask = (g >= region[0]) & (g <= region[1])
    return mask if bool(mask.any()) else None


def _request(cfg: dict, data, post: Posterior, idx: torch.Tensor, xr, yr, xf, yf, fit_time: float) -> dict:
    """Facts about the deletion request, including PSIS k̂ of the weights 1/p(D_f|θ) under q(θ|D)."""
    an = cfg["analysis"]
    note = None
    from .arviz_io import psis_khat

    try:
        khat = psis_khat(post, xf, yf, num_samples=an["psis_samples"], seed=cfg["seed"])
        if not math.isfinite(khat):
            khat, note = None, ("k̂ is infinite: the importance weights 1/p(D_f|θ) are degenerate (one draw carries "
                                "all the weight), far beyond the 0.7 reliability threshold")
    except Exception as e:  # noqa: BLE001 -- reported as missing, the run goes on
        khat, note = None, f"PSIS failed: {type(e).__name__}: {e}"
    rep = post.meta.get("report") or {}
    grads = {"map_grad_norm": rep.get("grad_norm_at_map"), "example_grad_norm_median": None, "forget_grad_norm": None}
    if grads["map_grad_norm"] is not None:  # a Laplace fit: its leftover gradient beside the request's
        bound = post.bound_model()
        grads["example_grad_norm_median"] = rep.get("example_grad_norm_median") or median_example_gradient_norm(
            bound, post.x, post.y, post.loc)
        theta = post.loc.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(bound.log_likelihood(theta, xf.double(), yf.double()).sum(), theta)
        grads["forget_grad_norm"] = float(g.norm())
    from ..unlearning.verdict import forget_share

    share = forget_share(post, xf, yf, seed=cfg["seed"], x_retain=xr, y_retain=yr)  # the verdict's emptied-region κ
    return {**grads, "num_train": len(data.x), "num_forget": len(idx), "num_retain": len(data.x) - len(idx),
            "num_params": int(post.loc.numel()), "family": post.family, "structure": post.structure,
            "fit_time_s": fit_time, "psis_khat": khat, "psis_note": note, **share,
            "fit_warnings": list(post.meta.get("warnings", []))}


def _write_posteriors(folder: Path, runs: dict, draws: int, seed: int, results: list[dict],
                      linearised_loo: bool = False) -> None:
    from .arviz_io import save_netcdf, summary, to_inference_data

    rows = {r["method"]: r for r in results}
    for name, (res, _) in runs.items():
        try:
            idata = to_inference_data(res.posterior, num_samples=draws, seed=seed)
            save_netcdf(idata, folder / f"{name}.nc")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                summary(idata).to_csv(folder / f"{name}_summary.csv")
            loo = _loo(res.posterior, idata, linearised_loo, draws, seed)
            if loo is not None:
                rows[name]["metrics"]["retain/elpd_loo"], rows[name]["metrics"]["retain/loo_khat_max"] = loo
        except Exception as e:  # noqa: BLE001 -- the metrics stand without the file
            rows[name]["warnings"].append(f"InferenceData not written: {type(e).__name__}: {e}")


def _loo(post: Posterior, idata, linearised: bool, draws: int, seed: int) -> tuple[float, float] | None:
    """(elpd_loo, max Pareto k̂) by PSIS-LOO: of the linearised predictive for a net scored through it
    (``analysis.arviz_io.linearised_loo``; sampling a whole-net Gaussian through the net gives a
    meaningless −10⁶), else of the posterior draws in ``idata``. None when it cannot be computed."""
    from .arviz_io import linearised_loo, loo_numbers

    try:
        return linearised_loo(post, num_samples=draws, seed=seed) if linearised else loo_numbers(idata)
    except Exception:  # noqa: BLE001
        return None


def _figures(folder: Path, cfg: dict, data, post: Posterior, runs: dict, doc: dict, xr, yr, xf, yf) -> dict:
    """Write the report's figures; returns {caption: relative path}."""
    from . import figures as fg

    out: dict[str, str] = {}
    if data.x_grid is not None and data.x.shape[1] == 1:
        bands = {n: (p["grid"].mean, p["grid"].std) for n, (_, p) in runs.items()}
        fg.plot_predictive_bands(folder / "predictive.png", data.x_grid[:, 0], bands, x_retain=xr[:, 0], y_retain=yr,
                                 x_forget=xf[:, 0], y_forget=yf, region=region_bounds(cfg, data))
        out["Predictive mean ± 2 std of each method (coloured) against the full posterior (dashed) and "
            "exact retraining (black); forgotten points are red crosses"] = "figures/predictive.png"
    rows = [{"method": r["method"], "split": s, "gap_closed": r["metrics"].get(f"{s}/gap_closed")}
            for r in doc["results"] if not r.get("error") and r["method"] not in ("none", "retrain") for s in SPLITS]
    rows = [{**r, "gap_closed": math.nan if r["gap_closed"] is None else r["gap_closed"]} for r in rows]
    if rows:
        fg.plot_gap_closed(folder / "gap_closed.png", rows)
        out["Gap closed per method and split (1 = as good as retraining, 0 = no better than doing nothing)"] = \
            "figures/gap_closed.png"
    candidates = {"q(θ|D) precision Λ": post}
    for label, name in (("down-dated Λ − H_f", "laplace-downdate"), ("retrained precision", "retrain")):
        if name in runs:
            candidates[label] = runs[name][0].posterior
    spectra = {label: torch.linalg.eigvalsh(p.precision.double()).numpy()
               for label, p in candidates.items() if isinstance(p.cov, Precision)}
    if len(spectra) > 1:
        fg.plot_spectra(folder / "spectra.png", spectra)
        out["Eigenvalues of the Laplace precision before and after the down-date, and after retraining"] = \
            "figures/spectra.png"
    curves = {"fit q(θ|D)": post.meta.get("losses") or []}
    curves.update({n: list(res.losses) for n, (res, _) in runs.items() if res.losses})
    curves.update({f"{n} (retraining fit)": res.posterior.meta.get("losses") or []
                   for n, (res, _) in runs.items() if n.startswith("retrain")})
    curves = {k: v for k, v in curves.items() if len(v) > 1}
    if curves:
        fg.plot_loss_curves(folder / "losses.png", curves)
        out["Loss per optimisation step (negative ELBO / negative log joint / unlearning objective)"] = \
            "figures/losses.png"
    return out
