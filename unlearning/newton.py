"""Newton-family point-estimate unlearning (DESIGN.md §4.3): damped, pseudo-inverse and cubic Newton.

The loss on the retained data is the negative log joint on D_r,

    L_r(θ) = −log p̃(θ) − Σ_{i∈D_r} ℓ_i(θ),

and every method takes one step θ_new = θ* + Δ from the old posterior mean θ* using the exact
gradient g = ∇L_r(θ*) and the exact Hessian H = ∇²L_r(θ*) (``torch.func``, float64; dense, or
as Hessian-vector products, see below).
Since θ* (approximately) minimises L = L_r + L_f, g ≈ −∇L_f(θ*), but g is computed directly on D_r,
which is exact also when θ* is not a converged mode.

- ``newton-damped``: Δ = −(H + λI)⁻¹ g, λ = ``damping`` (default 1e-3, absolute, in the units of
  H -- nats per squared unit of θ: negligible against the data curvature of a well-determined
  direction, so it is the "naive fix" of Bui et al. that only regularises exactly singular
  directions; ``damping=0`` is the plain Newton step, exact for a quadratic L_r such as conjugate
  linear regression).
- ``newton-pinv``: Δ = −H⁺ g, dropping eigenvalues with |λ_i| ≤ ``rcond`` · max|λ| (default 1e-6).
- ``cubic-newton``: the cubic-regularised step of Nesterov & Polyak (2006), see :mod:`.cubic`,
  with M from ``M=`` or the finite-difference estimate, adapted (doubled) until the step decreases
  L_r at least as the cubic model predicts (``adapt=True``).

Curvature: ``solver="auto"`` (default) uses the dense exact Hessian up to ``max_dim`` = 5000
coordinates and Hessian-vector products beyond; ``"dense"``/``"hvp"`` force one. On the HVP path
``newton-damped`` solves (H + λI)Δ = −g by conjugate gradients (stopping, with a warning, at the
first direction of non-positive curvature, where the dense solve would return a non-descent step)
and ``cubic-newton`` uses :func:`.cubic.cubic_step_hvp` (a Lanczos bound on λ_min, then CG inside a
safeguarded 1-D search on α that discards any solve meeting negative curvature, raises α past it,
and certifies the final H + αI with a random probe; the hard case is not resolved).
``lanczos_steps`` (default 60) may be far below d: the Ritz value only starts the search.
``newton-pinv`` needs the eigendecomposition and is dense only. The HVP path is much slower on small
models (each HVP re-traces the Pyro model, ~60 ms on a 49-parameter net; every doubling of M re-runs
the α search; one run of cubic-newton on that net, on a shared machine: 24 s, 16 s with
``lanczos_steps=5``, against 0.4 s dense) and is meant for models whose dense Hessian does not fit.

Covariance. The methods update the mean only; the covariance follows the Laplace down-date of
``laplace-downdate`` where one exists: for a Gaussian old posterior Λ_r = Λ − H_f(θ*), with H_f the
forget-set curvature of the same kind as Λ was built with (exact or GGN), repaired by eigenvalue
clipping only if it is not positive definite. A clipped direction carries an arbitrary variance
(1/floor; one run on a 5-parameter linear model with a full-rank SVI posterior stopped at 300
steps and 40 % of the rows deleted: KL 1.2·10⁵ to exact retraining, 6.1 for doing nothing), so the
repair is reported in warnings and diagnostics, the warning names the remedy, and the verdict is
"failed" (``unlearn_sequential`` stops there). For an
empirical (draws) posterior the draws are shifted by Δ, i.e. the old covariance is kept.
``diagnostics['covariance']`` says which happened.
"""

from __future__ import annotations

import math

import torch

from ..inference.posterior import Posterior

from .base import ForgetSet, register
from ..inference.linalg import conjugate_gradient
from .cubic import cubic_model, cubic_step, cubic_step_hvp, estimate_hessian_lipschitz, lanczos_ritz
from .laplace import curvature_kind, forget_curvature

__all__ = ["retained_loss", "retained_curvature", "retained_hvp", "posterior_after_step", "damped_step", "pinv_step"]


