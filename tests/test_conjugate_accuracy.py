"""Accuracy claims on conjugate models, and the warnings that must say when they fail (issue 12, items
9, 10 and 14).

Oracle: for BayesianLinearRegression a "laplace" fit is the closed-form posterior, so the weight-space
KL to a "laplace" retrain on D_r (``analysis.metrics.gaussian_kl``) is a method's own error. The
scenarios come from ``benchmarks/conjugate_accuracy.py`` (which also holds the calibration runs quoted
in the README); measured values in comments are from there, torch 2.x, CPU.
"""

from __future__ import annotations

import pytest
import torch

from bayes_unlearn.analysis.metrics import gaussian_kl
from benchmarks.conjugate_accuracy import scenario
from bayes_unlearn.inference import fit
from bayes_unlearn.models.forget_sets import forget_random, split
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.models.mlp import BayesianMLP
from bayes_unlearn.unlearning import unlearn
from bayes_unlearn.unlearning.verdict import VERDICT_RULES, ess_kl


@pytest.fixture(scope="module")
def user_case():
    """The reported case: D = 6 (7 parameters), N = 200, σ = 0.3, rows with x[:, 0] above its 66 %
    quantile forgotten (34 %). KL(none ‖ exact) = 1.45 (seed 0)."""
    return scenario(0, 200, 6, 0.34, "threshold")


def kl(res, sc) -> float:
    return gaussian_kl(res.posterior, sc["exact"])


# --------------------------------------------------------------------------------------------------
# eubo: the default (8 particles) meets KL <= 0.02 where one particle did not
# --------------------------------------------------------------------------------------------------
def test_eubo_defaults_meet_the_claim_on_the_reported_case(user_case):
    res = unlearn(user_case["post"], user_case["xf"], user_case["yf"], "eubo")
    # Measured 0.0013 (8 particles, the new default); one particle (the old default) gave 0.042-0.048.
    assert kl(res, user_case) <= 0.02
    assert not res.diverged and res.warnings == ()
    assert res.diagnostics["rise"] < 0  # the re-fit fits D_r better than doing nothing


# --------------------------------------------------------------------------------------------------
# eubo-adjusted: biased by design on a large deletion; it must say so
# --------------------------------------------------------------------------------------------------
def test_eubo_adjusted_warns_when_its_adjustment_biases_the_result(user_case):
    res = unlearn(user_case["post"], user_case["xf"], user_case["yf"], "eubo-adjusted")
    k = kl(res, user_case)
    assert k > 0.1  # measured 0.27: the adjustment drops the likelihood where the target now lies
    assert res.diagnostics["clipped_mass"] > 0.05 > res.diagnostics["clipped_mass_old"]
    assert any("outside the region where the adjusted likelihood counts" in w for w in res.warnings)
    assert res.verdict["verdict"] != "ok"


# --------------------------------------------------------------------------------------------------
# importance reweighting: ESS for the moments and k̂ predict KL > 0.02
# --------------------------------------------------------------------------------------------------
def test_psis_warns_when_its_error_exceeds_the_claim(blr_problem):
    """The conftest BLR (every 5th of 100 rows): measured KL 0.0226 > 0.02 with ESS ≈ 930 for 14 moments."""
    res = unlearn(blr_problem["post"], blr_problem["xf"], blr_problem["yf"], "psis")
    assert gaussian_kl(res.posterior, fit(blr_problem["model"], blr_problem["xr"], blr_problem["yr"], "laplace",
                                          progress=False)) > 0.02
    assert res.diagnostics["ess_kl"] == pytest.approx(ess_kl(res.diagnostics["ess"], 4))
    assert res.diagnostics["ess_kl"] > VERDICT_RULES["ess_kl_uncertain"]
    assert len(res.warnings) == 1 and "expect KL to exact retraining above 0.02" in res.warnings[0]
    assert res.verdict["verdict"] != "ok"
    assert any("ESS" in r for r in res.verdict["reasons"])


