"""Laplace unlearning: down-date the precision, or re-fit the Laplace approximation.

Down-date (DESIGN.md §4.2). With q(θ | D) = N(θ*, Λ⁻¹), g_f = ∇ log p(D_f | θ*) and
H_f = -∇² log p(D_f | θ*) (exact Hessian, or its GGN -- matching how Λ was built):

    Λ_r = Λ - H_f,        μ_r = θ* - Λ_r⁻¹ g_f     (one Newton step on log q(θ|D) - log p(D_f|θ))

or μ_r = θ* (``mean="keep"``). For conjugate linear regression both lines are exact.

Diagonal (mean-field) posteriors keep a diagonal: Λ_r = diag(Λ) − diag(H_f), and diag(H_f) is
computed without the d × d matrix -- for the GGN, streamed from per-example Jacobians of D_f,
diag(H_f) = Σ_{i∈D_f} (∇m_i)²/s_i² + 2(∇s_i)²/s_i² (:func:`inference.curvature.ggn_diagonal`); for
the exact Hessian, (H_f)_jj = −e_jᵀ ∇²log p(D_f|θ*) e_j from Hessian-vector products with blocks of
unit vectors (:func:`inference.curvature.hessian_diagonal`: exact, memory O(block · d), d products
over D_f; pass ``curvature="ggn"`` for a net too large for d products). Λ_r need not
be positive definite (exact Hessians of a non-convex net, diagonal structure, mismatched fits):
its smallest eigenvalue and the count of non-positive ones are always reported, and it is repaired
(eigenvalue clip or damping, ``repair=``) only on request -- otherwise the call raises.

Both are the covariance's own operations: H_f is computed in the structure's ``curvature_form``
(:func:`inference.laplace.curvature_term`, the same function that built Λ) and subtracted by
``old.cov.downdate(H_f)`` (:mod:`inference.covariance`); a full-rank or low-rank SVI covariance is
down-dated through its dense precision Λ = Σ⁻¹ and becomes a "precision" posterior.

Re-fit ("laplace-refit"): the Laplace approximation of the unlearning model itself,

    θ_u = argmax_θ  log q(θ | D) - log p(D_f | θ),     Λ_u = Λ - H_f(θ_u),

with the mode found by Pyro's ``AutoLaplaceApproximation`` on the unlearning model (warm-started at
θ*) and polished by float64 L-BFGS. Like the plain EUBO this objective is unbounded for nets; a
mode that runs off (Mahalanobis distance under q(θ|D) beyond ``max_distance``) is flagged.
"""

from __future__ import annotations

import torch

from ..inference.laplace import curvature_term, lbfgs_maximise
from ..inference.posterior import Posterior

from .base import ForgetSet, forget_bound, register, require_gaussian

__all__ = ["forget_curvature", "old_precision", "curvature_kind"]


def curvature_kind(old: Posterior) -> str:
    """The kind of curvature ("exact" or "ggn") the old precision was built with, which the forget set's term
    must match: the one ``meta['curvature']`` records for a structure whose Λ is a fitted curvature
    (``recorded_curvature``: Laplace fits), else "exact" (an SVI guide's Σ⁻¹)."""
    if not old.cov.recorded_curvature:
        return "exact"
    return (old.meta.get("curvature") or {}).get("curvature", "exact")


def old_precision(old: Posterior) -> tuple[torch.Tensor, str, str]:
    """(Λ over the active coordinates in the covariance's curvature form (float64), that form, the curvature
    kind of :func:`curvature_kind`) of the old posterior: what a down-date subtracts H_f from."""
    return old.cov.precision_form(), old.cov.curvature_form, curvature_kind(old)


def forget_curvature(old: Posterior, fs: ForgetSet, theta: torch.Tensor, form: str, curvature: str):
    """(g_f, H_f) at θ over the active coordinates: the gradient of log p(D_f|θ), and −∇² log p(D_f|θ) (or its
    GGN) in curvature ``form`` ("dense" [k, k] or "diag" [k], never the d × d matrix for "diag"), by
    :func:`inference.laplace.curvature_term`."""
    bound = forget_bound(old, fs)
    x, y = fs.x_forget.to(torch.float64), fs.y_forget.to(torch.float64)
    theta = theta.detach().to(torch.float64)
    g = torch.func.grad(lambda t: bound.log_likelihood(t, x, y).sum())(theta)
    if old.active is not None:
        g = g[old.active]
    H = curvature_term(bound, x, y, theta, form=form, curvature=curvature, index=old.active)
    return g, H


@register("laplace-downdate", "Λ_r = Λ - H_f and one Newton step for the mean (exact Hessian or GGN, "
          "as the posterior was built)")
