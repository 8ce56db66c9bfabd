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

Re-fit ("laplace-refit"): the Laplace approximation of the unlearning model itself,

    θ_u = argmax_θ  log q(θ | D) - log p(D_f | θ),     Λ_u = Λ - H_f(θ_u),

with the mode found by Pyro's ``AutoLaplaceApproximation`` on the unlearning model (warm-started at
θ*) and polished by float64 L-BFGS. Like the plain EUBO this objective is unbounded for nets; a
mode that runs off (Mahalanobis distance under q(θ|D) beyond ``max_distance``) is flagged.
"""

from __future__ import annotations

import torch

from ..inference.curvature import ggn, ggn_diagonal, hessian, hessian_diagonal
from ..inference.laplace import check_and_repair_diagonal, check_and_repair_precision, lbfgs_maximise
from ..inference.posterior import Posterior

from .base import ForgetSet, forget_bound, register

__all__ = ["forget_curvature", "old_precision"]


def old_precision(old: Posterior) -> tuple[torch.Tensor, str, str]:
    """(Λ or its diagonal over the active coordinates, 'dense'|'diag', curvature) of the old posterior."""
    curv = (old.meta.get("curvature") or {}).get("curvature", "exact")
    if old.structure == "precision":
        return old.precision.to(torch.float64), "dense", curv
    if old.structure == "diag":
        return old.scale.to(torch.float64).pow(-2), "diag", curv
    cov = old._active_cov().to(torch.float64)
    return torch.cholesky_inverse(torch.linalg.cholesky(cov)), "dense", "exact"


def forget_curvature(old: Posterior, fs: ForgetSet, theta: torch.Tensor, kind: str, curvature: str):
    """(g_f, H_f) at θ over the active coordinates: gradient of log p(D_f|θ) and -∇² (or GGN)."""
    bound = forget_bound(old, fs)
    x, y = fs.x_forget.to(torch.float64), fs.y_forget.to(torch.float64)
    theta = theta.detach().to(torch.float64)
    idx = old.active
    f = lambda t: bound.log_likelihood(t, x, y).sum()  # noqa: E731
    g = torch.func.grad(f)(theta)
    if kind == "diag":   # never the d × d matrix: streamed GGN diagonal, or exact diagonal by blocked HVPs
        H = ggn_diagonal(bound, x, theta) if curvature == "ggn" else -hessian_diagonal(f, theta)
    elif curvature == "ggn":
        H = ggn(bound, x, theta, idx)
    else:
        H = -hessian(f, theta)
        if idx is not None:
            H = H[idx][:, idx]
    if idx is not None:
        g = g[idx]
    return g, H


def downdate(prec: torch.Tensor, H_f: torch.Tensor, kind: str, repair: str | None, floor: float | None,
             what: str = "down-dated") -> tuple[torch.Tensor, dict]:
    """Λ − H_f (dense, or diagonal for kind 'diag'), checked and repaired only on request."""
    if kind == "diag":
        return check_and_repair_diagonal(prec - H_f, repair, floor, what=f"{what} diagonal precision")
    return check_and_repair_precision(prec - H_f, repair, floor, what=f"{what} precision")


def precision_fields(prec: torch.Tensor, kind: str, dtype: torch.dtype) -> tuple[dict, str]:
    """Posterior fields and structure for a precision (a diagonal is stored as float ``dtype`` scales)."""
    if kind == "diag":
        return {"scale": prec.rsqrt().to(dtype)}, "diag"
    return {"precision": prec}, "precision"


@register("laplace-downdate", "Λ_r = Λ - H_f and one Newton step for the mean (exact Hessian or GGN, "
          "as the posterior was built)")
def laplace_downdate(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False,
                     mean: str = "newton", curvature: str | None = None, repair: str | None = None,
                     floor: float | None = None) -> dict:
    if mean not in ("newton", "keep"):
        raise ValueError(f"mean must be 'newton' or 'keep', got {mean!r}")
    if old.structure == "empirical":
        raise ValueError("laplace-downdate needs a Gaussian posterior; this one is empirical (draws)")
    prec, kind, curv_old = old_precision(old)
    curvature = curvature or curv_old
    theta = old.loc.to(torch.float64)
    g, H = forget_curvature(old, fs, theta, kind, curvature)
    warnings: list[str] = []
    prec_r, facts = downdate(prec, H, kind, repair, floor)
    step = -g / prec_r if kind == "diag" else -torch.linalg.solve(prec_r, g)
    fields, structure = precision_fields(prec_r, kind, old.loc.dtype)
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
    post = Posterior(loc=loc.to(old.loc.dtype) if structure == "diag" else loc, structure=structure,
                     family=old.family, layout=old.layout, active=old.active,
                     meta={"fit": old.meta.get("fit"), "curvature": {**(old.meta.get("curvature") or {}), **facts}},
                     **fields)
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

    if old.structure == "empirical" or old.active is not None:
        raise ValueError("laplace-refit needs a Gaussian posterior over all coordinates")
    forget = ForgetLikelihood(forget_bound(old, fs), fs.x_forget, fs.y_forget)
    prec, kind, curv = old_precision(old)
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
    r = float((diff @ (prec @ diff if kind == "dense" else prec * diff)).sqrt()) if torch.isfinite(diff).all() \
        else float("inf")
    limit = max_distance if max_distance is not None else 10.0 * (old.dim ** 0.5 + 3.0)
    diverged = (not torch.isfinite(theta).all()) or r > limit
    if diverged:
        warnings.append(f"the unlearning mode ran {r:.3g} Mahalanobis units from θ* (limit {limit:.3g}): the "
                        "objective log q(θ|D) - log p(D_f|θ) is unbounded for this model; the old mode is "
                        "returned with the down-dated precision. Try laplace-downdate, eubo-adjusted or rkl")
        theta = old.loc.to(torch.float64)
    g, H = forget_curvature(old, fs, theta, kind, curv)
    prec_u, facts = downdate(prec, H, kind, repair, floor, what="re-fitted")
    fields, structure = precision_fields(prec_u, kind, old.loc.dtype)
    if kind == "diag":
        theta = theta.to(old.loc.dtype)
    facts["mahalanobis_shift"] = r
    post = Posterior(loc=theta, structure=structure, family=old.family, layout=old.layout,
                     meta={"fit": old.meta.get("fit"), "curvature": {**(old.meta.get("curvature") or {}), **facts}},
                     **fields)
    return {"posterior": post, "warnings": warnings, "diverged": diverged, "diagnostics": facts,
            "steps": rep["steps"], "final_objective": float(-objective(theta))}
