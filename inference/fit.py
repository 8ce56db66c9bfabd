"""``fit``: one entry point from (model, data, method) to a :class:`~inference.posterior.Posterior`.

Methods (the inference *family* of the result; unlearning re-runs the same family):

    "meanfield" | "lowrank" | "fullrank"   SVI with a Pyro autoguide        (inference.svi)
    "laplace"                              MAP + curvature, exact or GGN    (inference.laplace)
    "nuts"                                 NUTS draws, R-hat/ESS via ArviZ  (inference.nuts)

Each writes how it was run into ``posterior.meta['fit']`` so that the identical inference can be
re-run on retained data (exact retraining).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..models.validation import as_regression_tensors, check_seed

from .covariance import Empirical, structure_class
from .laplace import LAPLACE_STRUCTURES, find_map, find_map_lm, laplace_covariance, median_example_gradient_norm
from .latent import BoundModel, check_feature_count
from .nuts import run_nuts
from .posterior import Posterior
from .svi import DEFAULT_ELBO, GUIDES, STRUCTURE_OF, fit_svi_fields

__all__ = ["fit", "METHODS", "resolve_optimizer", "LM_AUTO_MIN_N"]

METHODS = {
    "meanfield": "SVI, mean-field Gaussian guide (AutoDiagonalNormal)",
    "lowrank": "SVI, low-rank + diagonal Gaussian guide (AutoLowRankMultivariateNormal)",
    "fullrank": "SVI, full-covariance Gaussian guide (AutoMultivariateNormal)",
    "laplace": "Laplace: MAP (AutoLaplaceApproximation + L-BFGS) and exact-Hessian or GGN precision",
    "nuts": "NUTS reference draws (pyro.infer.MCMC), R-hat and ESS from ArviZ",
}
_SVI_OPTS = {"num_steps", "lr", "num_particles", "clip_norm", "window", "max_plateaus", "min_steps",
             "init_scale", "rank", "elbo", "batch_size", "factor_lr", "restarts"}
_MAP_OPTS = {"num_steps", "lr", "lbfgs_steps", "window", "max_plateaus", "min_steps", "clip_norm", "elbo",
             "batch_size"}
_LM_OPTS = {"lm_max_iters", "lm_gtol"}
ADAM_ONLY_OPTIONS = _MAP_OPTS - {"lbfgs_steps", "min_steps"}  # the Adam + L-BFGS MAP search's, refused with "lm"
_LAPLACE_OPTS = _MAP_OPTS | _LM_OPTS | {"optimizer", "curvature", "structure", "subset", "repair", "floor"}
_NUTS_OPTS = {"num_samples", "warmup_steps", "num_chains", "target_accept_prob", "max_tree_depth"}
MAP_GRAD_TOL = 1e-2  # gradient norm at θ* above which the Laplace fit warns that θ* is not a mode
#: ``optimizer="auto"`` (the default) uses Levenberg–Marquardt from this many data points on, for a Normal
#: observation and no Adam-only option given; Adam + L-BFGS below (README, "Which optimiser")
LM_AUTO_MIN_N = 1024
# options that must be numbers (int-only ones must also be integers), checked before any work
_POSITIVE_NUMBERS = {"lr", "clip_norm", "init_scale", "factor_lr", "lm_gtol", "floor", "target_accept_prob"}
_POSITIVE_INTS = {"num_steps", "num_particles", "window", "max_plateaus", "rank", "batch_size", "lm_max_iters",
                  "num_samples", "num_chains", "max_tree_depth"}
_NONNEGATIVE_INTS = {"lbfgs_steps", "min_steps", "warmup_steps", "restarts"}
ALLOWED_OPTIONS = {"meanfield": _SVI_OPTS, "lowrank": _SVI_OPTS, "fullrank": _SVI_OPTS,
                   "laplace": _LAPLACE_OPTS, "nuts": _NUTS_OPTS}


# options that take one of a few names, checked before any work (``solver`` is the union over the methods that
# take one: a typo is caught here, a name that exists but not for that method by the method itself)
OPTION_CHOICES: dict[str, tuple] = {
    "curvature": ("exact", "ggn"), "structure": tuple(LAPLACE_STRUCTURES), "repair": (None, "clip", "damp"),
    "elbo": ("direct", "trace"), "optimizer": ("auto", "adam-lbfgs", "lm"), "mean": ("newton", "keep"),
    "init": ("old", "lm"), "scope": ("global", "layer"), "engine": ("ggn-lbfgs", "lm"), "solver": ("auto", "dense", "hvp", "dual", "primal", "cg"),
}


def check_option_types(options: dict) -> None:
    """One-line ValueError naming an option whose value has the wrong type or sign (e.g. ``lr="fast"``), or
    that is not one of its names (``OPTION_CHOICES``, e.g. ``mean="hold"``)."""
    for k, v in options.items():
        if k in OPTION_CHOICES and not isinstance(v, Posterior):
            if not (v is None or isinstance(v, str)) or v not in OPTION_CHOICES[k]:
                names = ", ".join(repr(c) for c in OPTION_CHOICES[k])
                raise ValueError(f"option {k} must be one of {names}, got {v!r}")
        if k in _POSITIVE_INTS | _NONNEGATIVE_INTS:
            low = 0 if k in _NONNEGATIVE_INTS else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"option {k} must be an integer >= {low}, got {v!r}")
        elif k in _POSITIVE_NUMBERS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"option {k} must be a positive number, got {v!r}")


def resolve_optimizer(bound: BoundModel, x: torch.Tensor, options: dict) -> str:
    """The Laplace MAP search ``fit`` runs: ``options["optimizer"]`` when it names one; for ``"auto"`` (the
    default) "lm" when N ≥ :data:`LM_AUTO_MIN_N` (or an LM option such as ``lm_gtol`` is given), the
    observation is Normal (the GGN applies) and no Adam-only option (``num_steps``, ``lr``, …) is given, else
    "adam-lbfgs". Why (``benchmarks/lm_map.py``, default
    BNN, one thread): at N = 10k Levenberg–Marquardt with data continuation reaches ‖∇‖ < 1e-2 where
    Adam + L-BFGS stops at ‖∇‖ ≈ 47; at N = 300 both reach it."""
    chosen = options.get("optimizer", "auto")
    if chosen != "auto":
        return chosen
    if set(options) & ADAM_ONLY_OPTIONS:
        return "adam-lbfgs"
    if len(x) < LM_AUTO_MIN_N and not set(options) & _LM_OPTS:  # an LM option (lm_gtol, …) asks for LM
        return "adam-lbfgs"
    from .curvature import observation_params
    from .laplace import prior_draw

    try:
        observation_params(bound, x[:1].to(torch.float64))(prior_draw(bound, x[:1], 0).to(torch.float64))
    except NotImplementedError:  # not a Normal observation: no GGN
        return "adam-lbfgs"
    return "lm"


def _json_safe(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_json_safe(u) for u in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def fit(model: Callable, x: Any, y: Any, method: str = "fullrank", *, seed: int = 0, progress: bool = True,
        init: Posterior | None = None, **options: Any) -> Posterior:
    """Approximate the posterior p(θ | x, y) of a conforming Pyro model.

    Parameters
    ----------
    model : a Pyro program ``model(x, y=None)`` (see the README's model convention).
    x, y : training inputs [N, D] (or [N]) and targets [N]; array-likes are converted to float32.
    method : one of :data:`METHODS`.
    seed : every random choice is derived from it; the global torch RNG is left untouched.
    progress : show tqdm progress bars.
    init : warm start from an existing posterior of the same family (used by ``retrain-warm``);
        ignored by NUTS, with a warning in ``meta['warnings']``.
    **options : method options, e.g. ``num_steps``, ``lr``, ``elbo='direct'|'trace'``, ``batch_size``
        (SVI and the MAP phase of Laplace; see inference.svi); ``factor_lr``, ``restarts``, ``init_scale``,
        ``rank`` (SVI; defaults from ``inference.svi.family_defaults``); ``curvature='exact'|'ggn'``,
        ``structure='full'|'diag'|'last-layer'|'kron'`` (kron: KFAC, BayesianMLP with fixed noise), ``repair=None|'clip'|'damp'`` (Laplace);
        ``num_samples``, ``warmup_steps``, ``num_chains`` (NUTS). Unknown options raise.

    Returns
    -------
    Posterior over the flat unconstrained latent vector, holding the model and training data.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inference method {method!r}; choose one of {sorted(METHODS)}")
    unknown = set(options) - ALLOWED_OPTIONS[method]
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {method!r}; "
                         f"allowed: {sorted(ALLOWED_OPTIONS[method])}")
    check_option_types(options)
    seed = check_seed(seed)
    if init is not None and not isinstance(init, Posterior):
        raise TypeError(f"init must be a Posterior of the same family (or None), got {type(init).__name__}")
    x, y = as_regression_tensors(x, y)
    if y is None:
        raise ValueError("y is required to fit a posterior")
    check_feature_count(model, x, "x")
    x, y = x.clone(), y.clone()
    bound = BoundModel(model, x, y)
    fit_meta = {"method": method, "seed": seed, "options": {k: _json_safe(v) for k, v in options.items()}}
    meta: dict[str, Any] = {"fit": fit_meta, "num_data": len(x), "warnings": []}
    if init is not None and init.family != method:
        raise ValueError(f"init posterior has family {init.family!r}, but method is {method!r}")

    if method in GUIDES:
        init_fields = None
        if init is not None:
            init_fields = {k: v.to(x.dtype) for k, v in {"loc": init.loc, **init.cov.fields()}.items()}
        fields, report = fit_svi_fields(bound, x, y, method, seed=seed, progress=progress,
                                        init_fields=init_fields, **options)
        meta["report"] = {k: report[k] for k in ("steps", "converged", "wall_time_s", "elbo", "batch_size",
                                                 "restarts", "defaults")}
        if "jit" in report:
            meta["report"]["jit"] = report["jit"]
        meta["losses"] = report["losses"]
        for r in report["restarts"]:
            meta["warnings"].append(
                f"SVI diverged at step {r['step']} ({r['what']} became {r['value']}); restarted from step "
                f"{r['resumed_from']} with the step size halved to {r['lr']:.3g}")
        if not report["converged"] and not report["stopped"]:
            meta["warnings"].append(
                f"SVI did not meet the convergence rule in {report['steps']} steps (it stopped at num_steps before "
                "max_plateaus step-size halvings); raise num_steps")
        cov = structure_class(STRUCTURE_OF[method]).from_fields(fields)
        return Posterior(loc=fields["loc"], cov=cov, family=method, layout=bound.layout, model=model,
                         x=x, y=y, meta=meta)

    if method == "laplace":
        optimizer = resolve_optimizer(bound, x, options)
        curv_opts = {k: v for k, v in options.items() if k in {"curvature", "structure", "subset", "repair", "floor"}}
        if optimizer == "lm":
            bad = set(options) & ADAM_ONLY_OPTIONS
            if bad:
                raise ValueError(f"option(s) {sorted(bad)} belong to the Adam + L-BFGS MAP search, not to "
                                 "optimizer='lm' (which takes lm_max_iters, lm_gtol)")
            theta, report = find_map_lm(bound, x, y, seed=seed, init_loc=None if init is None else init.loc,
                                        max_iters=options.get("lm_max_iters", 200),
                                        gtol=options.get("lm_gtol", 1e-3), lbfgs_steps=options.get("lbfgs_steps", 5000))
        else:
            map_opts = {k: v for k, v in options.items() if k in _MAP_OPTS}
            # the MAP's SVI phase: direct ELBO on the model's log joint by default (inference.svi)
            map_opts.setdefault("elbo", DEFAULT_ELBO)
            map_opts.update(bound_model=bound, batch_seed=seed)
            theta, report = find_map(bound, x, y, seed=seed, progress=progress,
                                     init_loc=None if init is None else init.loc.to(x.dtype), **map_opts)
        cov, facts = laplace_covariance(bound, x, y, theta, **curv_opts)
        meta["report"] = {k: report.get(k) for k in ("steps", "converged", "wall_time_s", "grad_norm_at_map", "elbo",
                                                     "batch_size", "optimizer", "lm")}
        meta["losses"] = report["losses"]
        meta["curvature"] = facts
        if report["grad_norm_at_map"] > MAP_GRAD_TOL:
            # the leftover gradient beside the size of one point's gradient (what a deletion moves)
            per_point = meta["report"]["example_grad_norm_median"] = median_example_gradient_norm(bound, x, y, theta)
            scale = ("" if not per_point else f", {report['grad_norm_at_map'] / per_point:.3g}× the median "
                     f"single point's gradient ({per_point:.3g}), i.e. as large as the change a deletion of that many "
                     "points asks for")
            meta["warnings"].append(
                f"the MAP search stopped at ‖∇ log p(θ, D)‖ = {report['grad_norm_at_map']:.3g} (> {MAP_GRAD_TOL}"
                f"{scale}): θ* is not a mode, so the Laplace approximation and Newton down-dates from it are off; "
                "raise lbfgs_steps or num_steps, or use optimizer='lm'")
        if facts.get("repair"):
            meta["warnings"].append(f"Laplace precision was repaired: {facts['repair']}")
        return Posterior(loc=theta, cov=cov, family=method, layout=bound.layout, model=model, x=x, y=y, meta=meta)

    if init is not None:
        meta["warnings"].append("init was ignored: NUTS starts from its own initialisation and adaptation")
    draws, report = run_nuts(bound, x, y, seed=seed, progress=progress, **options)
    meta["diagnostics"] = report["diagnostics"]
    meta["report"] = {"wall_time_s": report["wall_time_s"]}
    meta["warnings"].extend(report["warnings"])
    return Posterior(loc=draws.mean(0), cov=Empirical(draws), family="nuts", layout=bound.layout, model=model,
                     x=x, y=y, meta=meta)
