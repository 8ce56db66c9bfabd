"""Posterior predictive distribution at new inputs.

For draws θ_s ~ q(θ) (weighted w_s for empirical posteriors) and the model's observation
distribution p(y | x, θ) with mean m(x, θ) and variance v(x, θ), the moment-matched predictive is

    E[y | x]   = Σ_s w_s m(x, θ_s),
    Var[y | x] = Σ_s w_s v(x, θ_s)  +  Σ_s w_s (m(x, θ_s) - E[y | x])²     (aleatoric + epistemic),

the law of total variance. The observation distribution is read from the model itself, so any
conforming user model works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.datasets import as_regression_tensors

from .posterior import Posterior

__all__ = ["Prediction", "predict"]


@dataclass(frozen=True)
class Prediction:
    """Predictive summaries at N inputs from S posterior draws."""

    mean: torch.Tensor          # [N]   E[y | x]
    std: torch.Tensor           # [N]   total predictive std
    epistemic_std: torch.Tensor  # [N]  std of m(x, θ) over θ
    means: torch.Tensor         # [S, N] m(x, θ_s)
    variances: torch.Tensor     # [S, N] v(x, θ_s)
    weights: torch.Tensor       # [S]

    def sample(self, seed: int = 0) -> torch.Tensor:
        """One y draw per posterior draw, [S, N] (Gaussian observation around m(x, θ_s))."""
        g = torch.Generator().manual_seed(seed)
        return self.means + self.variances.sqrt() * torch.randn(self.means.shape, generator=g, dtype=self.means.dtype)


def predict(posterior: Posterior, x: Any, num_samples: int = 200, seed: int = 0) -> Prediction:
    """Posterior predictive mean, std and per-draw moments at inputs ``x``.

    Empirical posteriors (NUTS, importance reweighting) use their own draws and weights; Gaussian
    ones draw ``num_samples`` θ with ``seed``.
    """
    x, _ = as_regression_tensors(x)
    bound = posterior.bound_model()
    if posterior.structure == "empirical":
        theta, w = posterior.samples, posterior.weights()
    else:
        theta = posterior.sample(num_samples, seed=seed)
        w = torch.full((num_samples,), 1.0 / num_samples, dtype=theta.dtype)
    with torch.no_grad():
        m, v = bound.predictive_moments(theta.to(x.dtype), x)
    w = w.to(m.dtype)
    mean = (w[:, None] * m).sum(0)
    epi = (w[:, None] * (m - mean) ** 2).sum(0)
    alea = (w[:, None] * v).sum(0)
    return Prediction(mean=mean, std=(epi + alea).sqrt(), epistemic_std=epi.sqrt(), means=m, variances=v, weights=w)
