"""Tests for ``inference``: fit/predict/Posterior against closed forms and hand computations.

Every tolerance below was set from measured values (quoted in the comments) with a margin, so
that a wrong formula fails while Monte-Carlo / optimisation noise does not.  Expensive
posteriors are fitted once per module (module-scoped fixtures) and shared between tests.
All fits use fixed seeds, so every number here is deterministic on a given platform.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import HalfNormal, MultivariateNormal, Normal, kl_divergence

from bayes_unlearn.inference import (
    BoundModel,
    Diag,
    Empirical,
    Full,
    LowRank,
    Precision,
    structure_class,
    ModelConventionError,
    NotPositiveDefiniteError,
    Posterior,
    fit,
    log_likelihood,
    predict,
)
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.models.linear import BayesianLinearRegression
from bayes_unlearn.models.mlp import BayesianMLP


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The per-op work here is tiny (d <= ~1200, N <= 300); with 2 intra-op threads on a busy
    # 2-core machine torch spends most of its time synchronising threads (measured: an MLP SVI
    # step 75 ms with 2 threads vs 10 ms with 1).  Restored after the module.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gaussian_kl(mean_q, cov_q, mean_p, cov_p) -> float:
    """KL(N(mean_q, cov_q) || N(mean_p, cov_p)) in float64."""
    q = MultivariateNormal(mean_q.double(), cov_q.double())
    p = MultivariateNormal(mean_p.double(), cov_p.double())
    return float(kl_divergence(q, p))


# ============================================================================================
# 1. conjugate Bayesian linear regression: every method against the closed form
# ============================================================================================
@pytest.fixture(scope="module")
def blr(blr_problem):
    """BLR with N=100, D=3, σ=0.1, s=1 (tests/conftest.py) and its exact posterior (mean, cov, precision)."""
    p = blr_problem
    mean, cov = p["model"].exact_posterior(p["X"], p["y"])
    return {"model": p["model"], "x": p["X"], "y": p["y"], "mean": mean, "cov": cov, "prec": torch.linalg.inv(cov)}


@pytest.fixture(scope="module")
def blr_fullrank(blr):
    return fit(blr["model"], blr["x"], blr["y"], "fullrank", seed=0, progress=False)


@pytest.fixture(scope="module")
def blr_laplace(blr):
    return fit(blr["model"], blr["x"], blr["y"], "laplace", seed=0, progress=False)


@pytest.fixture(scope="module")
def blr_nuts(blr):
    return fit(blr["model"], blr["x"], blr["y"], "nuts", seed=0, progress=False,
               num_samples=300, warmup_steps=300, num_chains=2)


def test_fullrank_svi_matches_exact_posterior(blr, blr_fullrank):
    q = blr_fullrank
    assert q.family == "fullrank" and q.structure == "full"
    kl = gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"])
    # Measured KL(q || exact) = 0.0040 / 0.0056 / 0.0037 for seeds 0 / 1 / 2 with the default
    # options (~3800 steps).  0.03 leaves a 5x margin over the worst seed, yet a guide that
    # stopped early (window 100, 6 plateaus: KL 0.08-0.13) fails.
    assert kl < 0.03, kl
    # The design is nearly orthogonal, so even the exact marginals without correlations have
    # KL 0.022 < 0.03: check the correlations separately.  Exact |ρ| reach 0.125; the fit
    # reproduces them within 0.039 / 0.023 / 0.021 (seeds 0/1/2); a diagonal guide is off by 0.125.
    def corr(c):
        sd = c.diagonal().sqrt()
        return c / torch.outer(sd, sd)
    err = (corr(q.covariance().double()) - corr(blr["cov"])).abs().max()
    assert err < 0.08, err
    assert q.meta["fit"] == {"method": "fullrank", "seed": 0, "options": {}}


def test_laplace_is_exact_for_a_gaussian_posterior(blr, blr_laplace):
    q = blr_laplace
    assert q.family == "laplace" and q.structure == "precision"
    # The log joint is quadratic, so N(θ*, Λ⁻¹) is the posterior itself; measured KL ≈ 9e-16
    # (the mode polished by float64 L-BFGS, the Hessian exact).  1e-6 allows for a slightly
    # unconverged mode (KL = ½ δᵀΛδ ⇒ δ ≈ 1e-3 posterior std), nothing more.
    kl = gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"])
    assert kl < 1e-6, kl
    # Λ is exactly I/s² + ΦᵀΦ/σ² (no data dependence beyond Φ); float64 throughout.
    torch.testing.assert_close(q.precision.double(), blr["prec"], rtol=1e-8, atol=1e-6)
    curv = q.meta["curvature"]
    assert curv["repair"] is None and curv["num_nonpositive"] == 0
    assert curv["min_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(blr["prec"]).min()), rel=1e-6)


def test_nuts_matches_exact_posterior(blr, blr_nuts):
    q = blr_nuts
    assert q.structure == "empirical" and q.samples.shape == (600, 4)
    diag = q.meta["diagnostics"]
    # Measured max R-hat 1.013 / 1.008 / 1.008 (seeds 0/1/2) for 2 x 300 draws.
    assert diag["max_rhat"] < 1.05, diag
    ess = diag["min_ess_bulk"]  # measured 600-650
    assert ess > 100, diag
    # Monte-Carlo standard error of each mean, using the smallest ESS (conservative):
    # measured |error| / SE <= 1.8 (seed 0), <= 2.1 over seeds 0-2.  4 SE: a false failure has
    # probability ~1e-4 per coordinate, while a posterior off by 0.2 std fails.
    se = (blr["cov"].diagonal() / ess).sqrt()
    z = (q.loc.double() - blr["mean"]) / se
    assert z.abs().max() < 4.0, z
    # KL of the moment-matched Gaussian: measured 0.010 / 0.017 / 0.018 (seeds 0/1/2); the
    # sampling bias alone is ≈ (d(d+1)/2 + d)/(2·ESS) ≈ 0.012.  0.05 is ~3x the worst seed.
    kl = gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"])
    assert kl < 0.05, kl


@pytest.fixture(scope="module")
def correlated_blr():
    """BLR whose first two features are strongly correlated (Σ_ii·Λ_ii ≈ 5.7 for w0, w1)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(100, 1, generator=g)
    x = torch.cat([z + 0.3 * torch.randn(100, 1, generator=g), z + 0.3 * torch.randn(100, 1, generator=g),
                   torch.randn(100, 1, generator=g)], dim=1)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(100, generator=g)
    model = BayesianLinearRegression(3, prior_scale=1.0, noise=0.1)
    mean, cov = model.exact_posterior(x, y)
    q = fit(model, x, y, "meanfield", seed=0, progress=False)
    return {"mean": mean, "cov": cov, "prec": torch.linalg.inv(cov), "q": q}


