"""Every covariance structure (inference.covariance) against its own dense Σ, and the Laplace curvature function.

Each structure is built from one known Σ (k = 4, float64) and checked against torch's MultivariateNormal
and dense linear algebra on Σ: Σv, Σ⁻¹v, diag Σ, diag(JΣJᵀ), log N(δ; 0, Σ), sample moments, the Laplace
down-date (Λ − C)⁻¹, the file fields round trip and an active subset inside a Posterior.
"""

from __future__ import annotations

import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import MultivariateNormal

from bayes_unlearn.inference import BoundModel, Posterior
from bayes_unlearn.inference.covariance import (STRUCTURES, Diag, Empirical, Full, LowRank, NotPositiveDefiniteError,
                                                Precision, structure_class)
from bayes_unlearn.inference.laplace import curvature_term
from bayes_unlearn.inference.latent import LatentLayout, LatentSite
from bayes_unlearn.models.linear import BayesianLinearRegression

K = 4


def _sigma(diagonal: bool):
    g = torch.Generator().manual_seed(3)
    F = torch.randn(K, 2, generator=g, dtype=torch.float64)
    c = 0.2 + torch.rand(K, generator=g, dtype=torch.float64)
    if diagonal:
        F = torch.zeros(K, 2, dtype=torch.float64)
    return F, c, F @ F.T + torch.diag(c)


def _build(name: str, diagonal: bool = False):
    """(covariance of structure ``name``, its dense Σ)."""
    F, c, cov = _sigma(diagonal or name == "diag")
    make = {"diag": lambda: Diag(c.sqrt()), "lowrank": lambda: LowRank(F, c),
            "full": lambda: Full(torch.linalg.cholesky(cov)), "precision": lambda: Precision(torch.linalg.inv(cov))}
    return make[name](), cov


GAUSSIAN = ("diag", "lowrank", "full", "precision")


def test_every_structure_registers_itself():
    assert {"diag", "lowrank", "full", "precision", "empirical"} <= set(STRUCTURES)
    assert structure_class("lowrank") is LowRank and structure_class("empirical") is Empirical
    with pytest.raises(ValueError, match="unknown covariance structure 'banded'"):
        structure_class("banded")


