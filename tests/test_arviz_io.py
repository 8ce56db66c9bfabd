"""analysis.arviz_io: Posterior -> ArviZ InferenceData, checked against the conjugate BLR oracle."""

from __future__ import annotations

import json
import math

import arviz as az
import numpy as np
import pytest
import torch

from bayes_unlearn.analysis.arviz_io import psis_khat, save_netcdf, summary, to_inference_data
from bayes_unlearn.inference import fit
from bayes_unlearn.unlearning import unlearn

N, D, S = 100, 3, 400  # the shared BLR problem (tests/conftest.py): N points, D features, noise σ = NOISE
NOISE = 0.1


@pytest.fixture(scope="module")
def blr(blr_problem):
    """The shared BLR problem's "laplace" fit on all N points (exact for this conjugate model), its exact
    posterior (``mean``, ``cov``) and its InferenceData with predictions at 5 new inputs."""
    p = blr_problem
    x_new = torch.randn(5, D, generator=torch.Generator().manual_seed(1))
    idata = to_inference_data(p["post"], num_samples=S, seed=3, x_new=x_new)
    return {"model": p["model"], "x": p["X"], "y": p["y"], "post": p["post"], "mean": p["exact_full"].mean,
            "cov": p["exact_full"].covariance_matrix, "x_new": x_new, "idata": idata}


@pytest.fixture(scope="module")
def nuts_post(blr):
    return fit(blr["model"], blr["x"], blr["y"], "nuts", progress=False, num_samples=100, warmup_steps=100,
               num_chains=2)


def _theta(idata, c, s):
    """(w [D], b) of draw (c, s) as float64 tensors."""
    return (torch.as_tensor(idata.posterior["w"].values[c, s], dtype=torch.float64),
            float(idata.posterior["b"].values[c, s]))


def test_groups_dims_and_attrs(blr):
    idata = blr["idata"]
    assert set(idata.groups()) == {"posterior", "log_likelihood", "posterior_predictive", "observed_data",
                                   "constant_data", "predictions", "predictions_constant_data"}
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0") and idata.posterior["w"].shape == (1, S, D)
    assert idata.posterior["b"].shape == (1, S)
    for group in ("log_likelihood", "posterior_predictive"):
        assert idata[group]["obs"].dims == ("chain", "draw", "obs_id") and idata[group]["obs"].shape == (1, S, N)
    assert idata.observed_data["obs"].dims == ("obs_id",)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, blr["y"].numpy())
    assert idata.constant_data["x"].dims == ("obs_id", "feature")
    np.testing.assert_array_equal(idata.constant_data["x"].values, blr["x"].numpy())
    assert idata.predictions["obs"].dims == ("chain", "draw", "pred_id") and idata.predictions["obs"].shape == (1, S, 5)
    assert idata.predictions_constant_data["x"].dims == ("pred_id", "feature")
    a = idata.attrs
    assert idata.posterior.attrs["family"] == "laplace"
    assert (a["family"], a["structure"], a["seed"], a["num_samples"], a["num_chains"]) == ("laplace", "precision", 3, S, 1)
    assert json.loads(a["unlearning"]) == [] and json.loads(a["fit"])["method"] == "laplace"


def test_posterior_moments_match_exact(blr):
    # S iid draws: each sample mean has Monte-Carlo s.e. sd/sqrt(S) (sd ~ 0.016 here, s.e. ~ 8e-4), and
    # the Laplace mean equals the closed form to ~1e-9; 5 s.e. fails with probability < 1e-5 per coordinate.
    # The sample sd has relative s.e. ~ 1/sqrt(2S) = 3.5%; 5 s.e. -> 18%.
    post = blr["idata"].posterior
    draws = np.concatenate([post["w"].values[0], post["b"].values[0][:, None]], 1).astype(np.float64)
    sd = blr["cov"].diagonal().sqrt().numpy()
    np.testing.assert_array_less(np.abs(draws.mean(0) - blr["mean"].numpy()), 5 * sd / math.sqrt(S))
    np.testing.assert_allclose(draws.std(0), sd, rtol=5 / math.sqrt(2 * S))


def test_log_likelihood_equals_hand_computation(blr):
    idata, x, y = blr["idata"], blr["x"].double(), blr["y"].double()
    for s in (0, 17, S - 1):
        w, b = _theta(idata, 0, s)
        expected = torch.distributions.Normal(x @ w + b, NOISE).log_prob(y).numpy()
        np.testing.assert_allclose(idata.log_likelihood["obs"].values[0, s], expected, rtol=1e-5, atol=1e-4)