def test_meanfield_underestimates_marginal_variances(correlated_blr):
    c = correlated_blr
    q, mean, cov, prec = c["q"], c["mean"], c["cov"], c["prec"]
    assert q.structure == "diag"
    exact_var, var = cov.diagonal(), q.variance().double()
    # Design check: the correlated pair makes mean-field visibly different from the marginals.
    assert (exact_var * prec.diagonal())[:2].min() > 4.0  # measured 5.74, 5.71
    # Mean: KL(q||p) minimisation with a factorised q recovers the exact mean.  Measured
    # |error| <= 0.115 exact posterior std (seeds 0/1, on this and the uncorrelated data).
    err = (q.loc.double() - mean) / exact_var.sqrt()
    assert err.abs().max() < 0.5, err
    # Variances: theory gives 1/Λ_ii <= Σ_ii.  Measured var/Σ_ii = 0.168, 0.176, 1.009, 0.988;
    # 1.1 absorbs the ~5% SVI noise on the uncorrelated coordinates.
    assert (var <= 1.1 * exact_var).all(), var / exact_var
    # ... and well below the marginals where the correlation is strong (theory 1/5.7 = 0.175):
    assert (var[:2] / exact_var[:2]).max() < 0.5, var / exact_var
    # ... while matching the mean-field optimum 1/Λ_ii: measured var·Λ_ii = 0.966, 1.008,
    # 1.024, 1.032 (seed 0), within [0.95, 1.10] over seeds and option sets.
    ratio = var * prec.diagonal()
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio


def test_lowrank_runs_and_is_close(blr):
    q = fit(blr["model"], blr["x"], blr["y"], "lowrank", seed=0, progress=False, rank=2,
            num_steps=1500, window=100, max_plateaus=6)
    assert q.structure == "lowrank" and q.cov_factor.shape == (4, 2) and q.cov_diag.shape == (4,)
    kl = gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"])
    # A short run (≤1500 steps, ~6 s): measured KL 0.17 / 0.20 / 0.07 for seeds 0/1/2 (600 steps
    # gave 2.5-4.5, so the bound does detect an unconverged or broken guide).
    assert math.isfinite(kl) and kl < 1.0, kl


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fullrank_and_nuts_other_seeds(blr, seed):
    # The default-run tests use seed 0; these check that the tolerances are not tuned to it.
    # Measured: fullrank KL 0.0056 / 0.0037, NUTS KL 0.017 / 0.018, R-hat 1.008 / 1.008.
    args = (blr["model"], blr["x"], blr["y"])
    q = fit(*args, "fullrank", seed=seed, progress=False)
    assert gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"]) < 0.03
    q = fit(*args, "nuts", seed=seed, progress=False, num_samples=300, warmup_steps=300, num_chains=2)
    assert q.meta["diagnostics"]["max_rhat"] < 1.05
    assert gaussian_kl(q.loc, q.covariance(), blr["mean"], blr["cov"]) < 0.05


# ============================================================================================
# 2. Bayesian MLP on synthetic 1-D data: fit quality, epistemic growth, exact-Hessian handling
# ============================================================================================
# A shortened MAP (500 SVI steps at lr 0.03, then 500 float64 L-BFGS iterations): ~4.5 s, and
# a better mode than the default 3000 SVI steps + 200 L-BFGS (~14 s) on this problem.
_MLP_MAP = dict(num_steps=500, lr=0.03, lbfgs_steps=500)