@pytest.mark.parametrize("name", GAUSSIAN)
def test_linear_algebra_against_the_dense_covariance(name):
    cov, S = _build(name)
    g = torch.Generator().manual_seed(0)
    v, V = torch.randn(K, generator=g, dtype=torch.float64), torch.randn(K, 3, generator=g, dtype=torch.float64)
    J = torch.randn(5, K, generator=g, dtype=torch.float64)
    assert cov.size == K and cov.dtype == torch.float64
    torch.testing.assert_close(cov.dense(), S, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.matvec(v), S @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.matvec(V), S @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.precision_matvec(v), torch.linalg.solve(S, v), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cov.precision_matvec(V), torch.linalg.solve(S, V), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cov.variance(), S.diagonal(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.jacobian_quadratic(J), (J @ S @ J.T).diagonal(), rtol=1e-10, atol=1e-12)
    delta = torch.randn(6, K, generator=g, dtype=torch.float64)
    ref = MultivariateNormal(torch.zeros(K, dtype=torch.float64), S)
    torch.testing.assert_close(cov.log_prob(delta), ref.log_prob(delta), rtol=1e-10, atol=1e-10)
    loc = torch.arange(K, dtype=torch.float64)
    torch.testing.assert_close(cov.to_distribution(loc).log_prob(loc + delta), ref.log_prob(delta),
                               rtol=1e-10, atol=1e-10)
    A = cov.scale_factor()
    if A is not None:  # Σ = A Aᵀ (A a vector means diag(A))
        A = torch.diag(A) if A.dim() == 1 else A
        torch.testing.assert_close(A @ A.T, S, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", GAUSSIAN)
def test_sample_moments_and_generator(name):
    cov, S = _build(name)
    n = 20000
    draws = cov.sample(n, torch.Generator().manual_seed(0))
    assert draws.shape == (n, K)
    assert torch.equal(draws, cov.sample(n, torch.Generator().manual_seed(0)))
    # mean SE sqrt(Σ_ii/n), covariance-entry SE sqrt((Σ_ii Σ_jj + Σ_ij²)/n): 5 SE
    assert (draws.mean(0).abs() < 5 * (S.diagonal() / n).sqrt()).all()
    sd = S.diagonal().sqrt()
    assert ((torch.cov(draws.T) - S).abs() < 5 * ((torch.outer(sd, sd) ** 2 + S**2) / n).sqrt()).all()


@pytest.mark.parametrize("name", GAUSSIAN)
def test_fields_round_trip_and_dtype(name):
    cov, S = _build(name)
    active = torch.tensor([0, 2, 5, 7])
    back = type(cov).from_fields(cov.fields(), active=active)
    assert back.fields().keys() == cov.fields().keys() == set(type(cov).tensor_fields)
    assert all(torch.equal(back.fields()[k], cov.fields()[k]) for k in cov.fields())
    assert torch.equal(back.active, active) and cov.active is None
    single = cov.to(torch.float32)
    assert single.dtype == torch.float32 and type(single) is type(cov)
    torch.testing.assert_close(single.dense().double(), S, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=f"a {name!r} covariance needs"):
        type(cov).from_fields({})


@pytest.mark.parametrize("name", GAUSSIAN)
def test_downdate_against_the_dense_inverse(name):
    cov, S = _build(name)
    Lam = torch.linalg.inv(S)
    g = torch.Generator().manual_seed(1)
    B = torch.randn(K, 2, generator=g, dtype=torch.float64)
    C = B @ B.T
    C = C * (0.5 * float(torch.linalg.eigvalsh(Lam).min()) / float(torch.linalg.eigvalsh(C).max()))  # Λ − C ≻ 0
    term = C.diagonal() if cov.curvature_form == "diag" else C
    new, facts = cov.downdate(term)
    expected = torch.diag(1.0 / (Lam.diagonal() - C.diagonal())) if name == "diag" else torch.linalg.inv(Lam - C)
    torch.testing.assert_close(new.dense(), expected, rtol=1e-8, atol=1e-12)
    assert isinstance(new, Diag if name == "diag" else Precision)
    assert facts["num_nonpositive"] == 0 and facts["repair"] is None and facts["min_eigenvalue"] > 0
    # too much subtracted: refused unless a repair is asked for, then clipped to a positive floor
    big = 3.0 * (Lam.diagonal() if cov.curvature_form == "diag" else Lam)
    with pytest.raises(NotPositiveDefiniteError, match="down-dated"):
        cov.downdate(big)
    fixed, facts = cov.downdate(big, repair="clip", floor=1e-3)
    assert facts["repair"]["kind"] == "clip" and facts["num_nonpositive"] == K
    # Λ − 3Λ = −2Λ has every eigenvalue below the floor: clipped, it is 1e-3 · I
    torch.testing.assert_close(fixed.dense(), 1e3 * torch.eye(K, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_diag_downdate_keeps_the_scale_dtype_and_a_dense_one_is_float64():
    diag, _ = _build("diag")
    new, _ = diag.to(torch.float32).downdate(torch.zeros(K, dtype=torch.float64))
    assert new.dtype == torch.float32 and isinstance(new, Diag)
    full, _ = _build("full")
    new, _ = full.to(torch.float32).downdate(torch.zeros(K, K, dtype=torch.float64))
    assert new.dtype == torch.float64 and isinstance(new, Precision)


def test_from_moments_and_from_precision():
    _, S = _build("full")
    for cls in (Full, Precision):
        torch.testing.assert_close(cls.from_moments(S).dense(), S, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(LowRank.from_moments(S, rank=K).dense(), S, rtol=1e-9, atol=1e-10)
    low = LowRank.from_moments(S, rank=1)
    assert low.rank == 1
    torch.testing.assert_close(low.variance(), S.diagonal(), rtol=1e-9, atol=1e-12)  # the diagonal is kept
    torch.testing.assert_close(Diag.from_moments(S).variance(), S.diagonal(), rtol=1e-12, atol=0)
    # the mean-field fit to N(·, Λ⁻¹) is narrower than the marginals where coordinates correlate
    mf = Diag.from_precision(torch.linalg.inv(S))
    assert (mf.variance() < S.diagonal() - 1e-6).all()
    torch.testing.assert_close(Full.from_precision(torch.linalg.inv(S)).dense(), S, rtol=1e-9, atol=1e-12)
    assert Diag.num_moments(K) == 2 * K and Full.num_moments(K) == K + K * (K + 1) // 2


def _weighted_draws():
    g = torch.Generator().manual_seed(5)
    samples = torch.randn(7, K, generator=g, dtype=torch.float64)
    counts = torch.tensor([1, 2, 3, 1, 4, 2, 1])
    return samples, counts.double().log(), samples.repeat_interleave(counts, 0)


def test_empirical_moments_equal_those_of_the_repeated_draws():
    samples, log_w, repeated = _weighted_draws()
    e = Empirical(samples, log_weights=log_w)
    S = torch.cov(repeated.T, correction=0)   # integer weights: the weighted moments of the repeated draws
    torch.testing.assert_close(e.dense(), S, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.mean(), repeated.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.variance(), S.diagonal(), rtol=1e-10, atol=1e-12)
    v = torch.randn(K, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(e.matvec(v), S @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.matvec(v[:, 0]), S @ v[:, 0], rtol=1e-10, atol=1e-12)
    J = torch.randn(3, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(e.jacobian_quadratic(J), (J @ S @ J.T).diagonal(), rtol=1e-10, atol=1e-12)
    assert not e.gaussian and e.curvature_form is None
    with pytest.raises(ValueError, match="no density"):
        e.log_prob(samples[0])
    with pytest.raises(ValueError, match="no precision"):
        e.precision_matvec(v)
    with pytest.raises(NotImplementedError, match="cannot be down-dated"):
        e.downdate(torch.zeros(K, K))
    with pytest.raises(ValueError, match="one entry per sample"):
        Empirical(samples, log_weights=log_w[:3])


def test_empirical_sampling_is_weighted_resampling():
    samples, log_w, _ = _weighted_draws()
    e = Empirical(samples, log_weights=log_w)
    torch.manual_seed(0)
    drawn = e.draw(torch.zeros(K, dtype=torch.float64), 4000)
    rows = (drawn[:, None, :] == samples[None]).all(-1)       # [n, S]: which stored draw each one is
    assert bool((rows.sum(1) == 1).all())                      # every draw is one of the stored ones
    freq = rows.double().mean(0)
    w = e.weights()
    assert ((freq - w).abs() < 5 * (w * (1 - w) / 4000).sqrt()).all()
    dev = e.sample(10, torch.Generator().manual_seed(0))
    assert bool(((dev[:, None, :] == (samples - e.mean())[None]).all(-1).sum(1) == 1).all())
    moved = e.shifted(torch.ones(K, dtype=torch.float64))
    torch.testing.assert_close(moved.mean(), e.mean() + 1)
    torch.testing.assert_close(moved.dense(), e.dense())


def _layout(d: int) -> LatentLayout:
    return LatentLayout((LatentSite("theta", (d,), (d,), constraints.real_vector),))


def test_active_subset_inside_a_posterior(tmp_path):
    cov, S = _build("precision")
    active = torch.tensor([1, 2, 4, 6])
    loc = torch.linspace(-1, 1, 7, dtype=torch.float64)
    post = Posterior(loc=loc, cov=Precision(cov.precision, active=active), layout=_layout(7), family="test")
    full = post.covariance()
    torch.testing.assert_close(full[active][:, active], S, rtol=1e-10, atol=1e-12)
    rest = torch.tensor([0, 3, 5])
    assert bool((full[rest] == 0).all()) and bool((post.variance()[rest] == 0).all())
    draws = post.sample(50, seed=1)
    assert torch.equal(draws[:, rest], loc[rest].expand(50, 3))
    assert not torch.equal(draws[:, active], loc[active].expand(50, 4))
    theta = loc + 0.1
    ref = MultivariateNormal(loc[active], S).log_prob(theta[active])
    torch.testing.assert_close(post.log_prob(theta), ref, rtol=1e-10, atol=1e-10)
    path = tmp_path / "active.safetensors"
    post.save(path)
    back = Posterior.load(path)
    assert back.structure == "precision" and torch.equal(back.active, active)
    assert torch.equal(back.precision, post.precision) and torch.equal(back.loc, loc)
    with pytest.raises(ValueError, match="over 4 coordinates but θ has 7"):
        Posterior(loc=loc, cov=Precision(cov.precision), layout=_layout(7), family="test")


def test_posterior_replace_rebuilds_the_covariance():
    cov, S = _build("precision")
    post = Posterior(loc=torch.zeros(K, dtype=torch.float64), cov=cov, layout=_layout(K), family="test")
    weak = post.replace(precision=post.precision / 2)
    torch.testing.assert_close(weak.covariance(), 2 * S, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.covariance(), S, rtol=1e-10, atol=1e-12)   # the original is untouched
    assert post.scale is None and weak.structure == "precision"
    with pytest.raises(TypeError, match="does not have"):
        post.replace(scale=torch.ones(K))


def test_curvature_forms_agree():
    """The diagonal form is the diagonal of the dense one (exact and GGN, with and without the prior), and
    ``index`` restricts both: one function serves the Laplace fit and the down-date."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(12, generator=g)
    bound = BoundModel(BayesianLinearRegression(2, noise=0.3), x, y)
    theta = torch.randn(bound.layout.dim, generator=g, dtype=torch.float64)
    index = torch.tensor([0, 2])
    for curvature in ("exact", "ggn"):
        for prior in (False, True):
            dense = curvature_term(bound, x, y, theta, form="dense", curvature=curvature, prior=prior)
            diag = curvature_term(bound, x, y, theta, form="diag", curvature=curvature, prior=prior)
            torch.testing.assert_close(diag, dense.diagonal(), rtol=1e-8, atol=1e-10)
            sub = curvature_term(bound, x, y, theta, form="dense", curvature=curvature, prior=prior, index=index)
            torch.testing.assert_close(sub, dense[index][:, index], rtol=1e-8, atol=1e-10)
    lik = curvature_term(bound, x, y, theta, form="dense", curvature="ggn")
    assert float((curvature_term(bound, x, y, theta, form="dense", curvature="ggn", prior=True) - lik)
                 .diagonal().min()) > 0   # the prior adds curvature
    # for a linear-Gaussian model with fixed noise the GGN is the exact Hessian: XᵀX/σ² in (w, b) order
    X = torch.cat([x, torch.ones(12, 1)], 1).double()
    torch.testing.assert_close(lik, X.T @ X / 0.3**2, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="no curvature in form 'banded'"):
        curvature_term(bound, x, y, theta, form="banded")