def test_rkl_warns_on_a_moderate_deletion():
    """20 % threshold deletion, D = 6: measured rkl KL 0.075 with ESS 576 of 4000 (the old rule warned
    only below ESS 50)."""
    sc = scenario(0, 200, 6, 0.2, "threshold")
    res = unlearn(sc["post"], sc["xf"], sc["yf"], "rkl")
    assert kl(res, sc) > 0.02
    assert res.diagnostics["ess"] > 50
    assert res.warnings and "expect KL to exact retraining above 0.02" in res.warnings[0]
    assert res.verdict["verdict"] != "ok"


def test_reweighting_is_quiet_and_accurate_on_a_small_deletion():
    """2 % threshold deletion, D = 3: measured KL 0.002-0.003, ESS ≈ 2900 of 4000, k̂ 0.24."""
    sc = scenario(0, 100, 3, 0.02, "threshold")
    for method in ("rkl", "psis"):
        res = unlearn(sc["post"], sc["xf"], sc["yf"], method)
        assert kl(res, sc) <= 0.02
        assert res.warnings == ()
        assert res.diagnostics["ess_kl"] <= VERDICT_RULES["ess_kl_uncertain"]


def test_psis_khat_between_half_and_0_7_is_at_least_uncertain():
    """10 % threshold deletion, D = 6 (seed 0): measured k̂ 0.61, KL 0.032."""
    sc = scenario(0, 200, 6, 0.1, "threshold")
    res = unlearn(sc["post"], sc["xf"], sc["yf"], "psis")
    assert 0.5 < res.diagnostics["pareto_k"] <= 0.7
    assert res.verdict["verdict"] in ("uncertain", "failed") and res.warnings


# --------------------------------------------------------------------------------------------------
# eubo runaway on a net: flagged at the default settings, whatever stops the loop
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bnn_case():
    """The reported BNN: 1-16-16-1 tanh, 188 rows of synthetic_1d, 5 % (9 rows) forgotten at random, a
    GGN Laplace posterior from a short MAP (~5 s)."""
    data = synthetic_1d(n=188, seed=0)
    model = BayesianMLP(1, (16, 16), "tanh", noise=0.1)
    old = fit(model, data.x, data.y, "laplace", curvature="ggn", structure="full", num_steps=400, lr=0.03,
              lbfgs_steps=300, progress=False)
    _, _, xf, yf = split(data.x, data.y, forget_random(188, 9, seed=0))
    return old, xf, yf


def test_eubo_runaway_is_flagged_at_default_settings(bnn_case):
    old, xf, yf = bnn_case
    res = unlearn(old, xf, yf, "eubo")  # measured: the trajectory rule fires after 250 steps (8 particles)
    assert res.diverged and res.verdict["verdict"] == "failed"
    assert "NOTHING WAS UNLEARNED" in res.warnings[0]
    assert torch.equal(res.posterior.loc, old.loc)


def test_eubo_runaway_stopped_by_the_plateau_rule_is_flagged(bnn_case):
    """One particle and window=50: the plateau rule stops the fit before the trajectory rule fires, and the
    fit's mean can fit D_r worse than the old one. Without the check of the result (max_rise=inf, the
    behaviour before the fix) it comes back unflagged; with a limit below the rise it is refused and the old
    posterior returned, with a limit above it accepted. (The size of the rise depends on the platform's
    arithmetic: 59 nats measured on one machine, 9 on another, so the limits are set around the measured rise;
    the same seed gives the same trajectory within one process.)"""
    old, xf, yf = bnn_case
    unchecked = unlearn(old, xf, yf, "eubo", window=50, num_particles=1, max_rise=float("inf"))
    assert not unchecked.diverged and unchecked.warnings == ()
    rise = unchecked.diagnostics["rise"]
    assert rise > 1.0  # the one-particle fit made the retained data fit worse (a runaway, however small)
    res = unlearn(old, xf, yf, "eubo", window=50, num_particles=1, max_rise=rise / 2)
    assert res.diverged and res.verdict["verdict"] == "failed"
    assert "fits the retained data far worse" in res.warnings[0] and "NOTHING WAS UNLEARNED" in res.warnings[0]
    assert torch.equal(res.posterior.loc, old.loc)
    kept = unlearn(old, xf, yf, "eubo", window=50, num_particles=1, max_rise=rise * 2)
    assert not kept.diverged and torch.equal(kept.posterior.loc, unchecked.posterior.loc)
