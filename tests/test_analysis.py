"""Metrics against hand-computed values, and the region-deletion study on a tiny BNN."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_unlearn.analysis.metrics import gap_closed, gaussian_kl, gaussian_kl_1d, gaussian_w2, gaussian_w2_1d
from bayes_unlearn.inference.covariance import Diag
from bayes_unlearn.inference.latent import LatentLayout, LatentSite
from bayes_unlearn.inference.posterior import Posterior
from pyro.distributions import constraints


def test_kl_and_w2_of_known_gaussians():
    # KL(N(0,1) || N(1,2²)) = log 2 + (1 + 1)/8 - 1/2 = log 2 - 1/4, by hand
    kl = gaussian_kl_1d(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(2.0))
    assert float(kl) == pytest.approx(math.log(2) - 0.25, abs=1e-7)
    # W2 between N(0,1) and N(3, 5²) = sqrt(3² + 4²) = 5
    w2 = gaussian_w2_1d(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(3.0), torch.tensor(5.0))
    assert float(w2) == pytest.approx(5.0, abs=1e-7)


def test_weight_space_kl_and_w2_against_closed_forms():
    layout = LatentLayout((LatentSite("theta", (2,), (2,), constraints.real_vector),))
    p = Posterior(loc=torch.zeros(2, dtype=torch.float64), cov=Diag(torch.tensor([1.0, 2.0], dtype=torch.float64)),
                  layout=layout, family="x")
    q = Posterior(loc=torch.tensor([1.0, 0.0], dtype=torch.float64),
                  cov=Diag(torch.tensor([1.0, 1.0], dtype=torch.float64)), layout=layout, family="x")
    # independent coordinates: KL adds up; coordinate 1: 1/2 (mean shift 1, equal scales);
    # coordinate 2: log(1/2) + 4/2 - 1/2 = 1.5 - log 2
    assert gaussian_kl(p, q) == pytest.approx(0.5 + 1.5 - math.log(2), abs=1e-12)
    # W2² = |Δμ|² + Σ (s1 - s2)² for diagonal Gaussians = 1 + 1
    assert gaussian_w2(p, q) == pytest.approx(math.sqrt(2.0), abs=1e-9)
    assert gaussian_kl(p, p) == pytest.approx(0.0, abs=1e-12)


def test_gap_closed_definition():
    assert gap_closed(0.0, 2.0) == 1.0          # as good as retraining
    assert gap_closed(2.0, 2.0) == 0.0          # no better than doing nothing
    assert gap_closed(3.0, 2.0) == -0.5         # worse than doing nothing
    assert math.isnan(gap_closed(1.0, 0.0))     # undefined when nothing needed doing


def test_cli_help_lists_the_subcommands(capsys):
    from bayes_unlearn.analysis.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "methods", "sweep", "demo"):
        assert cmd in out
    assert "pitfalls" not in out  # a research study in benchmarks/, not a sub-command
    assert main([]) == 2  # no sub-command: help and a usage exit code


def test_former_pitfalls_subcommand_points_to_the_study(capsys):
    from bayes_unlearn.analysis.cli import main

    assert main(["pitfalls", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "python -m benchmarks.pitfalls" in err and len(err.strip().splitlines()) == 1
