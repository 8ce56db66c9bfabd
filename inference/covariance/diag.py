"""``Diag``: a diagonal covariance, Σ = diag(s²) (mean-field SVI, the diagonal GGN Laplace).

    Σ = diag(s₁², …, s_k²),   Λ = Σ⁻¹ = diag(s⁻²),
    log N(δ; 0, Σ) = −½ Σ_j (δ_j / s_j)² − Σ_j log s_j − (k/2) log 2π.

The structure of ``AutoDiagonalNormal`` (Pyro) and of the diagonal GGN Laplace approximation (Ritter et
al., 2018; Daxberger et al., "Laplace Redux", 2021: ``DiagLaplace``). Its Laplace down-date stays
diagonal: Λ_r = diag(Λ) − diag(C), with C the forget set's curvature diagonal (DESIGN.md §4.2).

Costs (k coordinates, N Jacobian rows): sample O(nk), log_prob O(k), matvec / precision_matvec O(k)
per column, variance O(k), diag(JΣJᵀ) O(Nk), down-date O(k); dense() builds the k × k matrix.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, Normal

from .base import Covariance, as_columns
from .repair import check_and_repair_diagonal

__all__ = ["Diag"]


class Diag(Covariance):
    """Σ = diag(scale²) over the active coordinates; ``scale`` [k] > 0."""

    name = "diag"
    tensor_fields = ("scale",)
    curvature_form = "diag"

    def __init__(self, scale: torch.Tensor, active: torch.Tensor | None = None):
        super().__init__(active)
        if scale.dim() != 1:
            raise ValueError(f"scale must be a vector [k], got shape {tuple(scale.shape)}")
        self.scale = scale
        self.validate()

    @property
    def size(self) -> int:
        return len(self.scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        return Independent(Normal(loc, self.scale), 1)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return as_columns(self.scale.to(v.dtype) ** 2, v)

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        return as_columns(self.scale.to(v.dtype).pow(-2), v)

    def variance(self) -> torch.Tensor:
        return self.scale**2

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """Σ_j J_ij² s_j²: O(Nk), never a k × k matrix."""
        return (J**2 * self.scale.to(J.dtype) ** 2).sum(1)

    def dense(self) -> torch.Tensor:
        return torch.diag(self.scale**2)

    def fields(self) -> dict[str, torch.Tensor]:
        return {"scale": self.scale}

    def precision_form(self) -> torch.Tensor:
        """diag Λ = s⁻² [k] (float64)."""
        return self.scale.to(torch.float64).pow(-2)

    @classmethod
    def from_curvature(cls, precision: torch.Tensor, *, active: torch.Tensor | None = None,
                       repair: str | None = None, floor: float | None = None,
                       what: str = "") -> tuple["Diag", dict]:
        """Diag with s = d^{-1/2} for a diagonal precision d [k], checked (and clipped on request) first."""
        label = f"{what} diagonal precision" if what else "diagonal precision"
        d, facts = check_and_repair_diagonal(precision, repair, floor, what=label)
        return cls(d.rsqrt(), active=active), facts

    def downdate(self, term: torch.Tensor, *, repair: str | None = None, floor: float | None = None,
                 what: str = "down-dated") -> tuple["Diag", dict]:
        """diag Λ − diag C (``term`` [k]), checked; the scale keeps this covariance's dtype."""
        cov, facts = super().downdate(term, repair=repair, floor=floor, what=what)
        return cov.to(self.dtype), facts

    @classmethod
    def from_moments(cls, cov: torch.Tensor, *, active: torch.Tensor | None = None,
                     rank: int | None = None) -> "Diag":
        """The marginal variances of ``cov`` (the moment-matching diagonal Gaussian)."""
        return cls(cov.diagonal().clamp_min(1e-30).sqrt(), active=active)

    @classmethod
    def from_precision(cls, precision: torch.Tensor, *, active: torch.Tensor | None = None,
                       rank: int | None = None) -> "Diag":
        """s_j = Λ_jj^{-1/2}: the mean-field Gaussian closest to N(·, Λ⁻¹) in KL(q ‖ p), i.e. what a mean-field
        guide fitted to that Gaussian converges to (not its marginal variances)."""
        return cls(torch.diagonal(precision).rsqrt(), active=active)

    def scale_factor(self) -> torch.Tensor:
        # = scale; taken through the variance so that float64 rounding is that of torch's Normal.variance.sqrt()
        return self.variance().sqrt()

    @classmethod
    def num_moments(cls, k: int) -> int:
        """k means and k variances."""
        return 2 * k