@pytest.fixture(scope="module")
def mlp_data():
    data = synthetic_1d(n=300)
    model = BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)
    return model, data


@pytest.fixture(scope="module")
def mlp_ggn_diag(mlp_data):
    model, data = mlp_data
    return fit(model, data.x, data.y, "laplace", seed=0, progress=False, curvature="ggn", structure="diag",
               **_MLP_MAP)


def test_mlp_fits_and_epistemic_std_grows_away_from_data(mlp_data, mlp_ggn_diag):
    model, data = mlp_data
    q = mlp_ggn_diag
    assert q.structure == "diag" and q.meta["curvature"]["curvature"] == "ggn"
    pred = predict(q, data.x_test, num_samples=200, seed=0)
    rmse = float((pred.mean - data.y_test).pow(2).mean().sqrt())
    # The noise is σ = 0.1, so 0.1 is the best possible RMSE; measured 0.108 (these options)
    # and 0.112 (defaults).  A MAP not polished by L-BFGS gave 0.153; the best linear fit ~0.7.
    assert rmse < 0.14, rmse
    # Epistemic std outside the data (x = ±8; the data lie in [-4, 4]) vs inside the central
    # cluster: measured 0.242 / 0.256 vs 0.152 (ratio ≥ 1.59; default options: 0.25 vs 0.16).
    # 200 draws give a ~5% relative Monte-Carlo error on each std, so 1.2 is a safe lower bound.
    far = predict(q, torch.tensor([[-8.0], [8.0]]), num_samples=200, seed=0).epistemic_std
    centre = predict(q, torch.tensor([[0.0]]), num_samples=200, seed=0).epistemic_std
    assert (far > 1.2 * centre).all(), (far, centre)
    # The predictive std combines both parts: std² = epistemic² + σ².
    torch.testing.assert_close(pred.std**2, pred.epistemic_std**2 + 0.1**2, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_mlp_default_laplace_options(mlp_data):
    # The default MAP schedule (3000 SVI steps + 200 L-BFGS, ~14 s): measured test RMSE 0.112,
    # epistemic std 0.252 / 0.253 at x = ∓8 vs 0.163 at x = 0.
    model, data = mlp_data
    q = fit(model, data.x, data.y, "laplace", seed=0, progress=False, curvature="ggn", structure="diag")
    rmse = float((predict(q, data.x_test, seed=0).mean - data.y_test).pow(2).mean().sqrt())
    assert rmse < 0.14, rmse
    epi = predict(q, torch.tensor([[-8.0], [0.0], [8.0]]), seed=0).epistemic_std
    assert epi[0] > 1.2 * epi[1] and epi[2] > 1.2 * epi[1], epi


def test_mlp_exact_hessian_is_reported_or_repaired(mlp_data, mlp_ggn_diag):
    model, data = mlp_data
    # Re-use the mode of the GGN fit instead of searching for it again (saves ~2 x 5 s): a warm
    # start (init=) with two SVI steps of negligible size and no L-BFGS keeps θ* in place, so
    # both calls below take the exact Hessian at the same point.
    opts = dict(init=mlp_ggn_diag, num_steps=2, window=2, lr=1e-9, lbfgs_steps=0, curvature="exact")
    repaired = fit(model, data.x, data.y, "laplace", seed=0, progress=False, repair="clip", **opts)
    # θ* survives the float32 round trip of the warm start (relative rounding ~6e-8).
    torch.testing.assert_close(repaired.loc.double(), mlp_ggn_diag.loc.double(), rtol=1e-5, atol=1e-6)
    facts = repaired.meta["curvature"]
    assert facts["curvature"] == "exact" and facts["structure"] == "full"
    # Measured at this mode: min eigenvalue -51.5, 56 of 1153 eigenvalues <= 0 (at other modes of this and
    # a (16, 16) net: -62 to -0.6, 3 to 57 of them): the exact Hessian of a BNN's log joint at its MAP is
    # indefinite, which is the pitfall this test is about; the unrepaired fit must refuse it.
    assert facts["num_nonpositive"] > 0 and facts["min_eigenvalue"] < 0, facts
    with pytest.raises(NotPositiveDefiniteError, match="smallest eigenvalue"):
        fit(model, data.x, data.y, "laplace", seed=0, progress=False, **opts)
    rep = facts["repair"]
    assert rep["kind"] == "clip" and rep["num_clipped"] >= facts["num_nonpositive"]
    assert any("repaired" in w for w in repaired.meta["warnings"])
    # After clipping every eigenvalue is at least the floor (float64 eigh round-off ~1e-10·λmax).
    ev = torch.linalg.eigvalsh(repaired.precision.double())
    assert float(ev.min()) >= rep["floor"] * (1 - 1e-6) - 1e-9 * float(ev.max()), (ev.min(), rep)
    # The returned precision factorises and gives finite variances.
    assert torch.linalg.cholesky_ex(repaired.precision)[1] == 0
    assert torch.isfinite(repaired.variance()).all()


# ============================================================================================
# 3. a user model written in plain Pyro (constrained latent, observed site not named "obs")
# ============================================================================================
def quadratic_model(x, y=None):
    """y ~ N(c0 + c1 x + c2 x², σ²), c ~ N(0, 2² I), σ ~ HalfNormal(1)."""
    coef = pyro.sample("coef", dist.Normal(torch.zeros(3, dtype=x.dtype), 2.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=x.dtype)))
    t = x[..., 0]
    mean = coef[0] + coef[1] * t + coef[2] * t**2
    with pyro.plate("data", x.shape[0]):
        pyro.sample("target", dist.Normal(mean, sigma), obs=y)
    return mean