def test_predictive_draws_scatter_with_the_noise(blr):
    idata, x = blr["idata"], blr["x"].double()
    w = torch.as_tensor(idata.posterior["w"].values[0], dtype=torch.float64)   # [S, D]
    b = torch.as_tensor(idata.posterior["b"].values[0], dtype=torch.float64)   # [S]
    resid = idata.posterior_predictive["obs"].values[0] - (w @ x.T + b[:, None]).numpy()
    # y_rep - m(x, θ_s) ~ N(0, σ²) iid over S·N = 40000 values: the sd estimate has relative s.e. 0.35%.
    assert abs(resid.std() / NOISE - 1) < 0.03 and abs(resid.mean()) < 5 * NOISE / math.sqrt(resid.size)
    x_new = blr["x_new"].double()
    np.testing.assert_allclose(idata.predictions["obs_mean"].values[0], (w @ x_new.T + b[:, None]).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert np.abs(idata.predictions["obs"].values - idata.predictions["obs_mean"].values).max() < 6 * NOISE


def test_loo_matches_exact_leave_one_out(blr):
    loo = az.loo(blr["idata"])
    assert np.isfinite(loo.elpd_loo) and np.isfinite(loo.se)
    # Exact LOO for the conjugate model: p(y_i | D_-i) = N(φ_iᵀμ_-i, σ² + φ_iᵀΣ_-i φ_i).
    model, x, y = blr["model"], blr["x"], blr["y"]
    phi = torch.cat([x.double(), torch.ones(N, 1, dtype=torch.float64)], 1)
    exact = 0.0
    for i in range(N):
        keep = torch.arange(N) != i
        m, c = model.exact_posterior(x[keep], y[keep])
        exact += float(torch.distributions.Normal(phi[i] @ m, (NOISE**2 + phi[i] @ c @ phi[i]).sqrt())
                       .log_prob(y[i].double()))
    # PSIS-LOO with 400 draws: within 0.32 nats of the exact value over draw seeds 0..9 (sd ~0.15).
    assert abs(loo.elpd_loo - exact) < 0.6
    # p_loo = lppd - elpd_loo, with the exact lppd from the posterior predictive N(φ_iᵀμ, σ² + φ_iᵀΣφ_i):
    # 5.55 here; the 400-draw estimates lay in [5.14, 5.79] over seeds 0..9.
    m, c = blr["mean"].double(), blr["cov"].double()
    lppd = float(torch.distributions.Normal(phi @ m, (NOISE**2 + ((phi @ c) * phi).sum(1)).sqrt())
                 .log_prob(y.double()).sum())
    assert abs(loo.p_loo - (lppd - exact)) < 1.0


def test_netcdf_round_trip(blr, tmp_path):
    path = save_netcdf(blr["idata"], tmp_path / "new" / "dir" / "blr.nc")
    assert path.exists()
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(blr["idata"].groups())
    for group in blr["idata"].groups():
        for name, var in blr["idata"][group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, var.values)
    for attrs in (back.attrs, back.posterior.attrs):
        assert attrs["family"] == "laplace" and attrs["num_samples"] == S and json.loads(attrs["unlearning"]) == []


def test_same_seed_same_draws_and_other_seed_differs(blr):
    a = to_inference_data(blr["post"], num_samples=50, seed=7)
    b = to_inference_data(blr["post"], num_samples=50, seed=7)
    c = to_inference_data(blr["post"], num_samples=50, seed=8)
    for group in ("posterior", "log_likelihood", "posterior_predictive"):
        for name in a[group].data_vars:
            np.testing.assert_array_equal(a[group][name].values, b[group][name].values)
    assert not np.array_equal(a.posterior["w"].values, c.posterior["w"].values)


def test_bad_inputs_raise(blr):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        to_inference_data(blr["post"], num_samples=0)
    with pytest.raises(ValueError, match="include_data=True"):
        to_inference_data(blr["post"].replace(x=None, y=None))
    with pytest.raises(ValueError, match=r"x_new must have shape \[M, 3\]"):
        to_inference_data(blr["post"], num_samples=5, x_new=torch.zeros(3, 4))
    with pytest.raises(TypeError, match="inference.Posterior"):
        to_inference_data({"w": 1})


def test_summary_single_chain_has_no_rhat(blr):
    df = summary(blr["idata"])
    assert list(df.index) == ["w[0]", "w[1]", "w[2]", "b"] and "r_hat" not in df.columns
    np.testing.assert_allclose(df["mean"].values, blr["mean"].numpy(), atol=0.005)


def test_nuts_keeps_chains(blr, nuts_post):
    idata = to_inference_data(nuts_post, num_samples=7)  # num_samples is ignored for uniform empirical draws
    assert idata.posterior["w"].shape == (2, 100, D) and idata.attrs["num_chains"] == 2
    # chains are stored one after another in posterior.samples
    sites = nuts_post.layout.unpack(nuts_post.samples)
    np.testing.assert_array_equal(idata.posterior["w"].values[1, 5], sites["w"][105].numpy())
    np.testing.assert_array_equal(idata.posterior["b"].values[0, 99], sites["b"][99].numpy())
    df = summary(idata)
    assert "r_hat" in df.columns and df["r_hat"].max() < 1.1
    # 200 correlated draws, bulk ESS >= ~100: s.e. of a mean <= sd/10; 5 s.e. tolerance.
    sd = blr["cov"].diagonal().sqrt().numpy()
    np.testing.assert_array_less(np.abs(df["mean"].values - blr["mean"].numpy()), 5 * sd / 10 + 1e-3)
    assert np.isfinite(az.loo(idata).elpd_loo)


def test_weighted_draws_are_resampled_and_history_recorded(blr):
    xf, yf = blr["x"][:5], blr["y"][:5]
    res = unlearn(blr["post"], xf, yf, method="psis", num_samples=1000, seed=2)
    post = res.posterior
    assert post.log_weights is not None
    idata = to_inference_data(post, num_samples=300, seed=1)
    assert idata.posterior["w"].shape == (1, 300, D) and "resampled" in idata.attrs["draws"]
    assert idata.log_likelihood["obs"].shape == (1, 300, N - 5)  # on the retained data D_r
    # the history records each request with the result's verdict (unlearning.verdict) and divergence flag
    assert json.loads(idata.attrs["unlearning"]) == [{"method": "psis", "num_forgotten": 5,
                                                      "verdict": res.verdict["verdict"], "diverged": False}]
    assert res.verdict["verdict"] in {"ok", "uncertain", "failed"}
    # every resampled draw is one of the weighted draws
    w_all = post.layout.unpack(post.samples)["w"].numpy()
    assert all((np.abs(w_all - w).max(1) == 0).any() for w in idata.posterior["w"].values[0])
    # k̂ reuses the psis method: same seed and draws -> the same number as the unlearning report
    assert psis_khat(blr["post"], xf, yf, num_samples=1000, seed=2) == pytest.approx(res.diagnostics["pareto_k"])