def laplace_downdate(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False,
                     mean: str = "newton", curvature: str | None = None, repair: str | None = None,
                     floor: float | None = None) -> dict:
    if mean not in ("newton", "keep"):
        raise ValueError(f"mean must be 'newton' or 'keep', got {mean!r}")
    require_gaussian(old, "laplace-downdate")
    curvature = curvature or curvature_kind(old)
    theta = old.loc.to(torch.float64)
    g, H = forget_curvature(old, fs, theta, old.cov.curvature_form, curvature)
    warnings: list[str] = []
    cov, facts = old.cov.downdate(H, repair=repair, floor=floor)
    step = -cov.matvec(g)  # Λ_r⁻¹ g_f
    loc = theta.clone()
    if mean == "newton":
        if old.active is None:
            loc = loc + step
        else:
            loc[old.active] += step
    if facts.get("repair"):
        warnings.append(f"the down-dated precision was repaired: {facts['repair']}")
    facts["step_norm"] = float(step.norm()) if mean == "newton" else 0.0
    facts["curvature"] = curvature
    post = Posterior(loc=loc.to(cov.dtype), cov=cov, family=old.family, layout=old.layout,
                     meta={"fit": old.meta.get("fit"), "curvature": {**(old.meta.get("curvature") or {}), **facts}})
    return {"posterior": post, "warnings": warnings, "diagnostics": facts}


@register("laplace-refit", "Laplace approximation of q(θ|D)/p(D_f|θ): its mode (AutoLaplaceApproximation "
          "+ L-BFGS, warm-started) and the Hessian there")
def laplace_refit(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, num_steps: int = 500,
                  lr: float = 0.005, lbfgs_steps: int = 200, repair: str | None = None,
                  floor: float | None = None, max_distance: float | None = None) -> dict:
    import pyro
    from pyro.infer.autoguide import AutoLaplaceApproximation
    from pyro.infer.autoguide.initialization import init_to_value

    from ..inference.svi import DivergenceError, optimise_elbo

    from .objective import ForgetLikelihood, unlearning_model

    if not old.cov.gaussian or old.active is not None:
        raise ValueError("laplace-refit needs a Gaussian posterior over all coordinates")
    forget = ForgetLikelihood(forget_bound(old, fs), fs.x_forget, fs.y_forget)
    curv = curvature_kind(old)
    warnings: list[str] = []
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        model = unlearning_model(old, forget)
        guide = AutoLaplaceApproximation(model, init_loc_fn=init_to_value(values={"theta": old.loc.detach()}))
        try:
            rep = optimise_elbo(model, guide, (), num_steps=num_steps, lr=lr, window=50, max_plateaus=3,
                                progress=progress, desc="unlearn (Laplace MAP)")
            theta = guide.loc.detach().to(torch.float64).clone()
        except DivergenceError:  # handled below as a mode that ran off
            rep = {"steps": num_steps}
            theta = torch.full_like(old.loc, float("nan"), dtype=torch.float64)
    q = old.to_distribution()
    # the polish runs in float64 throughout (a float32 forget set would cap its accuracy at ~1e-5)
    forget64 = ForgetLikelihood(forget_bound(old, fs), fs.x_forget.double(), fs.y_forget.double())
    objective = lambda t: q.log_prob(t.to(old.loc.dtype)).to(torch.float64) - forget64(t)  # noqa: E731
    if lbfgs_steps and torch.isfinite(theta).all():
        try:
            theta = lbfgs_maximise(objective, theta, lbfgs_steps)
        except (ValueError, RuntimeError):  # the objective left its domain: treated as running away below
            theta = torch.full_like(theta, float("nan"))
    diff = theta - old.loc.to(torch.float64)
    r = float((diff @ old.cov.precision_matvec(diff)).sqrt()) if torch.isfinite(diff).all() else float("inf")
    limit = max_distance if max_distance is not None else 10.0 * (old.dim ** 0.5 + 3.0)
    diverged = (not torch.isfinite(theta).all()) or r > limit
    if diverged:
        warnings.append(f"the unlearning mode ran {r:.3g} Mahalanobis units from θ* (limit {limit:.3g}): the "
                        "objective log q(θ|D) - log p(D_f|θ) is unbounded for this model; the old mode is "
                        "returned with the down-dated precision. Try laplace-downdate, eubo-adjusted or rkl")
        theta = old.loc.to(torch.float64)
    _, H = forget_curvature(old, fs, theta, old.cov.curvature_form, curv)
    cov, facts = old.cov.downdate(H, repair=repair, floor=floor, what="re-fitted")
    theta = theta.to(cov.dtype)
    facts["mahalanobis_shift"] = r
    post = Posterior(loc=theta, cov=cov, family=old.family, layout=old.layout,
                     meta={"fit": old.meta.get("fit"), "curvature": {**(old.meta.get("curvature") or {}), **facts}})
    return {"posterior": post, "warnings": warnings, "diverged": diverged, "diagnostics": facts,
            "steps": rep["steps"], "final_objective": float(-objective(theta))}