_QUAD_TRUE = torch.tensor([0.5, -1.0, 0.8])
_QUAD_SIGMA = 0.3


def _quad_mean(x):
    t = x[..., 0]
    return _QUAD_TRUE[0] + _QUAD_TRUE[1] * t + _QUAD_TRUE[2] * t**2


@pytest.fixture(scope="module")
def quad():
    g = torch.Generator().manual_seed(2)
    x = 4 * torch.rand(200, 1, generator=g) - 2
    y = _quad_mean(x) + _QUAD_SIGMA * torch.randn(200, generator=g)
    # A short SVI phase suffices: the float64 L-BFGS polish then finds the mode (grad ~1e-5).
    laplace = fit(quadratic_model, x, y, "laplace", seed=0, progress=False, num_steps=500, lr=0.03)
    meanfield = fit(quadratic_model, x, y, "meanfield", seed=0, progress=False,
                    num_steps=2000, window=100, max_plateaus=5)
    return {"x": x, "y": y, "laplace": laplace, "meanfield": meanfield}


def test_user_model_layout_and_laplace_mode(quad):
    q = quad["laplace"]
    assert q.layout.names == ["coef", "sigma"] and q.dim == 4
    bound = q.bound_model()
    assert bound.obs_name == "target"
    # The mode is a stationary point of the log joint (float64 L-BFGS; measured |∇| 1.5e-5 to
    # 3e-5, against N/σ² · 0.01 ≈ 27 for a mode whose intercept is off by 0.01).
    assert q.meta["report"]["grad_norm_at_map"] < 1e-3
    sites = q.layout.unpack(q.loc)
    sigma = float(sites["sigma"])
    # σ is the positive site: θ holds log σ, unpacked through exp.
    assert sigma == pytest.approx(math.exp(float(q.loc[3])), rel=1e-12)
    # Given σ, the coefficients at the joint mode are the ridge solution (Λ = ΦᵀΦ/σ² + I/4):
    phi = torch.stack([torch.ones(200), quad["x"][:, 0], quad["x"][:, 0] ** 2], 1).double()
    lam = phi.T @ phi / sigma**2 + torch.eye(3, dtype=torch.float64) / 4
    coef = torch.linalg.solve(lam, phi.T @ quad["y"].double() / sigma**2)
    torch.testing.assert_close(sites["coef"].double(), coef, rtol=1e-5, atol=1e-6)
    # σ MAP near the truth 0.3: its sampling std is 0.3/√400 = 0.015; measured 0.271; allow ±0.06.
    assert abs(sigma - _QUAD_SIGMA) < 0.06, sigma


def test_user_model_meanfield_agrees_with_laplace(quad):
    lap, mf = quad["laplace"], quad["meanfield"]
    assert mf.structure == "diag" and mf.layout.names == ["coef", "sigma"]
    # The posterior is nearly Gaussian (N=200), so the SVI mean must lie near the mode.  Measured
    # |difference| / Laplace std = 0.06, 0.05, 0.33, 0.09 (coef, log σ): the SVI iterate still
    # fluctuates by a few tenths of a std at the final step size (cf. 0.1-0.4 on the BLR).  0.75
    # catches a mis-ordered or mis-transformed θ (e.g. σ instead of log σ is off by ~10 std).
    std = lap.variance().sqrt()
    z = (mf.loc.double() - lap.loc.double()) / std
    assert z.abs().max() < 0.75, z
    # Mean-field variances are at most the Laplace marginals (up to SVI noise), as for the BLR:
    # measured ratios 0.48, 1.01, 0.52, 0.99 (intercept and x² are correlated, hence the 0.5s).
    assert (mf.variance().double() < 1.2 * lap.variance()).all(), mf.variance() / lap.variance()


