"""``Full``: a full covariance held by its Cholesky factor, Σ = L Lᵀ (full-rank SVI, moment matching).

    Σ = L Lᵀ,  L [k, k] lower triangular with a positive diagonal,
    Σ⁻¹ v = L⁻ᵀ L⁻¹ v,   diag(J Σ Jᵀ) = ‖J L‖²_row,
    log N(δ; 0, Σ) = −½ ‖L⁻¹ δ‖² − Σ_i log L_ii − (k/2) log 2π.

The structure of Pyro's ``AutoMultivariateNormal`` (Kucukelbir et al., "Automatic Differentiation
Variational Inference", 2017: full-rank ADVI) and of the moment-matched Gaussian of weighted draws
(reverse-KL projection, Nguyen et al., NeurIPS 2020). A Laplace down-date Λ − C is taken on the dense
precision Λ = Σ⁻¹ (float64) and returned as a :class:`~inference.covariance.precision.Precision`.

Costs (k coordinates, N Jacobian rows): sample O(nk²), log_prob O(k²), matvec O(k²) per column,
precision_matvec O(k²) (two triangular solves), variance O(k²), diag(JΣJᵀ) O(Nk²), dense O(k³),
down-date O(k³).
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, MultivariateNormal

from .base import Covariance
from .precision import Precision, cholesky_with_jitter

__all__ = ["Full"]


class Full(Covariance):
    """Σ = scale_tril scale_trilᵀ over the active coordinates."""

    name = "full"
    tensor_fields = ("scale_tril",)
    curvature_form = "dense"
    recorded_curvature = False

    def __init__(self, scale_tril: torch.Tensor, active: torch.Tensor | None = None):
        super().__init__(active)
        if scale_tril.dim() != 2 or scale_tril.shape[0] != scale_tril.shape[1]:
            raise ValueError(f"scale_tril must be a square lower-triangular matrix [k, k], got shape "
                             f"{tuple(scale_tril.shape)}")
        self.scale_tril = scale_tril
        self.validate()

    @property
    def size(self) -> int:
        return self.scale_tril.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_tril.dtype

    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        return MultivariateNormal(loc, scale_tril=self.scale_tril)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        L = self.scale_tril.to(v.dtype)
        return L @ (L.T @ v)

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        L = self.scale_tril.to(v.dtype)
        return torch.cholesky_solve(v.reshape(self.size, -1), L).reshape(v.shape)

    def variance(self) -> torch.Tensor:
        return self.scale_tril.pow(2).sum(-1)

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """‖J L‖² per row: O(Nk²)."""
        return ((J @ self.scale_tril.to(J.dtype)) ** 2).sum(1)

    def dense(self) -> torch.Tensor:
        return self.scale_tril @ self.scale_tril.T

    def fields(self) -> dict[str, torch.Tensor]:
        return {"scale_tril": self.scale_tril}

    @classmethod
    def downdated_class(cls) -> type[Precision]:
        """Λ − C (dense, from Λ = Σ⁻¹ in float64) is held as a :class:`Precision`."""
        return Precision

    @classmethod
    def from_moments(cls, cov: torch.Tensor, *, active: torch.Tensor | None = None,
                     rank: int | None = None) -> "Full":
        """L = chol(``cov``), with the least jitter that makes it factorise."""
        return cls(cholesky_with_jitter(cov), active=active)

    def scale_factor(self) -> torch.Tensor:
        return self.scale_tril
