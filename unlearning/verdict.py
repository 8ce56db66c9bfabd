"""A verdict on every unlearning result, computed without retraining (DESIGN.md §4.6).

The question is whether the new posterior q_u is the one retraining on D_r would give. Retraining
is not run; instead the result is checked against the optimality conditions of the retained problem.

Optimality on D_r. For the retained objective L_r(θ) = −log p̃(θ) − Σ_{i∈D_r} ℓ_i(θ):

    Gaussian posteriors, Laplace family:   r = ‖∇L_r(μ_u)‖ / ‖g_f‖,
    SVI / draws (the retained ELBO's gradient in the guide's mean, antithetic pairs μ ± δ):
                                           r = ‖E_{q_u}[∇L_r(θ)]‖ / ‖E_{q_old}[∇ log p(D_f|θ)]‖,

with g_f = ∇ log p(D_f | θ*) the forget set's gradient at the old mean, the size of the change asked
for.

Distance to the mode, Laplace family. r is relative: at N = 10k a region's ‖g_f‖ is in the hundreds, and
r = 0.01 left ‖∇L_r‖ = 2–6 where every fit is held to 1e-2. The Newton decrement in the result's own
covariance Σ_u measures how far its mean is from the retained mode next to it, in nats:

    ½ λ² = ½ ∇L_r(μ_u)ᵀ Σ_u ∇L_r(μ_u) = KL(N(μ_u, Σ_u) ‖ N(μ_u − Σ_u ∇L_r, Σ_u)),

the KL between the result and the same Gaussian moved by one Gauss–Newton step. A linearised predictive
is a linear image of it, so its KL at any input is at most ½ λ² (data processing). "ok" needs
½ λ² ≤ ``mode_kl_ok`` = 0.01 nats, below the retrain-to-retrain spread of the default BNN's predictive
(chosen from that argument, not tuned on a benchmark).

At the old posterior ∇L_r(θ*) = g_f (θ* is a mode of L_r + L_f), so "do nothing" has r ≈ 1 and
exact retraining r ≈ 0 (a converged fit; E_q[∇ log p̃(θ, D_r)] = ∇_m ELBO_{D_r} vanishes at a
converged guide). The gradient is exact on D_r for N_r ≤ ``exact_max`` points, else a minibatch
estimate with its standard error; at a single mean (Laplace family: ∇L_r at μ_u, g_f at θ*) it is
always exact, one pass (at N_r = 35k a minibatch's noise, read as gradient, called converged retrains
"failed"). For posteriors with draws the expectation is a Monte-Carlo mean
over ``num_draws`` antithetic draws (a control variate anchored at the old guide's gradient at the
same standard-normal draws was tried and raised the standard error on the region deletion). The ratio's
interval (numerator ± its standard error over denominator ∓ its own) decides: "failed" needs its
lower end above ``fail_ratio``, "ok" its upper end below ``ok_ratio``.

Rules (one place; the thresholds were calibrated on seeds 0–2 of the default region deletion and
checked on other seeds and scenarios, see the README):

    failed     diverged; a non-finite number; a covariance that was repaired (clipped/damped directions
               carry arbitrary variance) or is not positive definite; Pareto k̂ > 0.7 or ESS < 10;
               r > ``fail_ratio`` (0.5: at most half of the change asked for was made); nothing was
               forgotten ("none")
    uncertain  ``ok_ratio`` < r ≤ ``fail_ratio``; a Laplace-family mean more than ``mode_kl_ok`` nats
               (½ λ²) from its retained mode; 0.5 < k̂ ≤ 0.7; importance weights whose ESS is small
               for the moments they estimate, p/(2 ESS) > ``ess_kl_uncertain`` (0.006; ``ess_kl``;
               calibrated on conjugate BLR, benchmarks/conjugate_accuracy.py); an iterative method that stopped
               before meeting its own convergence rule (``diagnostics["converged"] is False``); a
               retrain that did not converge
    uncertain  (also) an update started from the old posterior of a model whose mean is not linear in θ, when
               the forget set held most of the old posterior's information along some direction (below)
    ok         everything else (r ≤ ``ok_ratio`` = 0.02)

An emptied region (:func:`forget_share`). Optimality on D_r says the result sits at *a* mode of L_r, not
at the one retraining reaches. For a net, L_r has many modes, and where D_f alone determined the old
posterior (a deleted region of input space) a result started from θ* keeps θ*'s basin there while cold
retrains land elsewhere. Measured on the default BNN at N = 10k (benchmarks/README.md, session 12):
``lm-refit`` on a region deletion ranked last of five among held-out retrains on 4 of 10 seeds and was
told apart from retraining by the pooled rank test (p = 0.016 on test); on a 1 % random deletion it was
not (p = 0.78). The check is the largest share of the old precision that D_f supplied along one direction,

    κ = max_v vᵀ G_f(θ*) v / vᵀ Λ v    (a generalised eigenvalue;  λ = κ / (1 − κ) = max_v vᵀ G_f v / vᵀ Λ_r v),

with G_f the forget set's GGN at θ* (from at most ``share_rows`` rows of D_f, scaled up: the estimate
of a largest eigenvalue is biased upward, toward a flag) and Λ the old precision (its diagonal for a
diagonal posterior, one ratio per coordinate; above ``share_max_dim`` coordinates a lower bound from power
iteration on Σ G_f, ``_share_by_power_iteration``). κ > ``share_uncertain`` = ½ (λ > 1): D_f supplied more
information along v than the prior and D_r together, so the retained posterior is at least twice as
wide there as the old one and the old mean's place along v came from D_f. The threshold is that argument,
not a fit to benchmarks; measured (default BNN, GGN, calibration seeds 0–1): region deletions κ ≥ 0.9996
(λ 2520–4419 at N = 10k, 797–876 at N = 300), 1 % random deletions κ ≤ 0.025 at N = 10k and ≤ 0.49 at
N = 300. A model whose mean is linear in θ (conjugate BLR) has one mode, and every update that is exact
there stays exact: it is exempt. The cold retrains (``retrain``, ``retrain-lm``) do not start from θ*
and are exempt too; ``retrain-warm`` is not. Skipped (with the reason in the numbers) for posteriors
without a Gaussian covariance.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..inference.covariance import Covariance
from ..inference.covariance.precision import Precision
from ..inference.latent import BoundModel
from ..inference.posterior import Posterior

__all__ = ["VERDICT_RULES", "compute_verdict", "forget_share", "retained_gradient", "ess_kl", "mode_kl"]

RETRAINS = ("retrain", "retrain-warm", "retrain-lm")  # the references: judged as fits, not as updates
COLD = ("none", "retrain", "retrain-lm")  # results that do not start from θ* (exempt from the emptied-region rule)
VERDICT_RULES = {"ok_ratio": 0.02, "fail_ratio": 0.5, "khat_uncertain": 0.5, "khat_fail": 0.7, "min_ess": 10.0,
                 "ess_kl_uncertain": 0.006, "exact_max": 20000, "batch_size": 4096, "num_draws": 64,
                 "mode_kl_ok": 0.01, "share_uncertain": 0.5, "share_rows": 1024, "share_max_dim": 6000,
                 "share_power_iters": 30}


def ess_kl(ess: float, dim: int, cov: Covariance | type[Covariance] | None = None) -> float:
    """p / (2 ESS): the expected KL between a Gaussian moment-matched to ESS independent draws and the
    Gaussian of the exact moments, p the number of moments matched by the structure of ``cov``
    (``Covariance.num_moments``: 2d for a diagonal one; d + d(d+1)/2 otherwise and for None). The
    Monte-Carlo floor of importance reweighting (rkl, psis); heavy-tailed weights (k̂ > 0.5) make the
    actual error larger."""
    p = (cov or Covariance).num_moments(dim)
    return p / (2.0 * max(ess, 1e-12))


def mode_kl(cov: Covariance, grad: torch.Tensor, active: torch.Tensor | None = None) -> float:
    """½ λ² = ½ ∇ᵀ Σ ∇: the Newton decrement of a Gaussian N(μ, Σ) whose objective has gradient ``grad``
    at μ, i.e. KL(N(μ, Σ) ‖ N(μ − Σ∇, Σ)), in nats (``active``: the coordinates Σ covers)."""
    g = grad.to(torch.float64) if active is None else grad.to(torch.float64)[active]
    return 0.5 * float(g @ cov.matvec(g.to(cov.dtype)).to(torch.float64))


def _find_repairs(obj: Any) -> list:
    """Every non-empty ``repair`` entry in a nested dict/list."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "repair" and v:
                out.append(v)
            else:
                out.extend(_find_repairs(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(_find_repairs(v))
    return out


def _grad_fn(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, scale: float, with_prior: bool):
    """θ ↦ ∇[log p̃(θ) + scale · Σ ℓ_i(θ)] (or without the prior), float64."""
    def f(t):
        ll = bound.log_likelihood(t, x, y).sum() * scale
        return ll + (bound.log_prior(t, x) if with_prior else 0.0)
    return torch.func.grad(f)


def retained_gradient(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, thetas: torch.Tensor,
                      weights: torch.Tensor | None = None, *, with_prior: bool = True, exact_max: int = 20000,
                      batch_size: int = 4096, seed: int = 0, antithetic: bool = False) -> tuple[torch.Tensor, float]:
    """(Ê[∇ log p̃(θ, D)] over the draws ``thetas`` [S, d] with ``weights``, its standard error in norm).

    Exact in the data for N ≤ ``exact_max`` (one pass), and always for a single unweighted draw (one pass
    is then the whole cost, and a minibatch would only add noise); beyond, a minibatch of ``batch_size``
    points scaled by N/B. The standard error combines the draw-to-draw spread and (for a minibatch) the
    point-to-point spread of the per-point gradient sum. ``antithetic``: the draws are pairs
    (first half μ + δ, second half μ − δ) and are averaged pairwise first."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    n = len(x64)
    scale, sub = 1.0, None
    if n > exact_max and (len(thetas) > 1 or weights is not None):
        g = torch.Generator().manual_seed(seed)
        sub = torch.randperm(n, generator=g)[:batch_size]
        scale = n / batch_size
        x64, y64 = x64[sub], y64[sub]
    gf = _grad_fn(bound, x64, y64, scale, with_prior)
    grads = torch.stack([gf(t.to(torch.float64)) for t in thetas])
    if weights is None and antithetic and len(grads) % 2 == 0 and len(grads) > 1:
        half = len(grads) // 2
        grads = 0.5 * (grads[:half] + grads[half:])   # pair means: independent, same expectation
    S = len(grads)
    w = torch.full((S,), 1.0 / S, dtype=torch.float64) if weights is None else weights.to(torch.float64)
    mean = (w[:, None] * grads).sum(0)
    se2 = 0.0
    if S > 1:
        ess = 1.0 / float((w**2).sum())
        var = (w[:, None] * (grads - mean) ** 2).sum(0)
        se2 += float(var.sum()) / ess
    if sub is not None:  # minibatch noise: per-point gradients at the mean draw
        t = thetas[0].to(torch.float64)
        per = torch.func.vmap(lambda xi, yi: torch.func.grad(
            lambda u: bound.log_likelihood(u, xi[None], yi[None]).sum())(t))(x64, y64)
        se2 += float(per.var(0).sum()) * n**2 / len(per)
    return mean, math.sqrt(se2)


def _draws(post: Posterior, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draws at which the mean gradient is estimated: the mean itself (Laplace family), resampled
    draws (empirical), or antithetic pairs μ ± δ (other Gaussians): the pair mean cancels the term of
    the gradient that is linear in δ, by far the noisiest for a net, at no cost in bias."""
    if not post.cov.gaussian:
        if len(post.samples) <= num:
            return post.samples, post.weights()
        return post.sample(num, seed=seed), None   # resampled by weight: num gradients, not one per draw
    if post.family == "laplace" or post.active is not None:
        return post.loc[None].to(torch.float64), None
    half = max(1, num // 2)
    delta = post.sample(half, seed=seed).to(torch.float64) - post.loc.to(torch.float64)
    loc = post.loc.to(torch.float64)
    return torch.cat([loc + delta, loc - delta]), None


def _mean_is_linear(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, seed: int) -> bool:
    """Whether the observation mean m(θ) is linear in θ on (a few of) the inputs ``x``: its directional
    derivative along a random v is the same at θ and at a random other point."""
    from ..inference.curvature import observation_params

    fn = observation_params(bound, x[:8])
    g = torch.Generator().manual_seed(seed + 4242)
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    far = theta + (1.0 + float(theta.abs().max())) * torch.randn(theta.shape, generator=g, dtype=torch.float64)
    d0 = torch.func.jvp(lambda t: fn(t)[0], (theta,), (v,))[1]
    d1 = torch.func.jvp(lambda t: fn(t)[0], (far,), (v,))[1]
    return bool(torch.allclose(d0, d1, rtol=1e-8, atol=1e-10 * (1.0 + float(d0.abs().max()))))


def forget_share(old: Posterior, x_forget: torch.Tensor, y_forget: torch.Tensor, *, rules: dict | None = None,
                 seed: int = 0, x_retain: torch.Tensor | None = None, y_retain: torch.Tensor | None = None) -> dict:
    """The largest share κ of the old posterior's precision that the forget set supplied along one direction
    (module docstring, "An emptied region"): ``{"forget_share": κ, "forget_share_lambda": κ/(1−κ),
    "forget_share_rows": rows of D_f used, "forget_share_method": "dense" | "diagonal" | "power" (a lower bound)}``,
    or ``{"forget_share_skipped": why}`` where it does not apply (no Gaussian covariance, no model, a mean linear
    in θ). For a posterior over a subset of the coordinates (last-layer) the update still moves every
    coordinate, so with the retained data given κ is measured over all of them, against the GGN precision
    P + G_f + G_r at θ* (from at most ``share_rows`` rows of each, scaled up), when d ≤ ``share_max_dim``."""
    from ..inference.curvature import whitened_jacobian
    from ..inference.laplace import curvature_term

    R = {**VERDICT_RULES, **(rules or {})}
    if not old.cov.gaussian or old.model is None or old.cov.curvature_form is None or len(x_forget) == 0:
        return {"forget_share_skipped": "no Gaussian covariance or no model"}
    theta = old.loc.detach().to(torch.float64)
    x, y, scale = _some_rows(x_forget, y_forget, int(R["share_rows"]), seed + 991)
    bound = BoundModel(old.model, x, y)
    if _mean_is_linear(bound, x, theta, seed):
        return {"forget_share_skipped": "the model's mean is linear in θ (one mode)"}
    form = "diag" if old.cov.curvature_form == "diag" else "dense"
    k = old.cov.size
    method = "dense"
    if old.active is not None and x_retain is not None and len(x_retain) and len(theta) <= R["share_max_dim"]:
        method = "dense, every coordinate"
        kappa = _share_over_every_coordinate(old, bound, x, y, theta, scale, x_retain, y_retain, R, seed)
    elif form == "dense" and k > R["share_max_dim"]:
        method = "power"
        kappa = _share_by_power_iteration(old, bound, x, y, theta, scale, R)
    elif form == "diag":
        G = scale * curvature_term(bound, x, y, theta, form="diag", curvature="ggn", index=old.active)
        kappa = float((G / old.cov.precision_form().to(torch.float64)).max())
    else:
        # G_f = AᵀA with A the whitened Jacobian of the rows; with Λ = L Lᵀ and B = L⁻¹ Aᵀ, κ is the largest
        # eigenvalue of BᵀB (rows × rows) or of B Bᵀ (k × k), whichever is smaller
        A = math.sqrt(scale) * whitened_jacobian(bound, x, theta, old.active)
        if isinstance(old.cov, Precision):
            L = old.cov.cholesky.to(torch.float64)  # factorised once per posterior
        else:
            P = old.cov.precision_form() if old.cov.curvature_form == "dense" else torch.linalg.inv(old.cov.dense())
            L = torch.linalg.cholesky(0.5 * (P + P.T).to(torch.float64))
        kappa = _top_share(L, A)
    kappa = min(kappa, 1.0)  # a subsample's estimate can pass 1 (the share itself cannot)
    lam = kappa / (1.0 - kappa) if kappa < 1.0 else math.inf
    return {"forget_share": kappa, "forget_share_lambda": lam, "forget_share_rows": len(x),
            "forget_share_method": "diagonal" if form == "diag" and method == "dense" else method}


def _some_rows(x: torch.Tensor, y: torch.Tensor, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(x, y) in float64, or a seeded subsample of ``cap`` rows, and the factor that scales its sums to all rows."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    if len(x) <= cap:
        return x, y, 1.0
    sub = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:cap]
    return x[sub], y[sub], len(x) / cap


def _top_share(L: torch.Tensor, A: torch.Tensor) -> float:
    """The largest generalised eigenvalue of (AᵀA, L Lᵀ): that of BᵀB (rows × rows) or B Bᵀ (k × k), whichever is
    smaller, with B = L⁻¹ Aᵀ."""
    B = torch.linalg.solve_triangular(L, A.T, upper=False)
    return float(torch.linalg.eigvalsh(B.T @ B if B.shape[1] <= B.shape[0] else B @ B.T)[-1])


def _share_over_every_coordinate(old: Posterior, bound: BoundModel, x: torch.Tensor, y: torch.Tensor,
                                 theta: torch.Tensor, scale: float, x_retain: torch.Tensor, y_retain: torch.Tensor,
                                 R: dict, seed: int) -> float:
    """κ over all d coordinates against Λ = P + G_f + G_r at θ* (an active-subset posterior holds no precision for
    the rest): the largest eigenvalue of Bᵀ B with B = L⁻¹ A_fᵀ, Λ = L Lᵀ."""
    from ..inference.curvature import whitened_jacobian
    from ..inference.gauss_newton import NegLogJoint

    xr, yr, scale_r = _some_rows(x_retain, y_retain, int(R["share_rows"]), seed + 992)
    A_f = math.sqrt(scale) * whitened_jacobian(bound, x, theta)
    A_r = math.sqrt(scale_r) * whitened_jacobian(BoundModel(old.model, xr, yr), xr, theta)
    P = torch.diag(NegLogJoint(bound, x, y).prior_diag(theta)) + A_f.T @ A_f + A_r.T @ A_r
    return _top_share(torch.linalg.cholesky(0.5 * (P + P.T)), A_f)


def _share_by_power_iteration(old: Posterior, bound: BoundModel, x: torch.Tensor, y: torch.Tensor,
                              theta: torch.Tensor, scale: float, R: dict) -> float:
    """κ from below, without a k × k matrix: power iteration on Σ G_f (its eigenvalues are the generalised ones
    of (G_f, Λ)) from v₀ = Σ g_f, the forget gradient's Newton direction; each iterate's Rayleigh quotient
    vᵀ G_f v / vᵀ Λ v is a lower bound of κ, so the largest one is returned (a flag from it is certain; below
    ½ it can miss a κ above). ``share_power_iters`` products with G_f (forward + reverse mode over the rows)
    and Σ; stops early once the bound passes ``share_uncertain``."""
    from ..inference.gauss_newton import NegLogJoint

    gvp_full = NegLogJoint(bound, x, y).ggn_vp(theta)
    act = old.active

    def gvp(v: torch.Tensor) -> torch.Tensor:
        if act is None:
            return scale * gvp_full(v)
        full = torch.zeros_like(theta)
        full[act] = v
        return scale * gvp_full(full)[act]

    g = torch.func.grad(lambda t: bound.log_likelihood(t, x, y).sum())(theta)
    v = old.cov.matvec((g if act is None else g[act]).to(old.cov.dtype)).to(torch.float64)
    best = 0.0
    for _ in range(int(R["share_power_iters"])):
        if not float(v.norm()) > 0:
            break
        v = v / v.norm()
        Gv = gvp(v)
        best = max(best, float(v @ Gv) / float(v @ old.cov.precision_matvec(v.to(old.cov.dtype)).to(torch.float64)))
        if best > R["share_uncertain"]:
            break
        v = old.cov.matvec(Gv.to(old.cov.dtype)).to(torch.float64)
    return best


def share_reason(share: dict, rules: dict | None = None) -> str:
    """The verdict's one line for an emptied region (κ above ``share_uncertain``)."""
    R = {**VERDICT_RULES, **(rules or {})}
    return (f"the forget set supplied {share['forget_share']:.1%} of the old precision along some direction "
            f"(> {R['share_uncertain']:.0%}, λ = {share['forget_share_lambda']:.3g}: a region D_r leaves empty); a "
            "result started from the old posterior keeps its basin there, which cold retrains were measured not "
            "to share (README, 'Emptied regions'): use method='retrain'")


def compute_verdict(method: str, old: Posterior, new: Posterior, x_forget: torch.Tensor, y_forget: torch.Tensor,
                    out: dict, *, rules: dict | None = None, seed: int = 0, share: dict | None = None) -> dict:
    """{"verdict": "ok"|"uncertain"|"failed", "reasons": [...], "numbers": {...}} for one result. ``share``:
    :func:`forget_share` of this request when already computed (``auto`` computes it once for its rungs)."""
    R = {**VERDICT_RULES, **(rules or {})}
    reasons_fail, reasons_unc, numbers = [], [], {}
    diag = out.get("diagnostics") or {}
    if method == "none":
        reasons_fail.append("nothing was forgotten (method 'none')")
    if out.get("diverged"):
        reasons_fail.append("the method diverged")
    repairs = _find_repairs(diag) + _find_repairs(dict(new.meta).get("curvature") or {})
    if method in RETRAINS:
        repairs = [r for r in repairs if r not in _find_repairs(dict(old.meta).get("curvature") or {})]
    if repairs:
        reasons_fail.append(f"the covariance was repaired ({repairs[0]}): the repaired directions carry arbitrary "
                            "variance")
    for key in ("min_eigenvalue", "precision_min_eigenvalue"):
        v = diag.get(key)
        if v is not None and not repairs and v <= 0:
            reasons_fail.append(f"the precision is not positive definite (smallest eigenvalue {v:.3g})")
    khat, ess = diag.get("pareto_k"), diag.get("ess")
    if khat is not None:
        numbers["pareto_k"] = khat
        if not math.isfinite(khat) or khat > R["khat_fail"]:
            reasons_fail.append(f"Pareto k̂ = {khat:.2f} > {R['khat_fail']}: importance sampling is unreliable")
        elif khat > R["khat_uncertain"]:
            reasons_unc.append(f"Pareto k̂ = {khat:.2f} > {R['khat_uncertain']}")
    if ess is not None:
        numbers["ess"] = ess
        if ess < R["min_ess"]:
            reasons_fail.append(f"the importance weights degenerated (ESS {ess:.1f} < {R['min_ess']:g})")
        else:
            dim = new.cov.size
            mc = ess_kl(ess, dim, new.cov)
            numbers["ess_kl"] = mc
            if mc > R["ess_kl_uncertain"]:
                reasons_unc.append(f"ESS {ess:.0f} is too small for the {dim}-dim. moments: Monte-Carlo KL ≈ p/(2 ESS) = "
                                   f"{mc:.3g} > {R['ess_kl_uncertain']}")
    # optimality of the new mean on D_r, relative to the change asked for
    ratio = None
    if method != "none" and torch.isfinite(new.loc).all() and old.model is not None:
        try:
            bound_r = BoundModel(old.model, new.x if new.x is not None else x_forget, new.y if new.y is not None
                                 else y_forget)
            bound_f = BoundModel(old.model, x_forget, y_forget)
            th_new, w_new = _draws(new, R["num_draws"], seed)
            th_old, w_old = _draws(old, R["num_draws"], seed)
            anti_new = new.cov.gaussian and len(th_new) > 1
            anti_old = old.cov.gaussian and len(th_old) > 1
            g_r, se_r = retained_gradient(bound_r, new.x, new.y, th_new, w_new, exact_max=R["exact_max"],
                                          batch_size=R["batch_size"], seed=seed, antithetic=anti_new)
            g_f, se_f = retained_gradient(bound_f, x_forget, y_forget, th_old, w_old, with_prior=False,
                                          exact_max=R["exact_max"], batch_size=R["batch_size"], seed=seed,
                                          antithetic=anti_old)
            num, den = float(g_r.norm()), float(g_f.norm())
            numbers.update(retained_grad_norm=num, retained_grad_se=se_r, forget_grad_norm=den, forget_grad_se=se_f)
            if not math.isfinite(num):
                reasons_fail.append("the retained gradient at the new mean is not finite")
            elif den <= max(se_f, 1e-12):
                reasons_unc.append("the forget set's gradient is indistinguishable from 0: the change asked for "
                                   "is below the noise")
            else:
                ratio = num / den
                hi = (num + se_r) / max(den - se_f, 1e-12)
                lo = max(num - se_r, 0.0) / (den + se_f)
                numbers.update(grad_ratio=ratio, grad_ratio_low=lo, grad_ratio_high=hi)
                if lo > R["fail_ratio"]:
                    reasons_fail.append(f"‖∇L_r‖ at the new mean is {ratio:.3g} of the forget set's gradient "
                                        f"(> {R['fail_ratio']}): the retained optimum was not reached")
                elif hi > R["ok_ratio"]:
                    what = f"{ratio:.3g}" if hi == lo else f"{ratio:.3g} (interval {lo:.3g}–{hi:.3g})"
                    reasons_unc.append(f"‖∇L_r‖ at the new mean is {what} of the forget set's gradient "
                                       f"(> {R['ok_ratio']})")
            if len(th_new) == 1 and w_new is None and math.isfinite(num) and new.cov.gaussian:
                half_lam2 = mode_kl(new.cov, g_r, new.active)
                numbers["mode_kl"] = half_lam2
                if not half_lam2 <= R["mode_kl_ok"]:
                    reasons_unc.append(f"the new mean is ½λ² = {half_lam2:.3g} nats from the retained mode next to it "
                                       f"(Newton decrement in its own covariance, > {R['mode_kl_ok']}): the Laplace "
                                       "approximation is built off the mode; converge further (lower gtol/rtol) or "
                                       "retrain")
        except (NotImplementedError, RuntimeError, ValueError) as e:
            reasons_unc.append(f"the retained gradient could not be computed ({type(e).__name__}: {e})")
    if method not in COLD:
        share = share if share is not None else forget_share(old, x_forget, y_forget, rules=R, seed=seed,
                                                             x_retain=new.x, y_retain=new.y)
        numbers.update(share)
        if share.get("forget_share", 0.0) > R["share_uncertain"]:
            reasons_unc.append(share_reason(share, R))
    if diag.get("converged") is False:
        reasons_unc.append(f"the method stopped before meeting its own convergence rule ({diag.get('stop', 'max_iters')})")
    gains = diag.get("last_gain_ratio")
    if gains is not None:
        numbers["last_gain_ratio"] = gains
    meta_w = list(dict(new.meta).get("warnings", []) or [])
    if method in RETRAINS and any("not a mode" in w or "convergence rule" in w for w in meta_w):
        reasons_unc.append("the retrain itself did not converge (see its warnings)")
    if reasons_fail:
        v = "failed"
    elif reasons_unc:
        v = "uncertain"
    else:
        v = "ok"
    return {"verdict": v, "reasons": reasons_fail + reasons_unc, "numbers": numbers}