def test_user_model_log_likelihood_and_prior_by_hand(quad):
    x, y = quad["x"], quad["y"]
    q = quad["meanfield"]
    bound = BoundModel(quadratic_model, x, y)
    theta = q.sample(5, seed=3)  # [5, 4]
    ll = bound.log_likelihood(theta, x, y)
    assert ll.shape == (5, 200)
    coef, sigma = theta[:, :3], theta[:, 3].exp()
    t = x[:, 0]
    mean = coef[:, :1] + coef[:, 1:2] * t + coef[:, 2:3] * t**2
    by_hand = Normal(mean, sigma[:, None]).log_prob(y)
    # float32 throughout; values are O(1), so 1e-4 is a few hundred ulps.
    torch.testing.assert_close(ll, by_hand, rtol=1e-5, atol=1e-4)
    # Single θ gives [N]; the log prior includes the log-Jacobian log σ of σ = exp(u).
    torch.testing.assert_close(bound.log_likelihood(theta[0], x, y), by_hand[0], rtol=1e-5, atol=1e-4)
    lp = bound.log_prior(theta[0], x)
    lp_hand = Normal(0.0, 2.0).log_prob(coef[0]).sum() + HalfNormal(1.0).log_prob(sigma[0]) + theta[0, 3]
    torch.testing.assert_close(lp, lp_hand, rtol=1e-5, atol=1e-5)
    lj = bound.log_joint(theta[0], x, y)
    torch.testing.assert_close(lj, lp_hand + by_hand[0].sum(), rtol=1e-5, atol=1e-2)
    # The package-level helper draws from the posterior and evaluates the same quantity.
    assert log_likelihood(q, x, y, num_samples=7, seed=0).shape == (7, 200)


def test_user_model_predict(quad):
    q = quad["laplace"]
    xs = torch.linspace(-2, 2, 9)[:, None]
    pred = predict(q, xs, num_samples=300, seed=0)
    sigma = float(q.layout.unpack(q.loc)["sigma"])
    # The predictive mean is within 4 epistemic std (+0.02 for Monte-Carlo error of the mean
    # with 300 draws) of the true function; the epistemic std itself is ~0.03-0.06 here.
    err = (pred.mean - _quad_mean(xs)).abs()
    assert (err < 4 * pred.epistemic_std + 0.02).all(), (err, pred.epistemic_std)
    # The aleatoric part is E[σ²] under q, close to σ_MAP² (posterior std of σ ~5%).
    alea = (pred.weights[:, None] * pred.variances).sum(0).sqrt()
    assert ((alea / sigma - 1).abs() < 0.1).all(), alea
    assert (pred.std >= pred.epistemic_std).all() and (pred.std >= 0.9 * sigma).all()
    # Predictions from a seed are deterministic.
    assert torch.equal(pred.mean, predict(q, xs, num_samples=300, seed=0).mean)


def _local_latent_model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(w * x[:, 0] + z, 0.1), obs=y)


def _two_observed_model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs_a", dist.Normal(w * x[:, 0], 0.1), obs=y)
        pyro.sample("obs_b", dist.Normal(w * x[:, 0], 0.2), obs=y)


def _no_plate_model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    pyro.sample("obs", dist.Normal(w * x[:, 0], 0.1).to_event(1), obs=y)


def _no_latent_model(x, y=None):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x[:, 0], 0.1), obs=y)


@pytest.mark.parametrize("model, match", [
    (_local_latent_model, "latent site 'z' lies inside the 'data' plate"),
    (_two_observed_model, "expected exactly one observed site"),
    (_no_plate_model, "expected exactly one observed site"),
    (_no_latent_model, "no latent sites"),
])
def test_model_convention_violations_raise(model, match):
    x, y = torch.linspace(-1, 1, 20)[:, None], torch.linspace(0, 1, 20)
    with pytest.raises(ModelConventionError, match=match):
        fit(model, x, y, "meanfield", progress=False, num_steps=5)
    with pytest.raises(ModelConventionError, match=match):
        BoundModel(model, x, y)


# ============================================================================================
# 4. bad input
# ============================================================================================
_BLR3 = BayesianLinearRegression(3)


