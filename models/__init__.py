"""Bayesian regression models written as ordinary Pyro programs ``model(x, y=None)``, and their data.

Convention (any user model that follows it works with every method of the package): one
``pyro.plate("data", len(x))`` holding exactly one observed site (any name); all latent sites
outside that plate.

Modules, by role: :mod:`.linear` and :mod:`.mlp` (the built-in models), :mod:`.data` (the
``RegressionData`` container, ``Standardizer`` and the data sources), :mod:`.forget_sets` (which rows a
deletion request removes) and :mod:`.validation` (input checks every layer uses).
"""

from __future__ import annotations

from .data import (RegressionData, Standardizer, SYNTHETIC_REGION, diabetes, load_csv, rdataset, standardize_data,
                   synthetic_1d, synthetic_1d_mean)
from .forget_sets import (CORRUPTION_MODES, corrupt_targets, forget_fraction, forget_random, forget_region, split,
                          split_requests)
from .linear import BayesianLinearRegression
from .mlp import BayesianMLP
from .validation import ArrayLike, as_regression_tensors, check_forget_indices, check_seed

__all__ = ["BayesianLinearRegression", "BayesianMLP", "model_from_config", "MODELS",
           "RegressionData", "Standardizer", "SYNTHETIC_REGION", "synthetic_1d", "synthetic_1d_mean", "diabetes",
           "load_csv", "rdataset", "standardize_data",
           "forget_region", "forget_random", "forget_fraction", "corrupt_targets", "CORRUPTION_MODES",
           "split_requests", "split", "ArrayLike", "as_regression_tensors", "check_forget_indices", "check_seed"]

MODELS = {"BayesianLinearRegression": BayesianLinearRegression, "BayesianMLP": BayesianMLP}


def model_from_config(config: dict):
    """Rebuild a built-in model from its ``config()`` dictionary."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models are {sorted(MODELS)}")
    return MODELS[name](**cfg)
