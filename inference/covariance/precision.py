"""``Precision``: a covariance held as its inverse, Σ = Λ⁻¹ (the Laplace approximation).

    q(θ) = N(θ*, Λ⁻¹),   Λ = −∇² log p̃(θ*, D)  (exact Hessian)  or  −∇² log p̃(θ*) + G(θ*)  (GGN),
    Λ = L Lᵀ (Cholesky, cached),   Σ v = L⁻ᵀ L⁻¹ v,   diag(J Σ Jᵀ) = ‖L⁻¹ Jᵀ‖²_column,
    log N(δ; 0, Λ⁻¹) = −½ δᵀΛδ + Σ_i log L_ii − (k/2) log 2π.

MacKay (1992); Daxberger et al., "Laplace Redux" (NeurIPS 2021; laplace-torch's ``FullLaplace``). The
Laplace down-date (DESIGN.md §4.2) subtracts the forget set's curvature from Λ itself, Λ_r = Λ − H_f,
then checks Λ_r for positive definiteness (:mod:`inference.covariance.repair`). Torch's own
``MultivariateNormal(precision_matrix=Λ)`` factorises the flipped matrix to get a lower-triangular
L' with L' L'ᵀ = Λ⁻¹ (``to_distribution`` does the same, cached), which sampling and ``log_prob`` use.

Costs (k coordinates, N Jacobian rows): the Cholesky factor O(k³) once; then sample O(nk²), log_prob
O(k²), matvec O(k²) per column, precision_matvec O(k²), variance and dense O(k³), diag(JΣJᵀ) O(Nk²),
down-date O(k³) (an eigenvalue check).
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch.distributions import Distribution, MultivariateNormal

from .base import Covariance
from .repair import check_and_repair_precision

__all__ = ["Precision", "safe_cholesky", "precision_to_scale_tril", "cholesky_with_jitter"]


def safe_cholesky(m: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``m``; a one-line ``ValueError`` with the smallest eigenvalue otherwise."""
    L, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        ev = torch.linalg.eigvalsh(m.double())
        raise ValueError(f"matrix is not positive definite (smallest eigenvalue {float(ev.min()):.3g}); "
                         "repair it explicitly (e.g. repair='clip') before use")
    return L


def precision_to_scale_tril(prec: torch.Tensor) -> torch.Tensor:
    """Lower-triangular L with L Lᵀ = Λ⁻¹ (via the flipped Cholesky factor, as in torch)."""
    Lf = safe_cholesky(torch.flip(prec, (-2, -1)))
    L_inv = torch.transpose(torch.flip(Lf, (-2, -1)), -2, -1)
    eye = torch.eye(prec.shape[-1], dtype=prec.dtype)
    return torch.linalg.solve_triangular(L_inv, eye, upper=False)


def cholesky_with_jitter(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of a covariance, adding the least jitter ε · max(1, mean diag) I (ε = 0, 1e-10,
    1e-8, 1e-6, 1e-4) that makes it factorise (moment-matched covariances of few draws can be singular)."""
    eye = torch.eye(len(cov), dtype=cov.dtype)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        L, info = torch.linalg.cholesky_ex(cov + jitter * eye * max(1.0, float(cov.diagonal().mean())))
        if int(info) == 0:
            return L
    raise ValueError("covariance is not positive definite even with jitter 1e-4 x its mean variance")


class Precision(Covariance):
    """Σ = precision⁻¹ over the active coordinates; ``precision`` [k, k] symmetric positive definite (checked
    when first factorised, with the smallest eigenvalue in the error)."""

    name = "precision"
    tensor_fields = ("precision",)
    curvature_form = "dense"

    def __init__(self, precision: torch.Tensor, active: torch.Tensor | None = None):
        super().__init__(active)
        if precision.dim() != 2 or precision.shape[0] != precision.shape[1]:
            raise ValueError(f"precision must be a square matrix [k, k], got shape {tuple(precision.shape)}")
        self.precision = precision
        self.validate()

    @cached_property
    def cholesky(self) -> torch.Tensor:
        """L with Λ = L Lᵀ (computed once)."""
        return safe_cholesky(self.precision)

    @cached_property
    def scale_tril(self) -> torch.Tensor:
        """Lower-triangular L' with L' L'ᵀ = Σ = Λ⁻¹ (computed once)."""
        return precision_to_scale_tril(self.precision)

    @property
    def size(self) -> int:
        return self.precision.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        return MultivariateNormal(loc, scale_tril=self.scale_tril)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        L = self.cholesky.to(v.dtype)
        return torch.cholesky_solve(v.reshape(self.size, -1), L).reshape(v.shape)

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.precision.to(v.dtype) @ v

    def variance(self) -> torch.Tensor:
        return torch.diagonal(self.dense())

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """‖L⁻¹ Jᵢᵀ‖² per row (one triangular solve): O(Nk²), Σ never formed."""
        L = self.cholesky.to(J.dtype)
        return (torch.linalg.solve_triangular(L, J.T, upper=False) ** 2).sum(0)

    def dense(self) -> torch.Tensor:
        return torch.cholesky_inverse(self.cholesky)

    def fields(self) -> dict[str, torch.Tensor]:
        return {"precision": self.precision}

    def precision_form(self) -> torch.Tensor:
        return self.precision.to(torch.float64)

    @classmethod
    def from_curvature(cls, precision: torch.Tensor, *, active: torch.Tensor | None = None,
                       repair: str | None = None, floor: float | None = None,
                       what: str = "") -> tuple["Precision", dict]:
        """Λ (dense [k, k]), symmetrised and checked for positive definiteness; repaired only on request."""
        label = f"{what} precision" if what else "precision"
        prec, facts = check_and_repair_precision(precision, repair, floor, what=label)
        return cls(prec, active=active), facts

    @classmethod
    def from_moments(cls, cov: torch.Tensor, *, active: torch.Tensor | None = None,
                     rank: int | None = None) -> "Precision":
        """Λ = Σ⁻¹ from the (jittered if need be) Cholesky factor of ``cov``, as ``Full.from_moments`` takes it."""
        return cls(torch.cholesky_inverse(cholesky_with_jitter(cov)), active=active)

    @classmethod
    def from_precision(cls, precision: torch.Tensor, *, active: torch.Tensor | None = None,
                       rank: int | None = None) -> "Precision":
        return cls(precision, active=active)

    def scale_factor(self) -> torch.Tensor:
        return self.scale_tril