def _xy(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randn(n, generator=g)


def _with(t, idx, value):
    t = t.clone()
    t[idx] = value
    return t


@pytest.mark.parametrize("x, y, method, options, match", [
    (_with(_xy()[0], (3, 1), float("nan")), _xy()[1], "meanfield", {}, r"x contains NaN or inf at row 3"),
    (_with(_xy()[0], (0, 0), float("inf")), _xy()[1], "laplace", {}, r"x contains NaN or inf at row 0"),
    (_xy()[0], _with(_xy()[1], 7, float("nan")), "fullrank", {}, r"y contains NaN or inf at row 7"),
    (_xy()[0], _with(_xy()[1], 2, -float("inf")), "nuts", {}, r"y contains NaN or inf at row 2"),
    (_xy()[0], _xy()[1][:9], "meanfield", {}, r"x has 10 rows but y has 9"),
    (torch.zeros(10, 3, 1), _xy()[1], "meanfield", {}, r"x must be 1-D or 2-D, got 3-D"),
    (torch.zeros(0, 3), torch.zeros(0), "meanfield", {}, r"empty data: x has 0 rows"),
    (_xy()[0], _xy()[1], "variational", {}, r"unknown inference method 'variational'"),
    (_xy()[0], _xy()[1], "meanfield", {"curvature": "ggn"}, r"unknown option\(s\) \['curvature'\] for method 'meanfield'"),
    (_xy()[0], _xy()[1], "laplace", {"num_samples": 5}, r"unknown option\(s\) \['num_samples'\] for method 'laplace'"),
    (_xy()[0], None, "meanfield", {}, r"y is required"),
])
def test_bad_input_raises_value_error(x, y, method, options, match):
    with pytest.raises(ValueError, match=match):
        fit(_BLR3, x, y, method, progress=False, **options)


def test_bad_laplace_options_and_prediction_inputs(blr_laplace):
    x, y = _xy()
    with pytest.raises(ValueError, match="option curvature must be one of 'exact', 'ggn', got 'fisher'"):
        fit(_BLR3, x, y, "laplace", progress=False, num_steps=10, curvature="fisher")
    with pytest.raises(ValueError, match="option repair must be one of None, 'clip', 'damp', got 'fix'"):
        fit(_BLR3, x, y, "laplace", progress=False, num_steps=10, repair="fix")
    with pytest.raises(ValueError, match=r"x contains NaN or inf at row 1"):
        predict(blr_laplace, _with(x, (1, 2), float("nan")))
    with pytest.raises(ValueError, match="num_samples must be positive"):
        blr_laplace.sample(0)


# ============================================================================================
# 5. save / load round trip
# ============================================================================================
_ALL_TENSORS = ("loc", "scale", "cov_factor", "cov_diag", "scale_tril", "precision", "samples",
                "log_weights", "active", "x", "y")


@pytest.mark.parametrize("which", ["blr_fullrank", "blr_laplace", "blr_nuts"])
def test_save_load_round_trip(which, request, tmp_path):
    q = request.getfixturevalue(which)
    path = tmp_path / f"{which}.safetensors"
    q.save(path)
    r = Posterior.load(path)  # no model=: the BLR is rebuilt from the file
    for name in _ALL_TENSORS:
        a, b = getattr(q, name), getattr(r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (r.structure, r.family) == (q.structure, q.family)
    assert r.layout.to_json() == q.layout.to_json() and r.layout.names == q.layout.names
    assert r.meta == dict(q.meta)
    assert isinstance(r.model, BayesianLinearRegression) and r.model is not q.model
    assert r.model.config() == q.model.config()
    xt = torch.linspace(-1, 1, 12).reshape(4, 3)
    p, pr = predict(q, xt, num_samples=50, seed=1), predict(r, xt, num_samples=50, seed=1)
    assert torch.equal(p.mean, pr.mean) and torch.equal(p.std, pr.std)


def _lognormal_noise_model(x, y=None):
    """The quadratic model with σ ~ LogNormal(0, 1): support ``positive``, which files can name."""
    coef = pyro.sample("coef", dist.Normal(torch.zeros(3, dtype=x.dtype), 2.0).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    t = x[..., 0]
    with pyro.plate("data", x.shape[0]):
        pyro.sample("target", dist.Normal(coef[0] + coef[1] * t + coef[2] * t**2, sigma), obs=y)


def _check_user_model_round_trip(q, model, path):
    q.save(path)
    r = Posterior.load(path)  # a user model cannot be rebuilt from the file
    assert r.model is None and torch.equal(r.loc, q.loc) and torch.equal(r.x, q.x)
    with pytest.raises(ValueError, match="pass model= to Posterior.load"):
        predict(r, torch.zeros(2, 1))
    r = Posterior.load(path, model=model)
    assert r.layout.to_json() == q.layout.to_json()
    xs = torch.linspace(-1, 1, 5)[:, None]
    assert torch.equal(predict(r, xs, num_samples=20).mean, predict(q, xs, num_samples=20).mean)


def test_save_load_user_model_needs_model_argument(quad, tmp_path):
    q = fit(_lognormal_noise_model, quad["x"], quad["y"], "laplace", seed=0, progress=False,
            num_steps=300, lbfgs_steps=50)
    _check_user_model_round_trip(q, _lognormal_noise_model, tmp_path / "quad_lognormal.safetensors")


def test_save_load_halfnormal_site(quad, tmp_path):
    _check_user_model_round_trip(quad["laplace"], quadratic_model, tmp_path / "quad.safetensors")


def test_load_rejects_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a bayes-unlearn posterior file"):
        Posterior.load(path)


# ============================================================================================
# 6. determinism and the global RNG
# ============================================================================================
_QUICK = {"meanfield": dict(num_steps=200, window=50),
          "laplace": dict(num_steps=200, window=50, lbfgs_steps=20),
          "nuts": dict(num_samples=15, warmup_steps=15, num_chains=1)}


@pytest.mark.parametrize("method", sorted(_QUICK))
def test_fit_is_deterministic(blr, method):
    args = (blr["model"], blr["x"], blr["y"], method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        a = fit(*args, seed=5, progress=False, **_QUICK[method])
        torch.manual_seed(456)  # the global RNG must not matter
        b = fit(*args, seed=5, progress=False, **_QUICK[method])
    assert torch.equal(a.loc, b.loc)
    assert torch.equal(a.covariance(), b.covariance())
    if method != "laplace":
        # A different seed changes the SVI noise / the Markov chain.  (Laplace converges to the
        # same mode from any seed, so its loc may legitimately agree across seeds.)
        c = fit(*args, seed=6, progress=False, **_QUICK[method])
        assert not torch.equal(a.loc, c.loc)
    assert a.meta["fit"]["seed"] == 5
    # Sampling from the posterior is deterministic under a seed and leaves the global RNG alone.
    state = torch.get_rng_state()
    s1, s2 = a.sample(10, seed=1), a.sample(10, seed=1)
    assert torch.equal(s1, s2) and not torch.equal(s1, a.sample(10, seed=2))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("method", sorted(_QUICK))
def test_fit_and_predict_leave_global_rng_alone(blr, method):
    state = torch.get_rng_state()
    q = fit(blr["model"], blr["x"], blr["y"], method, seed=5, progress=False, **_QUICK[method])
    assert torch.equal(torch.get_rng_state(), state), "fit changed the global torch RNG state"
    predict(q, blr["x"][:5], num_samples=5)
    assert torch.equal(torch.get_rng_state(), state), "predict changed the global torch RNG state"


# ============================================================================================
# 7. Posterior structures
# ============================================================================================
@pytest.fixture(scope="module")
def layout():
    x, y = _xy(8)
    return BoundModel(BayesianLinearRegression(3), x, y).layout


def _gaussian_posteriors(layout, loc, cov, cov_factor=None, cov_diag=None, diagonal=False):
    common = dict(loc=loc, layout=layout, family="test")
    out = {
        "full": Posterior(cov=Full(torch.linalg.cholesky(cov)), **common),
        "precision": Posterior(cov=Precision(torch.linalg.inv(cov)), **common),
    }
    if cov_factor is not None:
        out["lowrank"] = Posterior(cov=LowRank(cov_factor, cov_diag), **common)
    if diagonal:
        out["diag"] = Posterior(cov=Diag(cov.diagonal().sqrt()), **common)
    return out


def _check_structures(posteriors, loc, cov):
    ref = MultivariateNormal(loc, cov)
    theta = loc + torch.randn(6, 4, generator=torch.Generator().manual_seed(9), dtype=loc.dtype)
    n = 20000
    for name, q in posteriors.items():
        assert q.dim == 4
        torch.testing.assert_close(q.covariance(), cov, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(q.variance(), cov.diagonal(), rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(q.log_prob(theta), ref.log_prob(theta), rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(q.to_distribution().log_prob(theta), ref.log_prob(theta),
                                   rtol=1e-10, atol=1e-10, msg=name)
        draws = q.sample(n, seed=0)
        assert draws.shape == (n, 4)
        # Sample moments of 20000 draws: the mean's SE is sqrt(Σ_ii/n); a covariance entry's SE
        # is sqrt((Σ_ii Σ_jj + Σ_ij²)/n).  5 SE: a false failure is ~1e-6 per entry.
        se_mean = (cov.diagonal() / n).sqrt()
        assert ((draws.mean(0) - loc).abs() < 5 * se_mean).all(), name
        sd = cov.diagonal().sqrt()
        se_cov = ((torch.outer(sd, sd) ** 2 + cov**2) / n).sqrt()
        assert ((torch.cov(draws.T) - cov).abs() < 5 * se_cov).all(), name
        # The empirical structure built from these draws has exactly their (1/S) moments.
        e = Posterior(cov=Empirical(draws), loc=draws.mean(0), layout=q.layout, family="test")
        c = draws - draws.mean(0)
        torch.testing.assert_close(e.covariance(), c.T @ c / n, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(e.variance(), c.pow(2).mean(0), rtol=1e-9, atol=1e-12)


def test_gaussian_structures_agree(layout):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, generator=g, dtype=torch.float64)
    cov_factor = torch.randn(4, 2, generator=g, dtype=torch.float64)
    cov_diag = 0.1 + torch.rand(4, generator=g, dtype=torch.float64)
    cov = cov_factor @ cov_factor.T + torch.diag(cov_diag)
    _check_structures(_gaussian_posteriors(layout, loc, cov, cov_factor, cov_diag), loc, cov)


def test_diagonal_covariance_in_every_structure(layout):
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(4, generator=g, dtype=torch.float64)
    var = 0.2 + torch.rand(4, generator=g, dtype=torch.float64)
    cov = torch.diag(var)
    posts = _gaussian_posteriors(layout, loc, cov, torch.zeros(4, 1, dtype=torch.float64), var, diagonal=True)
    assert set(posts) == {"full", "precision", "lowrank", "diag"}
    _check_structures(posts, loc, cov)


def test_weighted_empirical_moments(layout):
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(50, 4, generator=g, dtype=torch.float64)
    log_w = torch.randn(50, generator=g, dtype=torch.float64)
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * samples).sum(0)
    q = Posterior(cov=Empirical(samples, log_weights=log_w), loc=mean, layout=layout, family="test")
    c = samples - mean
    torch.testing.assert_close(q.weights(), w)
    torch.testing.assert_close(q.covariance(), (w[:, None] * c).T @ c)
    torch.testing.assert_close(q.variance(), (w[:, None] * c**2).sum(0))
    with pytest.raises(ValueError, match="no density"):
        q.log_prob(samples[0])


def test_posterior_rejects_bad_fields(layout):
    loc = torch.zeros(4)
    with pytest.raises(ValueError, match="loc contains NaN or inf"):
        Posterior(loc=torch.tensor([0.0, float("nan"), 0.0, 0.0]), cov=Diag(torch.ones(4)),
                  layout=layout, family="test")
    with pytest.raises(ValueError, match="scale contains NaN or inf"):
        Posterior(loc=loc, cov=Diag(torch.tensor([1.0, float("inf"), 1.0, 1.0])), layout=layout, family="test")
    with pytest.raises(ValueError, match="precision contains NaN or inf"):
        Posterior(loc=loc, cov=Precision(torch.full((4, 4), float("nan"))), layout=layout, family="test")
    with pytest.raises(ValueError, match=r"loc must have shape \[4\], got \(3,\)"):
        Posterior(loc=torch.zeros(3), cov=Diag(torch.ones(3)), layout=layout, family="test")
    with pytest.raises(ValueError, match=r"loc must have shape \[4\], got \(1, 4\)"):
        Posterior(loc=torch.zeros(1, 4), cov=Diag(torch.ones(4)), layout=layout, family="test")
    with pytest.raises(ValueError, match="the covariance is over 3 coordinates but θ has 4"):
        Posterior(loc=loc, cov=Diag(torch.ones(3)), layout=layout, family="test")
    with pytest.raises(ValueError, match="unknown covariance structure 'banded'"):
        structure_class("banded")
    with pytest.raises(ValueError, match="a 'full' covariance needs 'scale_tril'"):
        Full.from_fields({"scale": torch.ones(4)})
    # A precision that is not positive definite is caught when it is used, with its eigenvalue.
    bad = Posterior(loc=loc, cov=Precision(torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0]))),
                    layout=layout, family="test")
    with pytest.raises(ValueError, match="smallest eigenvalue"):
        bad.covariance()


def test_posterior_is_immutable(blr_fullrank):
    q = blr_fullrank
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.loc = torch.zeros(4)
    r = q.replace(loc=q.loc + 1)
    assert torch.equal(r.loc, q.loc + 1) and not torch.equal(r.loc, q.loc)


def test_linearised_predictive_is_exact_for_linear_regression():
    """For a linear mean function the linearisation is exact: mean xᵀμ + b and variance
    x̃ᵀΣx̃ + σ² of the closed-form posterior predictive (float64 round-off only)."""
    from bayes_unlearn.models import BayesianLinearRegression
    from bayes_unlearn.inference import fit, predict

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(50, generator=g)
    model = BayesianLinearRegression(3, prior_scale=1.0, noise=0.1)
    post = fit(model, x, y, "laplace", progress=False)
    xt = torch.randn(7, 3, generator=g)
    pred = predict(post, xt, linearised=True)
    mean, cov = model.exact_posterior(x, y)
    X = torch.cat([xt, torch.ones(7, 1)], 1).double()  # [w, b] order of exact_posterior
    assert torch.allclose(pred.mean.double(), X @ mean.double(), atol=1e-6)
    assert torch.allclose(pred.std.double() ** 2, (X @ cov.double() @ X.T).diagonal() + 0.01, atol=1e-9)
    assert pred.means.shape == (1, 7) and torch.all(pred.epistemic_std < pred.std)


@pytest.mark.parametrize("method, opts", [
    ("laplace", {"curvature": "ggn", "structure": "full", "lbfgs_steps": 50}),
    ("laplace", {"curvature": "ggn", "structure": "last-layer", "lbfgs_steps": 50}),
    ("meanfield", {"num_steps": 50}), ("lowrank", {"num_steps": 50, "rank": 2}), ("fullrank", {"num_steps": 50}),
])
def test_linearised_variance_uses_each_structure_without_a_dense_covariance(method, opts):
    """diag(J Σ Jᵀ) computed from the structure (scale, cov_factor, scale_tril, Cholesky of Λ) equals
    the dense einsum: 1e-6 relative covers float32 guide parameters (measured ≤ 3e-8)."""
    data = synthetic_1d(n=40)
    post = fit(BayesianMLP(1, (6,), "tanh", prior_scale="fan_in", noise=0.1), data.x, data.y, method,
               progress=False, **opts)
    k = post.loc.numel() if post.active is None else len(post.active)
    J = torch.randn(5, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = torch.einsum("nd,de,ne->n", J, post.cov.dense().double(), J)
    assert torch.allclose(post.cov.jacobian_quadratic(J), dense, rtol=1e-6, atol=0)
