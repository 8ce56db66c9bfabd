"""Posterior predictive distribution at new inputs.

For draws θ_s ~ q(θ) (weighted w_s for empirical posteriors) and the model's observation
distribution p(y | x, θ) with mean m(x, θ) and variance v(x, θ), the moment-matched predictive is

    E[y | x]   = Σ_s w_s m(x, θ_s),
    Var[y | x] = Σ_s w_s v(x, θ_s)  +  Σ_s w_s (m(x, θ_s) - E[y | x])²     (aleatoric + epistemic),

the law of total variance. The observation distribution is read from the model itself, so any
conforming user model works.

``linearised=True`` gives the linearised ("GLM") predictive instead (MacKay, 1992; Immer et al.,
2021; Laplace Redux, Daxberger et al., 2021): the mean function is linearised at the posterior mean
μ, m(x, θ) ≈ m(x, μ) + J(x)(θ - μ) with J = ∂m/∂θ at μ, so that for q(θ) = N(μ, Σ)

    E[y | x] = m(x, μ),   Var[y | x] = v(x, μ) + J(x) Σ J(x)ᵀ,

deterministic (no draws); diag(J Σ Jᵀ) is computed in the covariance's own structure
(``Covariance.jacobian_quadratic``), never from a dense Σ (d = 91k parameters would need 66 GB). It is
the predictive the GGN Laplace approximation is built for: sampling weights of a whole-net Laplace
posterior and pushing them through the net underfits badly (the GGN constrains only the directions
the data see; the prior fills the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.validation import as_regression_tensors, check_seed

from .latent import BoundModel, check_feature_count
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


def predict(posterior: Posterior, x: Any, num_samples: int = 200, seed: int = 0,
            linearised: bool = False) -> Prediction:
    """Posterior predictive mean, std and per-draw moments at inputs ``x``.

    Empirical posteriors (NUTS, importance reweighting) use their own draws and weights; Gaussian
    ones draw ``num_samples`` θ with ``seed``. ``linearised=True``: the linearised predictive of the
    module docstring around the posterior's mean and covariance (one "draw", the mean function at μ).
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be an inference.Posterior, got {type(posterior).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    seed = check_seed(seed)
    x, _ = as_regression_tensors(x)
    check_feature_count(posterior.model, x, "x")
    if posterior.model is None:
        raise ValueError("this posterior carries no model: pass model= to Posterior.load (built-in models are "
                         "rebuilt from the file)")
    # predictions need the model, not the training data: a file saved with include_data=False binds the
    # model to the inputs asked about (the layout is the model's, whatever data it is traced on)
    bound = (posterior.bound_model() if posterior.x is not None
             else BoundModel(posterior.model, x, torch.zeros(len(x), dtype=x.dtype)))
    if linearised:
        return _linearised(posterior, bound, x)
    theta, w = posterior.draws(num_samples, seed=seed)  # weighted draws as they are, else i.i.d. draws
    if w is None:
        w = torch.full((num_samples,), 1.0 / num_samples, dtype=theta.dtype)
    with torch.no_grad():
        m, v = bound.predictive_moments(theta.to(x.dtype), x)
    w = w.to(m.dtype)
    mean = (w[:, None] * m).sum(0)
    epi = (w[:, None] * (m - mean) ** 2).sum(0)
    alea = (w[:, None] * v).sum(0)
    return Prediction(mean=mean, std=(epi + alea).sqrt(), epistemic_std=epi.sqrt(), means=m, variances=v, weights=w)


def _linearised(posterior: Posterior, bound, x: torch.Tensor) -> Prediction:
    mu, x64 = posterior.loc.double(), x.double()
    with torch.no_grad():
        m, v = bound.predictive_moments(mu, x64)
    # diag(J Σ Jᵀ) in the covariance's own structure (Σ never dense; KFAC never forms J either)
    epi = posterior.cov.linearised_variance(bound, x64, mu).clamp_min(0)
    var = v.detach() + epi
    return Prediction(mean=m.detach(), std=var.sqrt(), epistemic_std=epi.sqrt(), means=m.detach()[None],
                      variances=var[None], weights=torch.ones(1, dtype=m.dtype))