def retained_loss(old: Posterior, fs: ForgetSet):
    """L_r as a function of θ (float64): −log p̃(θ) − Σ_{D_r} ℓ_i(θ)."""
    bound = old.bound_model()
    x, y = fs.x_retain.to(torch.float64), fs.y_retain.to(torch.float64)
    return lambda t: -bound.log_joint(t, x, y)  # noqa: E731


def retained_hvp(old: Posterior, fs: ForgetSet):
    """(L_r, θ*, g, v ↦ Hv) at the old posterior mean: the matrix-free path (forward-over-reverse AD)."""
    theta = old.loc.detach().to(torch.float64)
    f = retained_loss(old, fs)
    grad = torch.func.grad(f)
    g = grad(theta)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(grad, (theta,), (v,))[1]
    return f, theta, g, hvp


def _solver(solver: str, d: int, max_dim: int) -> str:
    if solver not in ("auto", "dense", "hvp"):
        raise ValueError(f"solver must be 'auto', 'dense' or 'hvp', got {solver!r}")
    if solver == "auto":
        return "dense" if d <= max_dim else "hvp"
    return solver


def retained_curvature(old: Posterior, fs: ForgetSet, max_dim: int = 5000):
    """(L_r, θ*, g, H) at the old posterior mean θ*, float64, exact gradient and dense exact Hessian."""
    from ..inference.curvature import hessian
    theta = old.loc.detach().to(torch.float64)
    if len(theta) > max_dim:
        raise ValueError(f"the model has {len(theta)} coordinates, more than max_dim={max_dim}: only the dense "
                         "Hessian path of this method is implemented; newton-damped and cubic-newton accept "
                         "solver='hvp'")
    f = retained_loss(old, fs)
    g = torch.func.grad(f)(theta)
    H = hessian(f, theta)
    return f, theta, g, H


def damped_step(g: torch.Tensor, H: torch.Tensor, damping: float) -> tuple[torch.Tensor, dict]:
    """Δ = −(H + λI)⁻¹ g (by eigendecomposition, so a singular matrix gives inf, not an error)."""
    ev, V = torch.linalg.eigh(H)
    den = ev + damping
    step = -V @ ((V.T @ g) / den)
    return step, {"lambda_min": float(ev[0]), "lambda_max": float(ev[-1]),
                  "num_nonpositive_damped": int((den <= 0).sum()), "min_abs_damped_eigenvalue": float(den.abs().min())}


def pinv_step(g: torch.Tensor, H: torch.Tensor, rcond: float) -> tuple[torch.Tensor, dict]:
    """Δ = −H⁺ g with eigenvalues |λ_i| ≤ rcond · max|λ| treated as zero."""
    ev, V = torch.linalg.eigh(H)
    cut = rcond * float(ev.abs().max())
    keep = ev.abs() > cut
    gh = V.T @ g
    coef = torch.zeros_like(gh)
    coef[keep] = -gh[keep] / ev[keep]
    return V @ coef, {"lambda_min": float(ev[0]), "lambda_max": float(ev[-1]), "cutoff": cut,
                      "num_dropped": int((~keep).sum())}


def posterior_after_step(old: Posterior, fs: ForgetSet, step: torch.Tensor, facts: dict,
                         warnings: list[str]) -> Posterior:
    """The new posterior: mean θ* + Δ, covariance by the Laplace down-date (Gaussian) or kept (draws)."""
    theta = old.loc.detach().to(torch.float64)
    loc = theta + step.to(torch.float64)
    meta = {"fit": old.meta.get("fit"), "curvature": dict(old.meta.get("curvature") or {})}
    if not old.cov.gaussian:
        facts["covariance"] = "kept (empirical posterior: draws shifted by the step)"
        shift = step if old.active is None else step[old.active]
        return Posterior(loc=loc.to(old.loc.dtype), cov=old.cov.shifted(shift), family=old.family,
                         layout=old.layout, meta=meta)
    curv = curvature_kind(old)
    _, H_f = forget_curvature(old, fs, theta, old.cov.curvature_form, curv)
    cov, cf = old.cov.downdate(H_f, repair="clip")
    loc = loc.to(cov.dtype)
    if cf.get("repair"):
        facts["covariance"] = f"laplace-downdate ({curv}), repaired by eigenvalue clipping"
        floor = cf["repair"]["floor"]
        warnings.append(
            f"the down-dated precision Λ − H_f was not positive definite (smallest eigenvalue "
            f"{cf['min_eigenvalue']:.4g}, {cf['num_nonpositive']} of {cov.size} ≤ 0: the forget set's curvature "
            f"exceeds the old posterior's precision there) and was repaired by clipping to {floor:.3g}; those "
            f"directions carry an arbitrary variance (up to 1/{floor:.3g}), so the covariance is unusable and the "
            "verdict is 'failed'. Use method='auto', a re-fit on D_r ('elbo-refit' for an SVI posterior, "
            "'lm-refit' for a Laplace one) or 'retrain'")
    else:
        facts["covariance"] = f"laplace-downdate ({curv})"
    facts["precision"] = cf
    meta["curvature"].update({"downdate": cf})
    return Posterior(loc=loc, cov=cov, family=old.family, layout=old.layout, meta=meta)


