"""Bayesian regression models written as ordinary Pyro programs ``model(x, y=None)``, and data.

Convention (any user model that follows it works with every method of the package): one
``pyro.plate("data", len(x))`` holding exactly one observed site (any name); all latent sites
outside that plate.
"""

from __future__ import annotations

from .linear import BayesianLinearRegression
from .mlp import BayesianMLP

__all__ = ["BayesianLinearRegression", "BayesianMLP", "model_from_config", "MODELS"]

MODELS = {"BayesianLinearRegression": BayesianLinearRegression, "BayesianMLP": BayesianMLP}


def model_from_config(config: dict):
    """Rebuild a built-in model from its ``config()`` dictionary."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models are {sorted(MODELS)}")
    return MODELS[name](**cfg)
