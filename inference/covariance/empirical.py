"""``Empirical``: S draws θ_s with self-normalised log-weights (NUTS, Pareto-smoothed importance sampling).

    w_s = exp(ℓ_s) / Σ_t exp(ℓ_t)  (uniform 1/S without log-weights),
    θ̄ = Σ_s w_s θ_s,   Σ = Σ_s w_s (θ_s − θ̄)(θ_s − θ̄)ᵀ                   (the weighted moments),
    diag(J Σ Jᵀ) = Σ_s w_s (J (θ_s − θ̄))²,   Σ v = Σ_s w_s (θ_s − θ̄) ((θ_s − θ̄)ᵀ v).

Hoffman & Gelman (2014) for the NUTS draws; Vehtari et al., "Pareto Smoothed Importance Sampling"
(2015/2024) for the weighted ones. It is not a Gaussian: it has no density (``log_prob`` refuses) and no
precision (Σ of S < k draws is singular; ``precision_matvec`` refuses), and it cannot be down-dated
(``curvature_form`` None). Sampling is weighted resampling of the stored draws
(``torch.multinomial(w, n, replacement=True)``); ``to_distribution`` is the moment-matched Gaussian (Σ +
1e-9 I so that it factorises). ``samples`` hold θ over the active coordinates (all of them, in practice).

Costs (S draws, k coordinates, N Jacobian rows): weights O(S), draw O(n), sample O(nk), matvec O(Sk) per
column, variance O(Sk), diag(JΣJᵀ) O(SkN), dense O(Sk²).
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, MultivariateNormal

from .base import Covariance

__all__ = ["Empirical"]


class Empirical(Covariance):
    """Weighted draws ``samples`` [S, k] with optional ``log_weights`` [S] (uniform when None)."""

    name = "empirical"
    tensor_fields = ("samples", "log_weights")
    optional_fields = ("log_weights",)
    gaussian = False

    def __init__(self, samples: torch.Tensor, log_weights: torch.Tensor | None = None,
                 active: torch.Tensor | None = None):
        super().__init__(active)
        if samples.dim() != 2 or len(samples) == 0:
            raise ValueError(f"samples must be draws [S, k] with S >= 1, got shape {tuple(samples.shape)}")
        if log_weights is not None and log_weights.shape != samples.shape[:1]:
            raise ValueError("log_weights must have one entry per sample")
        self.samples, self.log_weights = samples, log_weights
        self.validate()

    @property
    def size(self) -> int:
        return self.samples.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.samples.dtype

    def weights(self) -> torch.Tensor:
        """Self-normalised weights [S] (uniform 1/S when there are no log-weights)."""
        if self.log_weights is None:
            return torch.full((len(self.samples),), 1.0 / len(self.samples), dtype=self.samples.dtype)
        return torch.softmax(self.log_weights, dim=0)

    def mean(self) -> torch.Tensor:
        """θ̄ = Σ_s w_s θ_s [k]."""
        return (self.weights()[:, None] * self.samples).sum(0)

    def _centred(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w, t = self.weights(), self.samples
        if dtype is not None:
            w, t = w.to(dtype), t.to(dtype)
        return w, t - (w[:, None] * t).sum(0)

    def draw(self, loc: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Stored draws resampled by weight (``loc`` is not used: the draws are θ itself)."""
        idx = torch.multinomial(self.weights(), num_samples, replacement=True)
        return self.samples[idx].clone()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """θ_s − θ̄ resampled by weight: draws of the deviation from the weighted mean."""
        _, c = self._centred()
        idx = torch.multinomial(self.weights(), num_samples, replacement=True, generator=generator)
        return c[idx]

    def log_prob(self, delta: torch.Tensor) -> torch.Tensor:
        raise ValueError("an empirical posterior has no density; use to_distribution() for its Gaussian fit")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        w, c = self._centred(v.dtype)
        return c.T @ (w.reshape(-1, *([1] * (v.dim() - 1))) * (c @ v))

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise ValueError("an empirical covariance has no precision (the weighted covariance of draws can be "
                         "singular); use to_distribution() for its Gaussian fit")

    def variance(self) -> torch.Tensor:
        w, c = self._centred()
        return (w[:, None] * c**2).sum(0)

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """Σ_s w_s (J (θ_s − θ̄))² row-wise: O(SkN)."""
        w, c = self._centred(J.dtype)
        return (w[:, None] * (c @ J.T) ** 2).sum(0)

    def dense(self) -> torch.Tensor:
        w, c = self._centred()
        return (c * w[:, None]).T @ c

    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        """The moment-matched Gaussian N(loc, Σ + 1e-9 I)."""
        return MultivariateNormal(loc, covariance_matrix=self.dense() + 1e-9 * torch.eye(len(loc), dtype=loc.dtype))

    def fields(self) -> dict[str, torch.Tensor]:
        out = {"samples": self.samples}
        if self.log_weights is not None:
            out["log_weights"] = self.log_weights
        return out

    def shifted(self, delta: torch.Tensor) -> "Empirical":
        """Every draw moved by δ; the weights kept."""
        return Empirical(self.samples + delta.to(self.samples.dtype), self.log_weights, active=self.active)