def point_update_result(old: Posterior, fs: ForgetSet, f, theta: torch.Tensor, g: torch.Tensor, step: torch.Tensor,
                        facts: dict, warnings: list[str]) -> dict:
    """The method output for a point update θ* + Δ (shared by the Newton family and L-CODEC)."""
    diverged = not bool(torch.isfinite(step).all())
    if diverged:
        warnings.append("the Newton step is not finite (singular curvature): the old mean is kept; use a "
                        "positive damping, newton-pinv or cubic-newton")
        step = torch.zeros_like(theta)
    loss0 = float(f(theta))
    loss1 = float(f(theta + step))
    facts.update({"grad_norm": float(g.norm()), "step_norm": float(step.norm()), "loss_before": loss0,
                  "loss_after": loss1, "dim": len(theta)})
    if math.isfinite(loss1) and loss1 > loss0:
        warnings.append(f"the step increased the retained-data loss L_r from {loss0:.6g} to {loss1:.6g}")
    post = posterior_after_step(old, fs, step, facts, warnings)
    return {"posterior": post, "warnings": warnings, "diagnostics": facts, "diverged": diverged, "steps": 1,
            "final_objective": loss1}


@register("newton-damped", "one damped Newton step on the retained-data loss, Δ = −(H + λI)⁻¹g (exact Hessian); "
          "covariance by the Laplace down-date")
def newton_damped(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, damping: float = 1e-3,
                  solver: str = "auto", max_dim: int = 5000, cg_tol: float = 1e-10, max_cg: int = 1000) -> dict:
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    warnings: list[str] = []
    if _solver(solver, old.dim, max_dim) == "hvp":
        f, theta, g, hvp = retained_hvp(old, fs)
        step, facts = conjugate_gradient(lambda v: hvp(v) + damping * v, -g, tol=cg_tol, max_iter=max_cg)
        facts.update({"damping": float(damping), "solver": "hvp"})
        if facts["negative_curvature"]:
            warnings.append("CG met non-positive curvature of H + λI and stopped there: the damped Newton system "
                            "is indefinite")
        return point_update_result(old, fs, f, theta, g, step, facts, warnings)
    f, theta, g, H = retained_curvature(old, fs, max(max_dim, old.dim))
    step, facts = damped_step(g, H, float(damping))
    facts.update({"damping": float(damping), "solver": "dense"})
    if facts["num_nonpositive_damped"]:
        warnings.append(f"H + λI has {facts['num_nonpositive_damped']} non-positive eigenvalues (λ_min(H) = "
                        f"{facts['lambda_min']:.4g}): the damped Newton step is not a descent direction")
    return point_update_result(old, fs, f, theta, g, step, facts, warnings)


@register("newton-pinv", "one pseudo-inverse Newton step on the retained-data loss, Δ = −H⁺g (eigenvalue cut-off "
          "rcond); covariance by the Laplace down-date")
