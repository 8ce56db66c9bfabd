"""The cubic-regularised Newton step (Nesterov & Polyak, 2006) and an estimate of its constant M.

    Δ = argmin_Δ  m(Δ) = gᵀΔ + ½ ΔᵀHΔ + (M/6) ‖Δ‖³.

Its global minimiser is characterised by (Nesterov & Polyak 2006, Prop. 1; Conn, Gould & Toint's
trust-region theory)

    (H + αI) Δ = −g,    α = (M/2) ‖Δ‖,    H + αI ⪰ 0.

With H = V diag(λ) Vᵀ and ĝ = Vᵀg, ‖Δ(α)‖² = Σ ĝ_i² / (λ_i + α)² is decreasing on α > −λ_min while
2α/M increases, so the "secular equation" ‖Δ(α)‖ = 2α/M has exactly one root on
α > max(0, −λ_min) -- unless the components of g in the eigenspace of λ_min vanish and
‖Δ(α)‖ stays below 2α/M all the way down to α = −λ_min (the *hard case*). Then α = −λ_min,
Δ = Δ_⊥ + τ v_min with Δ_⊥ = −(H + αI)⁺ g and τ = √((2α/M)² − ‖Δ_⊥‖²) (either sign minimises m;
we take τ ≥ 0).

Two solvers. Dense (:func:`cubic_step`): one ``eigh`` of H, O(d³), exact including the hard case.
Matrix-free (:func:`cubic_step_hvp`): Hessian-vector products only. The smallest Lanczos Ritz value
λ̂ is an *upper* bound on λ_min (Cauchy interlacing), so α ≥ max(0, −λ̂) bounds the root from below
but H + αI may still be indefinite there. Each ‖Δ(α)‖ comes from conjugate gradients on
(H + αI)Δ = −g; the root is bracketed and found by regula falsi on 1/‖Δ(α)‖ − M/(2α). CG is the guard: a search
direction with pᵀ(H + αI)p ≤ 0 proves α < −λ_min, the solve is discarded and the lower end of the
bracket rises to −pᵀHp/pᵀp ≥ α (a Rayleigh quotient bounds λ_min from above); the step is always a
CG solution that met no negative curvature. Since −g reaches only the eigen-directions g has
components in, the final α is certified by one more CG solve with a random right-hand side (negative
curvature there restarts the search above it). The hard case is not resolved on this path (α stays
just above −λ_min, no v_min component).

M (the Lipschitz constant of the Hessian) is estimated by :func:`estimate_hessian_lipschitz`:
finite differences of Hessian-vector products along the unit gradient direction u = g/‖g‖,

    M̂ = max_h ‖∇²L(θ + h u) u − ∇²L(θ) u‖ / h   over h ∈ {10⁻², 10⁻¹, 1} · max(1, ‖θ‖/√d),

a secant estimate of the third derivative along the direction the step starts in, floored at
10⁻¹⁰ · max(1, ‖H‖₂) so that M̂ > 0. It is not an upper bound, so the method (``adapt=True``)
follows the adaptive rule of Cartis, Gould & Toint (2011): M is doubled until the actual decrease
satisfies L(θ + Δ) ≤ L(θ) + m(Δ), which holds whenever M ≥ the true Lipschitz constant on the
segment (Nesterov & Polyak 2006, Lemma 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..inference.linalg import conjugate_gradient

__all__ = ["cubic_step", "cubic_step_hvp", "cubic_model", "estimate_hessian_lipschitz", "lanczos_extreme",
           "lanczos_ritz"]


def cubic_model(g: torch.Tensor, H, M: float, step: torch.Tensor) -> float:
    """m(Δ) = gᵀΔ + ½ΔᵀHΔ + (M/6)‖Δ‖³ (H a matrix or a Hessian-vector-product function)."""
    Hs = H(step) if callable(H) else H @ step
    return float(g @ step + 0.5 * step @ Hs + M / 6.0 * step.norm() ** 3)


def cubic_step(g: torch.Tensor, H: torch.Tensor, M: float, *, eig: tuple[torch.Tensor, torch.Tensor] | None = None,
               hard_tol: float = 1e-10) -> tuple[torch.Tensor, dict]:
    """Global minimiser of gᵀΔ + ½ΔᵀHΔ + (M/6)‖Δ‖³ by eigendecomposition; returns (Δ, facts).

    ``facts``: alpha, lambda_min, hard_case, step_norm, model_value. ``eig`` may pass a precomputed
    ``torch.linalg.eigh(H)``. ``hard_tol``: components of ĝ in the λ_min eigenspace below
    hard_tol · ‖g‖ count as zero (the hard case).
    """
    if not M > 0:
        raise ValueError(f"the cubic constant M must be positive, got {M!r}")
    g = g.to(torch.float64)
    H = 0.5 * (H + H.T).to(torch.float64)
    ev, V = eig if eig is not None else torch.linalg.eigh(H)
    gh = V.T @ g
    gnorm = float(g.norm())
    lam_min = float(ev[0])
    scale = max(1.0, float(ev.abs().max()))
    if gnorm == 0.0 and lam_min >= 0:
        z = torch.zeros_like(g)
        return z, {"alpha": 0.0, "lambda_min": lam_min, "hard_case": False, "step_norm": 0.0, "model_value": 0.0}
    in_min = (ev - lam_min) <= 1e-12 * scale          # the eigenspace of λ_min (numerically)
    g_min = float(gh[in_min].norm())
    alpha_low = max(0.0, -lam_min)

    def norm_at(a: float, mask: torch.Tensor | None = None) -> float:
        den = ev + a
        num = gh if mask is None else gh * mask
        with torch.no_grad():
            r = torch.where(num == 0, torch.zeros_like(num), num / den)
        return float(r.norm())

    hard = False
    if lam_min < 0 and g_min <= hard_tol * max(gnorm, 1e-300):
        # candidate hard case: ‖Δ_⊥(−λ_min)‖ ≤ 2α/M ?
        d_perp = norm_at(alpha_low, (~in_min).to(g.dtype))
        hard = d_perp <= 2.0 * alpha_low / M
    if hard:
        alpha = alpha_low
        keep = ~in_min
        coef = torch.zeros_like(gh)
        coef[keep] = -gh[keep] / (ev[keep] + alpha)
        r2 = (2.0 * alpha / M) ** 2 - float(coef.norm()) ** 2
        tau = math.sqrt(max(r2, 0.0))
        idx = int(torch.nonzero(in_min).flatten()[0])
        coef[idx] = coef[idx] + tau
        step = V @ coef
    else:
        # φ(α) = ‖Δ(α)‖ − 2α/M: +∞ (or > 0) just above alpha_low, decreasing; bracket and bisect
        lo = alpha_low
        # at α = alpha_low + √(M‖g‖/2): ‖Δ‖ ≤ ‖g‖/(α + λ_min) ≤ 2α/M, so φ ≤ 0 (doubling is a safeguard)
        hi = alpha_low + math.sqrt(M * gnorm / 2.0) + 1e-300
        while norm_at(hi) - 2.0 * hi / M > 0:
            lo, hi = hi, 2.0 * hi + 1e-300
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            if norm_at(mid) - 2.0 * mid / M > 0:
                lo = mid
            else:
                hi = mid
        alpha = hi if hi > alpha_low else 0.5 * (lo + hi)
        step = -V @ (gh / (ev + alpha))
    facts = {"alpha": float(alpha), "lambda_min": lam_min, "hard_case": bool(hard), "step_norm": float(step.norm()),
             "model_value": cubic_model(g, H, M, step)}
    return step, facts


def estimate_hessian_lipschitz(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, g: torch.Tensor,
                               H: torch.Tensor | None = None, hnorm: float | None = None) -> float:
    """M̂: finite differences of Hessian-vector products of f along g/‖g‖ (see the module docstring).

    ``H``: the dense Hessian at θ, or None (then one more Hessian-vector product is taken and
    ``hnorm`` -- an estimate of ‖H‖₂ for the floor -- should be given)."""
    theta = theta.detach().to(torch.float64)
    d = len(theta)
    if hnorm is None:
        hnorm = float(torch.linalg.matrix_norm(H, 2)) if H is not None else 1.0
    hnorm = max(1.0, hnorm)
    floor = 1e-10 * hnorm
    gnorm = float(g.norm())
    if gnorm == 0.0:
        return floor
    u = (g / gnorm).to(torch.float64)
    grad = torch.func.grad(f)

    def hvp(t: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(grad, (t,), (u,))[1]

    base = H @ u if H is not None else hvp(theta)
    unit = max(1.0, float(theta.norm()) / math.sqrt(d))
    est = 0.0
    for h in (1e-2, 1e-1, 1.0):
        hv = hvp(theta + h * unit * u)
        if torch.isfinite(hv).all():
            est = max(est, float((hv - base).norm()) / (h * unit))
    return max(est, floor)


# --------------------------------------------------------------------------------------------------
# matrix-free path: Hessian-vector products only (CG: inference.linalg.conjugate_gradient; Lanczos)
# --------------------------------------------------------------------------------------------------
def lanczos_ritz(matvec: Callable[[torch.Tensor], torch.Tensor], d: int, *, k: int = 60, seed: int = 0) -> dict:
    """k Lanczos steps (full re-orthogonalisation) from a seeded random start: the extreme Ritz values
    and their residuals.

    With Lanczos basis Q_k, tridiagonal T_k = Q_kᵀ H Q_k and the next coefficient β_k, a Ritz pair
    (θ, Q_k y) of T_k y = θ y has residual ‖H Q_k y − θ Q_k y‖ = β_k |e_kᵀ y| (``residual_min`` /
    ``residual_max``). The smallest Ritz value is an *upper* bound on λ_min(H) (Cauchy interlacing),
    and the residual only says that *some* eigenvalue lies within it of θ -- not that λ_min does.
    Returns {lambda_min, lambda_max, residual_min, residual_max, steps}."""
    gen = torch.Generator().manual_seed(seed)
    k = max(1, min(int(k), d))
    Q = torch.zeros(d, k, dtype=torch.float64)
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    alphas, betas = [], []
    beta_last = 0.0
    for j in range(k):
        Q[:, j] = q
        w = matvec(q)
        a = float(q @ w)
        w = w - Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        w = w - Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        alphas.append(a)
        b = float(w.norm())
        if j == k - 1 or b < 1e-12 * max(1.0, abs(a)):
            beta_last = b if j == k - 1 and b >= 1e-12 * max(1.0, abs(a)) else 0.0
            break
        betas.append(b)
        q = w / b
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    ev, Y = torch.linalg.eigh(T)
    return {"lambda_min": float(ev[0]), "lambda_max": float(ev[-1]), "residual_min": beta_last * float(Y[-1, 0].abs()),
            "residual_max": beta_last * float(Y[-1, -1].abs()), "steps": len(alphas)}


def lanczos_extreme(matvec: Callable[[torch.Tensor], torch.Tensor], d: int, *, k: int = 60,
                    seed: int = 0) -> tuple[float, float]:
    """(λ_min, λ_max) estimates: the extreme Ritz values of :func:`lanczos_ritz` (an upper bound on
    λ_min and a lower bound on λ_max)."""
    lz = lanczos_ritz(matvec, d, k=k, seed=seed)
    return lz["lambda_min"], lz["lambda_max"]


def cubic_step_hvp(g: torch.Tensor, hvp: Callable[[torch.Tensor], torch.Tensor], M: float, *,
                   lanczos_steps: int = 60, cg_tol: float = 1e-10, max_cg: int = 1000, max_search: int = 200,
                   rtol: float = 1e-8, seed: int = 0, extremes: dict | tuple[float, float] | None = None,
                   alpha_min: float = 0.0, max_certify: int = 30) -> tuple[torch.Tensor, dict]:
    """The cubic step from Hessian-vector products: Δ(α) = −(H + αI)⁻¹g by CG, with α the root of the
    secular equation ‖Δ(α)‖ = 2α/M on the part of the axis where H + αI ≻ 0.

    Search. The smallest Lanczos Ritz value λ̂ ≥ λ_min(H) gives the lower end α ≥ max(0, −λ̂,
    ``alpha_min``) (the root lies above −λ_min ≥ −λ̂; α grows with M, so the α of a smaller M is a
    lower bound too), but H + αI may still be indefinite there. CG is the guard: when it meets a
    direction with pᵀ(H + αI)p ≤ 0, α < −λ_min is proven, no step is taken from that solve, and the
    lower end rises to max(α, −pᵀHp/pᵀp) (a Rayleigh quotient bounds λ_min from above). The upper
    end starts at lo + √(M‖g‖/2) and doubles until CG solves there without negative curvature and
    ‖Δ‖ ≤ 2α/M. The bracket then shrinks by regula falsi (Illinois variant) on ψ(α) = 1/‖Δ(α)‖ −
    M/(2α), increasing in α and zero at the root (bisection where ψ(lo) is unknown), until it is
    ``rtol`` wide or ‖Δ(hi)‖ meets 2·hi/M to ``rtol``; the step is the last CG solution on the upper
    side. A solve whose right-hand side is −g sees only the eigen-directions g touches, so the final
    α is *certified* by one more CG solve of (H + αI)x = z with a random z (all directions, with
    probability 1): negative curvature there raises the lower end (a Lanczos run of twice the steps
    sharpens λ̂, plus a margin 10⁻⁸·max|λ̂| growing ×4 per round) and the search restarts, at most
    ``max_certify`` times (``certified`` is False when that did not suffice). The hard case (g ⟂ the
    λ_min eigenspace) is not resolved: α stays just above −λ_min and Δ has no component along v_min
    (the model still decreases).

    ``extremes``: a :func:`lanczos_ritz` dict (optionally with ``lambda_min_bound``, a known upper
    bound on λ_min such as an earlier call's ``lambda_min``) or (λ_min, λ_max); ``alpha_min``: a
    known lower bound on α; ``rtol``: relative width of the final bracket on α; ``max_cg``: CG
    iterations per solve. ``facts``: alpha, lambda_min (the best upper bound on λ_min found: Ritz or
    Rayleigh quotients), lambda_min_ritz, lanczos_residual, negative_curvature_solves, certified,
    cg_iterations (all solves), cg_converged and cg_relative_residual (the accepted solve), step_norm,
    hard_case (False)."""
    if not M > 0:
        raise ValueError(f"the cubic constant M must be positive, got {M!r}")
    d = len(g)
    g = g.to(torch.float64)
    if extremes is None:
        extremes = lanczos_ritz(hvp, d, k=lanczos_steps, seed=seed)
    if not isinstance(extremes, dict):
        extremes = {"lambda_min": float(extremes[0]), "lambda_max": float(extremes[1]), "residual_min": None}
    lam_ritz, lam_max = extremes["lambda_min"], extremes["lambda_max"]
    scale = max(1.0, abs(lam_max), abs(lam_ritz))
    lam_up = min(lam_ritz, extremes.get("lambda_min_bound", lam_ritz))   # the best upper bound on λ_min(H)
    gnorm = float(g.norm())
    width = math.sqrt(M * gnorm / 2.0) + 1e-12 * scale
    counts = {"cg": 0, "neg": 0}
    gen = torch.Generator().manual_seed(seed + 1)

    def solve(a: float, b: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x, info = conjugate_gradient(lambda v: hvp(v) + a * v, b, tol=cg_tol, max_iter=max_cg)
        counts["cg"] += info["cg_iterations"]
        return x, info

    def too_small(a: float, info: dict) -> float:
        """α = a met negative curvature: the new lower end (−R(p) ≥ a, strictly above a)."""
        nonlocal lam_up
        counts["neg"] += 1
        lam_up = min(lam_up, info["curvature_rayleigh"] - a)
        return max(a, -lam_up) * (1.0 + 1e-12) + 1e-12 * scale

    def psi(a: float, x: torch.Tensor) -> float:
        """ψ(α) = 1/‖Δ(α)‖ − M/(2α): increasing in α, ≥ 0 exactly on the upper side of the root."""
        return 1.0 / max(float(x.norm()), 1e-300) - M / (2.0 * a) if a > 0 else -math.inf

    def search(lo: float) -> tuple[float, float, torch.Tensor, dict]:
        """(lo, hi, Δ(hi), CG facts at hi): bracket above lo, then shrink the bracket; every returned Δ
        is from a CG solve without negative curvature."""
        hi = lo + width
        f_lo = None                              # ψ(lo) where known (lo was solved without negative curvature)
        for _ in range(max_search):             # bracket: ψ(hi) ≥ 0 with H + hi·I ≻ 0 (as far as CG sees)
            x, info = solve(hi, -g)
            if info["negative_curvature"]:
                lo, f_lo = too_small(hi, info), None
                hi = max(2.0 * hi, lo + width)
            elif psi(hi, x) < 0:
                lo, f_lo, hi = hi, psi(hi, x), 2.0 * hi
            else:
                step, step_info, f_hi = x, info, psi(hi, x)
                break
        else:
            raise RuntimeError(f"cubic_step_hvp: no upper bracket for α found in {max_search} doublings "
                               f"(last α = {hi:.3g}); check that hvp is symmetric and finite")
        side = 0
        for _ in range(max_search):
            # stop on a relative bracket rtol, or when ‖Δ(hi)‖ meets 2·hi/M to rtol (hi is then the root)
            if hi - lo <= rtol * hi or 1.0 - M * float(step.norm()) / (2.0 * hi) <= rtol:
                break
            if f_lo is not None and math.isfinite(f_lo) and f_hi > f_lo:
                mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)       # regula falsi on ψ (Illinois variant)
                if not lo < mid < hi:
                    mid = 0.5 * (lo + hi)
            else:
                mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)
            x, info = solve(mid, -g)
            if info["negative_curvature"]:
                lo, f_lo = too_small(mid, info), None
                if lo >= hi:   # the accepted upper end is not safe either: bracket again above the new lo
                    return search(lo)
                continue
            f_mid = psi(mid, x)
            if f_mid < 0:
                lo, f_lo = mid, f_mid
                if side == -1:
                    f_hi *= 0.5                      # Illinois: the end kept twice has its value halved
                side = -1
            else:
                hi, step, step_info, f_hi = mid, x, info, f_mid
                if side == 1 and f_lo is not None:
                    f_lo *= 0.5
                side = 1
        return lo, hi, step, step_info

    lo = max(0.0, -lam_up, float(alpha_min))
    certified, bump, k = False, 1e-8 * scale, int(extremes.get("steps") or lanczos_steps)
    for rnd in range(max_certify + 1):
        lo, alpha, step, step_info = search(lo)
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        _, info = solve(alpha, z)
        if not info["negative_curvature"]:
            certified = True
            break
        # H + αI is indefinite in a direction −g does not reach (the hard case or near it): a longer
        # Lanczos run (twice the steps, a new start) sharpens the upper bound on λ_min
        too_small(alpha, info)
        k = min(d, 2 * k)
        lam_up = min(lam_up, lanczos_ritz(hvp, d, k=k, seed=seed + 2 + rnd)["lambda_min"])
        lo = max(alpha, -lam_up) + bump
        bump *= 4.0
    facts = {"alpha": alpha, "lambda_min": lam_up, "lambda_max": lam_max, "lambda_min_ritz": lam_ritz,
             "lanczos_residual": extremes.get("residual_min"), "hard_case": False, "certified": certified,
             "negative_curvature_solves": counts["neg"], "cg_converged": step_info["converged"],
             "cg_relative_residual": step_info["relative_residual"], "step_norm": float(step.norm()),
             "cg_iterations": counts["cg"], "solver": "hvp"}
    return step, facts
