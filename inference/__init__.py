"""Posterior approximations for conforming Pyro regression models, all returned as ``Posterior``.

``fit(model, x, y, method)`` with method in "meanfield", "lowrank", "fullrank" (SVI autoguides),
"laplace" (exact Hessian or GGN) and "nuts"; ``predict(posterior, x)`` for the predictive;
``BoundModel`` for the per-point log-likelihood derived from the model itself; the covariance
structures a ``Posterior`` holds (``Diag``, ``LowRank``, ``Full``, ``Precision``, ``Empirical``, ``Kron``).
"""

from __future__ import annotations

import torch

from ..models.validation import as_regression_tensors

from .covariance import STRUCTURES, Covariance, Diag, Empirical, Full, Kron, LowRank, Precision, structure_class
from .fit import METHODS, fit
from .laplace import NotPositiveDefiniteError
from .latent import BoundModel, LatentLayout, ModelConventionError
from .posterior import Posterior
from .predict import Prediction, predict
from .svi import DivergenceError

__all__ = ["fit", "predict", "Posterior", "Prediction", "BoundModel", "LatentLayout", "METHODS",
           "DivergenceError", "NotPositiveDefiniteError", "ModelConventionError", "log_likelihood",
           "Covariance", "Diag", "LowRank", "Full", "Precision", "Empirical", "Kron", "STRUCTURES", "structure_class"]


def log_likelihood(posterior: Posterior, x, y, num_samples: int = 200, seed: int = 0):
    """Per-point log-likelihood log p(y_i | x_i, θ_s) for posterior draws θ_s: [S, N]."""
    x, y = as_regression_tensors(x, y)
    theta, _ = posterior.draws(num_samples, seed)
    with torch.no_grad():
        return posterior.bound_model().log_likelihood(theta.to(x.dtype), x, y)