def newton_pinv(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, rcond: float = 1e-6,
                max_dim: int = 5000) -> dict:
    if not 0 <= rcond < 1:
        raise ValueError(f"rcond must lie in [0, 1), got {rcond!r}")
    f, theta, g, H = retained_curvature(old, fs, max_dim)
    step, facts = pinv_step(g, H, float(rcond))
    facts["solver"] = "dense"
    facts["rcond"] = float(rcond)
    warnings: list[str] = []
    if facts["lambda_min"] < -facts["cutoff"]:
        warnings.append(f"H is indefinite (λ_min = {facts['lambda_min']:.4g}): the pseudo-inverse step is not a "
                        "descent direction")
    return point_update_result(old, fs, f, theta, g, step, facts, warnings)


@register("cubic-newton", "one cubic-regularised Newton step (Nesterov-Polyak) on the retained-data loss, "
          "M estimated and adapted; covariance by the Laplace down-date")
def cubic_newton(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, M: float | None = None,
                 adapt: bool = True, max_doublings: int = 60, solver: str = "auto", max_dim: int = 5000,
                 lanczos_steps: int = 60, max_cg: int = 1000) -> dict:
    if M is not None and not M > 0:
        raise ValueError(f"M must be positive, got {M!r}")
    if not (isinstance(lanczos_steps, int) and lanczos_steps >= 1):
        raise ValueError(f"lanczos_steps must be a positive integer, got {lanczos_steps!r}")
    if not (isinstance(max_cg, int) and max_cg >= 1):
        raise ValueError(f"max_cg must be a positive integer, got {max_cg!r}")
    dense = _solver(solver, old.dim, max_dim) == "dense"
    if dense:
        f, theta, g, H = retained_curvature(old, fs, max(max_dim, old.dim))
        eig = torch.linalg.eigh(H)
        curv = H
        solve = lambda Mk: cubic_step(g, H, Mk, eig=eig)  # noqa: E731
    else:
        f, theta, g, curv = retained_hvp(old, fs)
        H = None
        extremes = lanczos_ritz(curv, len(theta), k=lanczos_steps, seed=seed)
        last_alpha = [0.0]

        def solve(Mk):
            # α grows with M: the α of the previous (smaller) M bounds the search from below, and
            # an upper bound on λ_min found by CG (a Rayleigh quotient) carries over
            st, fa = cubic_step_hvp(g, curv, Mk, seed=seed, extremes=extremes, alpha_min=last_alpha[0],
                                    max_cg=max_cg)
            last_alpha[0] = fa["alpha"]
            extremes["lambda_min_bound"] = fa["lambda_min"]
            return st, fa
    if M is None:
        hnorm = None if dense else max(abs(extremes["lambda_min"]), abs(extremes["lambda_max"]))
        M0 = estimate_hessian_lipschitz(f, theta, g, H, hnorm=hnorm)
        source = "finite-difference estimate"
    else:
        M0, source = float(M), "given"
    loss0 = float(f(theta))
    Mk, doublings = M0, 0
    while True:
        step, facts = solve(Mk)
        if not adapt:
            break
        loss1 = float(f(theta + step))
        # Nesterov-Polyak Lemma 1: L(θ+Δ) ≤ L(θ) + m(Δ) whenever M ≥ the Hessian's Lipschitz constant
        slack = 1e-10 * max(1.0, abs(loss0))
        if math.isfinite(loss1) and loss1 <= loss0 + cubic_model(g, curv, Mk, step) + slack:
            break
        if doublings >= max_doublings:
            break
        Mk, doublings = 2.0 * Mk, doublings + 1
    facts.update({"M": Mk, "M_initial": M0, "M_source": source, "M_doublings": doublings,
                  "solver": "dense" if dense else "hvp"})
    facts.pop("model_value", None)
    facts["model_value"] = cubic_model(g, curv, Mk, step)
    warnings: list[str] = []
    if not dense and not facts["certified"]:
        warnings.append(f"the matrix-free cubic step could not certify H + αI ⪰ 0 at α = {facts['alpha']:.4g} "
                        "(a random probe still met negative curvature: the hard case or close to it); pass "
                        "solver='dense' if the Hessian fits, or a larger lanczos_steps")
    if not dense and not facts["cg_converged"]:
        warnings.append(f"CG stopped at max_cg={max_cg} iterations before reaching its tolerance (relative residual "
                        f"{facts['cg_relative_residual']:.2g}): the cubic step is inexact; raise max_cg")
    return point_update_result(old, fs, f, theta, g, step, facts, warnings)
