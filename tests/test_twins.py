"""The one-place helpers that replaced duplicated code: BoundModel's log densities, the guide's site
order, conjugate gradients, the predictive distances and the benchmarks' JSON writer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayes_unlearn.analysis.ensemble import MomentPrediction
from bayes_unlearn.analysis.metrics import predictive_distances
from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.inference.linalg import conjugate_gradient
from bayes_unlearn.inference.svi import guide_site_names, make_guide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives in the repo root
from benchmarks._io import write_result  # noqa: E402


def _model(x, y=None):
    coef = pyro.sample("coef", dist.Normal(torch.zeros(2, dtype=x.dtype), 2.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.ones((), dtype=x.dtype)))
    with pyro.plate("data", len(x)):
        return pyro.sample("obs", dist.Normal(x @ coef, sigma), obs=y)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.3 * torch.randn(7, generator=g, dtype=torch.float64)
    return x, y


def test_log_joint_with_scale_matches_the_hand_written_density(data):
    x, y = data
    bound = BoundModel(_model, x, y)
    theta = torch.tensor([0.4, -1.1, math.log(0.7)], dtype=torch.float64)  # coef, log sigma
    coef, sigma = theta[:2], theta[2].exp()
    prior = (dist.Normal(0.0, 2.0).log_prob(coef).sum() + dist.HalfNormal(1.0).log_prob(sigma)
             + theta[2])  # + log|dσ/dθ| = θ_σ
    lik = dist.Normal(x @ coef, sigma).log_prob(y)
    torch.testing.assert_close(bound.log_likelihood(theta, x, y), lik)
    torch.testing.assert_close(bound.log_prior(theta, x), prior)
    torch.testing.assert_close(bound.log_joint(theta, x, y), prior + lik.sum())
    torch.testing.assert_close(bound.log_joint(theta, x, y, 3.5), prior + 3.5 * lik.sum())
    tr = bound.trace(theta, x, y)
    torch.testing.assert_close(bound.obs_log_prob(tr), lik)
    torch.testing.assert_close(bound.prior_log_prob(tr, theta), prior)


def test_guide_site_names_follow_the_packing_order(data):
    x, y = data
    bound = BoundModel(_model, x, y)
    guide = make_guide(_model, "meanfield", bound.layout)
    with pytest.raises(ValueError, match="not been initialised"):
        guide_site_names(guide)
    with pyro.settings.context(module_local_params=True):
        guide(x, y)
    assert guide_site_names(guide) == ["coef", "sigma"] == bound.layout.names


def _spd(d: int, seed: int, shift: float) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + shift * torch.eye(d, dtype=torch.float64)


def test_conjugate_gradient_solves_and_reports():
    A = _spd(20, 0, 0.5)
    b = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64)
    exact = torch.linalg.solve(A, b)
    x, facts = conjugate_gradient(lambda v: A @ v, b, tol=1e-10)
    assert facts["converged"] and not facts["negative_curvature"] and facts["relative_residual"] <= 1e-10
    assert 1 <= facts["cg_iterations"] <= 20
    torch.testing.assert_close(x, exact, rtol=1e-8, atol=1e-8)
    # a Jacobi preconditioner and a start near the solution: the same solution
    xp, fp = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, precond=1.0 / A.diagonal(), x0=exact + 1e-3)
    assert fp["converged"]
    torch.testing.assert_close(xp, exact, rtol=1e-8, atol=1e-8)
    # stopped by max_iter: not converged, the residual reported is the iterate's
    x2, f2 = conjugate_gradient(lambda v: A @ v, b, tol=1e-12, max_iter=2)
    assert f2["cg_iterations"] == 2 and not f2["converged"]
    assert f2["relative_residual"] == pytest.approx(float((b - A @ x2).norm() / b.norm()), rel=1e-6)


def test_conjugate_gradient_stops_on_negative_curvature():
    A = _spd(10, 1, 0.0) - 2.0 * torch.eye(10, dtype=torch.float64)   # indefinite
    lam_min = float(torch.linalg.eigvalsh(A)[0])
    b = torch.ones(10, dtype=torch.float64)
    x, facts = conjugate_gradient(lambda v: A @ v, b)
    assert facts["negative_curvature"] and not facts["converged"]
    assert lam_min <= facts["curvature_rayleigh"] <= 0.0   # a Rayleigh quotient bounds λ_min from above
    assert torch.isfinite(x).all()


def test_predictive_distances_of_gaussians_in_closed_form():
    p = MomentPrediction(torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    ref = MomentPrediction(torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([2.0, 2.0], dtype=torch.float64))
    d = predictive_distances(p, ref)
    # KL(N(0,1) ‖ N(1,4)) = log 2 + (1 + 1)/8 − ½;  KL(N(1,4) ‖ N(0,1)) = −log 2 + (4 + 1)/2 − ½;  W₂ = √2
    assert d["predictive_kl"] == pytest.approx(math.log(2) + 0.25 - 0.5, rel=1e-12)
    assert d["predictive_kl_reverse"] == pytest.approx(-math.log(2) + 2.5 - 0.5, rel=1e-12)
    assert d["w2"] == pytest.approx(math.sqrt(2), rel=1e-12)
    with pytest.raises(TypeError, match="Posterior or a prediction"):
        predictive_distances({"mean": 0}, ref)


def test_write_result_adds_machine_facts_atomically(tmp_path):
    path = tmp_path / "new" / "r.json"
    write_result(path, {"rows": [1.5, float("nan")], "obj": object}, threads=1)
    doc = json.loads(path.read_text())
    assert doc["rows"][0] == 1.5 and math.isnan(doc["rows"][1]) and doc["obj"] == str(object)
    assert doc["machine"]["torch_threads"] == 1 and doc["machine"]["torch"] == torch.__version__
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]   # no temporary file left behind
