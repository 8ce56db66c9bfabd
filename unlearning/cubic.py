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
Matrix-free (:func:`cubic_step_hvp`): Hessian-vector products only -- a Lanczos estimate of λ_min,
then a bisection over α in which each ‖Δ(α)‖ comes from conjugate gradients on (H + αI); the hard
case is not resolved there (α stays just above −λ̂_min).

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

__all__ = ["cubic_step", "cubic_step_hvp", "cubic_model", "estimate_hessian_lipschitz", "conjugate_gradient",
           "lanczos_extreme"]


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
# matrix-free path: Hessian-vector products only (CG, Lanczos)
# --------------------------------------------------------------------------------------------------
def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, tol: float = 1e-10,
                       max_iter: int = 1000) -> tuple[torch.Tensor, dict]:
    """Solve A x = b for a symmetric A given by ``matvec``; stops on ‖r‖ ≤ tol‖b‖ or negative curvature."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    bnorm = float(b.norm())
    it, neg = 0, False
    while it < max_iter and rr ** 0.5 > tol * bnorm:
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if pAp <= 0:
            neg = True
            break
        a = rr / pAp
        x = x + a * p
        r = r - a * Ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    return x, {"cg_iterations": it, "negative_curvature": neg, "relative_residual": rr ** 0.5 / max(bnorm, 1e-300)}


def lanczos_extreme(matvec: Callable[[torch.Tensor], torch.Tensor], d: int, *, k: int = 60,
                    seed: int = 0) -> tuple[float, float]:
    """(λ_min, λ_max) estimates by k Lanczos steps with full re-orthogonalisation (Ritz values)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(k, d)
    Q = torch.zeros(d, k, dtype=torch.float64)
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    alphas, betas = [], []
    for j in range(k):
        Q[:, j] = q
        w = matvec(q)
        a = float(q @ w)
        w = w - Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        w = w - Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        alphas.append(a)
        b = float(w.norm())
        if j == k - 1 or b < 1e-12 * max(1.0, abs(a)):
            break
        betas.append(b)
        q = w / b
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[0]), float(ev[-1])


def cubic_step_hvp(g: torch.Tensor, hvp: Callable[[torch.Tensor], torch.Tensor], M: float, *,
                   lanczos_steps: int = 60, cg_tol: float = 1e-10, max_search: int = 60, rtol: float = 1e-8,
                   seed: int = 0, extremes: tuple[float, float] | None = None,
                   alpha_min: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The cubic step from Hessian-vector products: Lanczos for λ_min, then a bisection (in log α) on
    ‖Δ(α)‖ = 2α/M with Δ(α) = −(H + αI)⁻¹g by CG. The hard case is not detected on this path
    (α stays strictly above −λ̂_min, which keeps H + αI positive definite for CG).

    ``extremes``: (λ_min, λ_max) already estimated; ``alpha_min``: a known lower bound on α (the α of
    a smaller M: α grows with M), which shortens the search. ``rtol``: relative width of the final
    bracket on α."""
    if not M > 0:
        raise ValueError(f"the cubic constant M must be positive, got {M!r}")
    d = len(g)
    lam_min, lam_max = extremes if extremes is not None else lanczos_extreme(hvp, d, k=lanczos_steps, seed=seed)
    scale = max(1.0, abs(lam_max), abs(lam_min))
    # Ritz values over-estimate λ_min: keep a margin so that H + αI stays positive definite
    alpha_low = max(0.0, -lam_min) + 1e-8 * scale
    gnorm = float(g.norm())
    cg_its = 0

    def solve(a: float) -> torch.Tensor:
        nonlocal cg_its
        x, info = conjugate_gradient(lambda v: hvp(v) + a * v, -g, tol=cg_tol)
        cg_its += info["cg_iterations"]
        return x

    lo, hi = alpha_low, alpha_low + math.sqrt(M * gnorm / 2.0) + 1e-300
    if lo < alpha_min < hi:
        lo = alpha_min
    step = solve(hi)
    for _ in range(max_search):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)
        s = solve(mid)
        if float(s.norm()) > 2.0 * mid / M:
            lo = mid
        else:
            hi, step = mid, s
        if hi - lo <= rtol * hi:
            break
    return step, {"alpha": hi, "lambda_min": lam_min, "lambda_max": lam_max, "hard_case": False,
                  "step_norm": float(step.norm()), "cg_iterations": cg_its, "solver": "hvp"}
