"""Matrix-free linear solves: (preconditioned) conjugate gradients (Hestenes & Stiefel, 1952).

For a symmetric positive definite A given only by its product v ↦ A v, CG minimises the quadratic
q(x) = ½ xᵀA x − bᵀx over growing Krylov spaces; with a diagonal preconditioner M⁻¹ = diag(m)
(Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 5.3):

    r₀ = b − A x₀,  z₀ = M⁻¹ r₀,  p₀ = z₀
    α_k = r_kᵀz_k / p_kᵀA p_k,   x_{k+1} = x_k + α_k p_k,   r_{k+1} = r_k − α_k A p_k
    z_{k+1} = M⁻¹ r_{k+1},       p_{k+1} = z_{k+1} + (r_{k+1}ᵀz_{k+1} / r_kᵀz_k) p_k

stopped when ‖r_k‖ ≤ tol ‖b‖ (converged), after ``max_iter`` products, or when a search direction
has p_kᵀA p_k ≤ 0 (or not a number): then A is not positive definite, x_k is the last iterate
before that direction, and the Rayleigh quotient p_kᵀA p_k / p_kᵀp_k is an upper bound on λ_min(A).

Used by the matrix-free Gauss-Newton solves (``inference.gauss_newton``) and the Newton / cubic
steps of ``unlearning.cubic`` and ``unlearning.newton``.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["conjugate_gradient"]


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, tol: float = 1e-10,
                       max_iter: int = 1000, x0: torch.Tensor | None = None,
                       precond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Solve A x = b for a symmetric A given by ``matvec`` (module docstring); returns (x, facts).

    ``x0``: the start (default 0; a start costs one more product, not counted in the iterations);
    ``precond``: the inverse diagonal preconditioner m (z = m ∘ r), positive. Stops on ‖r‖ ≤ tol‖b‖,
    after ``max_iter`` iterations or on non-positive curvature.

    ``facts``: cg_iterations (completed iterations, = products of A with a search direction that were
    used), negative_curvature (a direction p with pᵀAp ≤ 0, or not a number, was met: A is not positive
    definite and x is the last iterate before it, not a solution), relative_residual ‖r‖/‖b‖, converged
    (the residual test was met), and on negative curvature ``curvature_rayleigh`` = pᵀAp / pᵀp, an upper
    bound on λ_min(A)."""
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter!r}")
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
    z = r if precond is None else precond * r
    p = z.clone()
    rz = float(r @ z)
    bb, bnorm = float(b @ b), float(b.norm())
    stop = tol**2 * bb
    rr = float(r @ r)
    it, neg, rayleigh = 0, False, None
    while it < max_iter and rr > stop and rz > 0.0:
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if not pAp > 0.0:
            neg = True
            rayleigh = pAp / max(float(p @ p), 1e-300)
            break
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        z = r if precond is None else precond * r
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
        rr = float(r @ r)
        it += 1
    facts = {"cg_iterations": it, "negative_curvature": neg,
             "relative_residual": rr ** 0.5 / max(bnorm, 1e-300), "converged": (not neg) and rr <= stop}
    if neg:
        facts["curvature_rayleigh"] = rayleigh
    return x, facts
