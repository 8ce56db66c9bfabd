"""``LowRank``: a low-rank plus diagonal covariance, Σ = F Fᵀ + diag(c) (low-rank SVI).

    Σ = F Fᵀ + D,   F [k, r], D = diag(c), c > 0,
    Λ = Σ⁻¹ = D⁻¹ − D⁻¹ F (I_r + Fᵀ D⁻¹ F)⁻¹ Fᵀ D⁻¹               (Woodbury),
    log det Σ = log det(I_r + Fᵀ D⁻¹ F) + Σ_j log c_j              (matrix determinant lemma).

The structure of Pyro's ``AutoLowRankMultivariateNormal`` (torch ``LowRankMultivariateNormal``; Rezende &
Mohamed-style factor covariance as in Ong, Nott & Smith, "Gaussian variational approximation with a
factor covariance structure", 2018). A down-date Λ − C has no low-rank-plus-diagonal form in general, so
it is computed densely (Λ from Σ in float64) and returned as a :class:`~inference.covariance.precision.Precision`.
Moment matching (``from_moments``): the top-r eigenpairs of Σ, F = V_r diag(λ_r)^{1/2}, and the remaining
diagonal c = diag(Σ − F Fᵀ) (clamped at 1e-12).

Costs (k coordinates, rank r, N Jacobian rows): sample O(nkr), log_prob O(kr² + r³) (torch), matvec O(kr)
per column, precision_matvec O(kr² + r³), variance O(kr), diag(JΣJᵀ) O(Nkr), dense O(k²r), down-date O(k³).
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, LowRankMultivariateNormal

from .base import Covariance, as_columns
from .precision import Precision

__all__ = ["LowRank"]


class LowRank(Covariance):
    """Σ = cov_factor cov_factorᵀ + diag(cov_diag) over the active coordinates."""

    name = "lowrank"
    tensor_fields = ("cov_factor", "cov_diag")
    curvature_form = "dense"
    recorded_curvature = False

    def __init__(self, cov_factor: torch.Tensor, cov_diag: torch.Tensor, active: torch.Tensor | None = None):
        super().__init__(active)
        if cov_factor.dim() != 2 or cov_diag.dim() != 1 or cov_factor.shape[0] != cov_diag.shape[0]:
            raise ValueError(f"cov_factor must be [k, r] and cov_diag [k], got {tuple(cov_factor.shape)} and "
                             f"{tuple(cov_diag.shape)}")
        self.cov_factor, self.cov_diag = cov_factor, cov_diag
        self.validate()

    @property
    def size(self) -> int:
        return len(self.cov_diag)

    @property
    def rank(self) -> int:
        """r, the number of columns of the factor."""
        return self.cov_factor.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.cov_diag.dtype

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z_f = torch.randn(num_samples, self.rank, generator=generator, dtype=self.dtype)
        z_d = torch.randn(num_samples, self.size, generator=generator, dtype=self.dtype)
        return z_f @ self.cov_factor.T + z_d * self.cov_diag.sqrt()

    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        return LowRankMultivariateNormal(loc, self.cov_factor, self.cov_diag)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        F, c = self.cov_factor.to(v.dtype), self.cov_diag.to(v.dtype)
        return F @ (F.T @ v) + as_columns(c, v)

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Woodbury: D⁻¹v − D⁻¹F (I + FᵀD⁻¹F)⁻¹ FᵀD⁻¹v, with a Cholesky factor of the r × r capacitance."""
        F, c = self.cov_factor.to(v.dtype), self.cov_diag.to(v.dtype)
        Dv = as_columns(1.0 / c, v)
        DF = F / c[:, None]
        cap = torch.eye(self.rank, dtype=v.dtype) + F.T @ DF
        inner = torch.cholesky_solve((F.T @ Dv).reshape(self.rank, -1), torch.linalg.cholesky(cap))
        return Dv - (DF @ inner).reshape(v.shape)

    def variance(self) -> torch.Tensor:
        return self.cov_factor.pow(2).sum(-1) + self.cov_diag

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """‖J F‖²_row + Σ_j J_ij² c_j: O(Nkr), never a k × k matrix."""
        return ((J @ self.cov_factor.to(J.dtype)) ** 2).sum(1) + (J**2 * self.cov_diag.to(J.dtype)).sum(1)

    def dense(self) -> torch.Tensor:
        return self.cov_factor @ self.cov_factor.T + torch.diag(self.cov_diag)

    def fields(self) -> dict[str, torch.Tensor]:
        return {"cov_factor": self.cov_factor, "cov_diag": self.cov_diag}

    @classmethod
    def downdated_class(cls) -> type[Precision]:
        """Λ − C (dense, from Λ = Σ⁻¹ in float64) is held as a :class:`Precision`."""
        return Precision

    @classmethod
    def from_moments(cls, cov: torch.Tensor, *, active: torch.Tensor | None = None,
                     rank: int | None = None) -> "LowRank":
        """Top-``rank`` eigenpairs of ``cov`` plus the remaining diagonal (rank default: round(√k), at least 1)."""
        r = rank or max(1, int(round(len(cov) ** 0.5)))
        ev, V = torch.linalg.eigh(cov)
        F = V[:, -r:] * ev[-r:].clamp_min(0).sqrt()
        resid = (cov.diagonal() - F.pow(2).sum(-1)).clamp_min(1e-12)
        return cls(F, resid, active=active)
