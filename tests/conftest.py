"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from bayes_unlearn.inference import fit
from bayes_unlearn.models.forget_sets import split
from bayes_unlearn.models.linear import BayesianLinearRegression

BLR_FORGET_IDX = torch.arange(0, 100, 5)


@pytest.fixture(scope="session")
def blr_problem():
    """Conjugate BLR with 100 points (y = x·[1, -2, .5] + 0.3 + N(0, 0.1²)), forget every 5th.

    Holds the data, the split, the closed-form posterior on the 80 retained points (``mean``,
    ``cov``, ``exact``) and on all 100 (``exact_full``), and ``post``: a "laplace" fit on all 100,
    which is exact for this model (KL to the closed form ~1e-15).
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(100, generator=g)
    model = BayesianLinearRegression(3, prior_scale=1.0, noise=0.1)
    xr, yr, xf, yf = split(X, y, BLR_FORGET_IDX)
    mean, cov = model.exact_posterior(xr, yr)
    return {"model": model, "X": X, "y": y, "xr": xr, "yr": yr, "xf": xf, "yf": yf, "mean": mean, "cov": cov,
            "exact": MultivariateNormal(mean, cov), "exact_full": MultivariateNormal(*model.exact_posterior(X, y)),
            "post": fit(model, X, y, "laplace", progress=False)}
