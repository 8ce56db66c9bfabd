"""Conjugate Bayesian linear regression: the closed-form oracle for every test in this package.

Model (known noise σ, isotropic Gaussian prior of scale s on weights and bias):

    w ~ N(0, s² I_D),  b ~ N(0, s²),  y_i | x_i, w, b ~ N(x_iᵀw + b, σ²).

With Φ = [X, 1] and θ = (w, b) the posterior is Gaussian (Bishop, PRML §3.3, eq. 3.53-3.54):

    Λ_N = I/s² + ΦᵀΦ/σ²,   μ_N = Λ_N⁻¹ Φᵀy / σ²,

and the log evidence is that of y ~ N(0, s² ΦΦᵀ + σ² I) (PRML eq. 3.86). Because everything is
exact, the exactly retrained posterior on D_r = D \\ D_f is also known in closed form, which is
what makes this model the test oracle for inference and unlearning alike.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["BayesianLinearRegression"]


class BayesianLinearRegression:
    """``model(x, y=None)``: conjugate Bayesian linear regression with latent sites ``w`` [D] and ``b``.

    Parameters
    ----------
    in_dim : number of input features D.
    prior_scale : s, the prior standard deviation of every weight and of the bias.
    noise : σ, the known observation noise standard deviation.
    """

    def __init__(self, in_dim: int, prior_scale: float = 1.0, noise: float = 0.1):
        if int(in_dim) < 1:
            raise ValueError(f"in_dim must be a positive integer, got {in_dim!r}")
        if not (prior_scale > 0 and noise > 0):
            raise ValueError(f"prior_scale and noise must be positive, got {prior_scale!r} and {noise!r}")
        self.in_dim = int(in_dim)
        self.prior_scale = float(prior_scale)
        self.noise = float(noise)

    def config(self) -> dict:
        """JSON-able description from which :func:`models.model_from_config` rebuilds the model."""
        return {"name": "BayesianLinearRegression", "in_dim": self.in_dim,
                "prior_scale": self.prior_scale, "noise": self.noise}

    def __repr__(self) -> str:
        return f"BayesianLinearRegression(in_dim={self.in_dim}, prior_scale={self.prior_scale}, noise={self.noise})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(self.prior_scale, dtype=x.dtype)
        w = pyro.sample("w", dist.Normal(torch.zeros(self.in_dim, dtype=x.dtype), s).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.zeros((), dtype=x.dtype), s))
        mean = x @ w + b
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, torch.as_tensor(self.noise, dtype=x.dtype)), obs=y)
        return mean

    # -- closed forms ----------------------------------------------------------------------------
    def _design(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape [N, {self.in_dim}], got {tuple(x.shape)}")
        return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)

    def exact_posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean [D+1] and covariance [D+1, D+1] of θ = (w, b), in float64."""
        phi = self._design(x)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if len(y) != len(phi):
            raise ValueError(f"x has {len(phi)} rows but y has {len(y)}")
        prec = torch.eye(phi.shape[1], dtype=torch.float64) / self.prior_scale**2 + phi.T @ phi / self.noise**2
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.T)
        mean = cov @ (phi.T @ y) / self.noise**2
        return mean, cov

    def log_evidence(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """log p(y | x) = log N(y; 0, s² ΦΦᵀ + σ² I)."""
        phi = self._design(x)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        cov = self.prior_scale**2 * phi @ phi.T + self.noise**2 * torch.eye(len(phi), dtype=torch.float64)
        return float(torch.distributions.MultivariateNormal(torch.zeros(len(phi), dtype=torch.float64), cov).log_prob(y))
