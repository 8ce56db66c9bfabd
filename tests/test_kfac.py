"""KFAC (``inference.curvature.kfac``) and the ``Kron`` covariance (``inference.covariance.kron``).

On a tiny 1-3-2-1 tanh net (d = 17, 12 points, θ a seeded random draw: none of this needs a mode) the Kron
covariance is checked against a dense precision assembled here from its factors with ``torch.kron`` (the
row-major site layout made explicit), KFAC against the exact GGN where it is exact, the down-date against
KFAC on the retained data, and the refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from bayes_unlearn.inference.covariance.base import structure_class
from bayes_unlearn.inference.covariance.kron import DENSE_MAX, Kron
from bayes_unlearn.inference.covariance.repair import NotPositiveDefiniteError
from bayes_unlearn.inference.curvature import (KronFactors, KronPrecision, ggn, kfac_curvature_term, kfac_factors,
                                               layer_signals, per_example_jacobians, prior_curvature_diagonal)
from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.models.linear import BayesianLinearRegression
from bayes_unlearn.models.mlp import BayesianMLP

ROOT = Path(__file__).resolve().parents[1]


def _setup(model: BayesianMLP, n: int = 12, seed: int = 0):
    data = synthetic_1d(n=n, seed=seed)
    x, y = data.x.double(), data.y.double()
    bound = BoundModel(model, x, y)
    theta = torch.randn(bound.layout.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return bound, x, y, theta


def _kron(bound, x, theta) -> Kron:
    return Kron.from_factors(kfac_factors(bound, x, theta), prior_curvature_diagonal(bound, x, theta))


def _dense_precision(factors, model: BayesianMLP) -> torch.Tensor:
    """blockdiag_l(A ⊗ B / (N σ²) + τ_l I, B / σ² + τ_b I) in θ's order, τ from the model's prior scales."""
    blocks, c = [], 1.0 / (factors.count * factors.noise_var)
    for l, (A, B) in enumerate(zip(factors.A, factors.B)):
        p, q = A.shape[0], B.shape[0]
        tau_w = p / model.weight_scale**2          # fan-in prior: s_l = weight_scale / √in_l
        tau_b = 1.0 / model.bias_scale**2
        blocks += [c * torch.kron(A, B) + tau_w * torch.eye(p * q, dtype=torch.float64),
                   B / factors.noise_var + tau_b * torch.eye(q, dtype=torch.float64)]
    return torch.block_diag(*blocks)


@pytest.fixture(scope="module")
def tiny():
    model = BayesianMLP(1, (3, 2), "tanh", prior_scale="fan_in", weight_scale=1.5, bias_scale=0.7, noise=0.1)
    bound, x, y, theta = _setup(model)
    F = kfac_factors(bound, x, theta)
    K = Kron.from_factors(F, prior_curvature_diagonal(bound, x, theta))
    P = _dense_precision(F, model)
    return {"model": model, "bound": bound, "x": x, "y": y, "theta": theta, "F": F, "K": K, "P": P,
            "S": torch.linalg.inv(P)}


def test_activations_are_the_models_forward_pass(tiny):
    b, x, theta, model = tiny["bound"], tiny["x"], tiny["theta"], tiny["model"]
    acts = model.activations(b.layout.unpack(theta), x)
    assert [tuple(a.shape) for a in acts.inputs] == [(12, 1), (12, 3), (12, 2)]
    assert [tuple(z.shape) for z in acts.preactivations] == [(12, 3), (12, 2), (12, 1)]
    torch.testing.assert_close(acts.output[:, 0], b.predictive_moments(theta, x)[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(acts.inputs[1], torch.tanh(acts.preactivations[0]))
    assert [tuple(u.shape) for u in acts.units] == [(12, 3), (12, 2), (12, 1)]


def test_kron_against_its_dense_form(tiny):
    K, P, S = tiny["K"], tiny["P"], tiny["S"]
    k = K.size
    assert k == tiny["bound"].layout.dim == 17
    g = torch.Generator().manual_seed(1)
    v, V = torch.randn(k, generator=g, dtype=torch.float64), torch.randn(k, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(K.matvec(v), S @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(K.matvec(V), S @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(K.precision_matvec(v), P @ v, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(K.precision_matvec(V), P @ V, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(K.variance(), S.diagonal(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(K.dense(), S, rtol=1e-10, atol=1e-14)
    delta = torch.randn(3, 5, k, generator=g, dtype=torch.float64) * S.diagonal().sqrt()
    ref = MultivariateNormal(torch.zeros(k, dtype=torch.float64), precision_matrix=P).log_prob(delta)
    torch.testing.assert_close(K.log_prob(delta), ref, rtol=1e-10, atol=1e-8)
    # draws: mean 0 and covariance Σ (entry-wise standard error ≤ √(2/n) in correlation units)
    n = 100_000
    eps = K.sample(n, torch.Generator().manual_seed(2))
    sd = S.diagonal().sqrt()
    assert eps.shape == (n, k)
    assert ((eps.mean(0) / sd).abs() < 5 / n**0.5).all()
    emp = eps.T @ eps / n
    assert ((emp - S).abs() / (sd[:, None] * sd[None, :])).max() < 6 * (2 / n) ** 0.5
    # draw(): around a location, from the global RNG
    loc = torch.arange(k, dtype=torch.float64)
    torch.manual_seed(3)
    th = K.draw(loc, 20_000)
    assert th.shape == (20_000, k) and ((th.mean(0) - loc).abs() / sd < 5 / 20_000**0.5).all()


def test_theta_coordinates_map_to_the_kronecker_blocks(tiny):
    """Λ e for a unit vector at w_l[i, j] (built with the layout, not Kron's offsets) is A[:, i] B[:, j]ᵀ/(Nσ²)
    + τ_l E_ij in site w_l and zero elsewhere; at b_l[j] it is B[:, j]/σ² + τ_b e_j."""
    K, F, layout, model = tiny["K"], tiny["F"], tiny["bound"].layout, tiny["model"]
    assert [(sw, sb) for sw, sb in K.layer_slices()] == [(layout.slices()[f"w{l}"], layout.slices()[f"b{l}"])
                                                        for l in range(3)]
    zeros = {s.name: torch.zeros(s.shape, dtype=torch.float64) for s in layout.sites}
    c = 1.0 / (F.count * F.noise_var)
    for l, i, j in [(0, 0, 2), (1, 2, 0), (1, 1, 1), (2, 1, 0)]:
        A, B = F.A[l], F.B[l]
        site = dict(zeros)
        site[f"w{l}"] = torch.zeros_like(zeros[f"w{l}"])
        site[f"w{l}"][i, j] = 1.0
        out = layout.unpack(K.precision_matvec(layout.pack(site)))
        expected = c * torch.outer(A[:, i], B[:, j])
        expected[i, j] += A.shape[0] / model.weight_scale**2
        torch.testing.assert_close(out[f"w{l}"], expected, rtol=1e-10, atol=1e-10)
        assert all(out[n].abs().max() < 1e-10 for n in layout.names if n != f"w{l}")
        site = dict(zeros)
        site[f"b{l}"] = torch.zeros_like(zeros[f"b{l}"])
        site[f"b{l}"][j] = 1.0
        out = layout.unpack(K.precision_matvec(layout.pack(site)))
        expected = B[:, j] / F.noise_var
        expected[j] += 1.0 / model.bias_scale**2
        torch.testing.assert_close(out[f"b{l}"], expected, rtol=1e-10, atol=1e-10)
        assert all(out[n].abs().max() < 1e-10 for n in layout.names if n != f"b{l}")


def test_jacobian_quadratic_dense_j_and_signals_agree(tiny):
    K, S, b, theta = tiny["K"], tiny["S"], tiny["bound"], tiny["theta"]
    xt = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    J = per_example_jacobians(b, xt, theta, with_scale=False)[0]
    ref = ((J @ S) * J).sum(1)
    torch.testing.assert_close(K.jacobian_quadratic(J), ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(K.linearised_variance(b, xt, theta), ref, rtol=1e-10, atol=1e-14)
    # the signals are the Jacobian: a ⊗ g (row-major) for w_l, g for b_l
    s = layer_signals(b, xt, theta)
    for l, (sw, sb) in enumerate(K.layer_slices()):
        torch.testing.assert_close(J[:, sw], (s.inputs[l][:, :, None] * s.grads[l][:, None, :]).flatten(1))
        torch.testing.assert_close(J[:, sb], s.grads[l])


def _ggn_block(bound, x, theta, sl: slice) -> torch.Tensor:
    return ggn(bound, x, theta, torch.arange(sl.start, sl.stop))


def _kfac_block(K: Kron, sl: slice, tau: float) -> torch.Tensor:
    E = torch.eye(K.size, dtype=torch.float64)[:, sl]
    return K.precision_matvec(E)[sl] - tau * torch.eye(sl.stop - sl.start, dtype=torch.float64)


def test_kfac_equals_the_exact_ggn_block_where_it_is_exact():
    model = BayesianMLP(1, (4,), "tanh", prior_scale=1.0, noise=0.2)   # one hidden layer, τ = 1 everywhere
    bound, x, y, theta = _setup(model, n=12, seed=3)
    # one example: every block of KFAC is the exact GGN block (A ⊗ B / σ² = (a aᵀ) ⊗ (g gᵀ) / σ²)
    x1 = x[5:6]
    K1 = _kron(bound, x1, theta)
    for sw, sb in K1.layer_slices():
        for sl in (sw, sb):
            torch.testing.assert_close(_kfac_block(K1, sl, 1.0), _ggn_block(bound, x1, theta, sl),
                                       rtol=1e-10, atol=1e-10)
    # twelve examples: the biases' and the (scalar-output) last layer's blocks stay exact, the hidden
    # weights' is an approximation (measured relative error 0.4 here)
    K = _kron(bound, x, theta)
    (w0, b0), (w1, b1) = K.layer_slices()
    for sl in (b0, w1, b1):
        torch.testing.assert_close(_kfac_block(K, sl, 1.0), _ggn_block(bound, x, theta, sl), rtol=1e-10, atol=1e-10)
    G0 = _ggn_block(bound, x, theta, w0)
    assert (_kfac_block(K, w0, 1.0) - G0).norm() > 0.05 * G0.norm()


def test_downdate_equals_kfac_on_the_retained_data(tiny):
    b, x, theta, K = tiny["bound"], tiny["x"], tiny["theta"], tiny["K"]
    forget = torch.tensor([1, 4, 7, 10])
    keep = torch.tensor([i for i in range(len(x)) if i not in set(forget.tolist())])
    Kd, facts = K.downdate(kfac_factors(b, x[forget], theta))
    Kr = _kron(b, x[keep], theta)
    assert Kd.count == Kr.count == 8
    torch.testing.assert_close(Kd.dense(), Kr.dense(), rtol=1e-9, atol=1e-12)
    for Ad, Ar in zip(Kd.factors.A + Kd.factors.B, Kr.factors.A + Kr.factors.B):
        torch.testing.assert_close(Ad, Ar, rtol=1e-10, atol=1e-12)
    # the facts of the positive-definiteness check: Λ_r's eigenvalues are those of the dense retained precision
    ev = torch.linalg.eigvalsh(_dense_precision(Kr.factors, tiny["model"]))
    assert facts["repair"] is None and facts["num_nonpositive"] == 0
    assert abs(facts["min_eigenvalue"] - float(ev.min())) < 1e-9 * float(ev.max())
    assert abs(facts["max_eigenvalue"] - float(ev.max())) < 1e-9 * float(ev.max())
    # and it is not the old covariance
    assert (Kd.dense() - K.dense()).abs().max() > 1e-3 * K.dense().abs().max()


def test_downdate_by_factors_of_other_points_is_refused_unless_repaired(tiny):
    """Factors of points outside the data (x = ±10, at the same θ) are not a part of the data's sums: A − A_f has
    negative eigenvalues beyond rounding."""
    K, b, theta = tiny["K"], tiny["bound"], tiny["theta"]
    far = torch.tensor([[10.0], [-10.0], [9.0]], dtype=torch.float64)
    with pytest.raises(NotPositiveDefiniteError, match="not those of a subset"):
        K.downdate(kfac_factors(b, far, theta))
    Kd, facts = K.downdate(kfac_factors(b, far, theta), repair="clip")
    assert facts["repair"]["kind"] == "clip" and facts["repair"]["num_clipped"] >= 1
    assert (Kd.variance() > 0).all()


def test_fields_round_trip_through_safetensors(tiny):
    from safetensors.torch import load, save

    K = tiny["K"]
    assert structure_class("kron") is Kron and Kron.curvature_form == "kron"
    fields = load(save({k: v.contiguous() for k, v in K.fields().items()}))
    assert set(fields) == set(Kron.tensor_fields)
    K2 = Kron.from_fields(fields)
    torch.testing.assert_close(K2.dense(), K.dense(), rtol=0, atol=0)
    assert K2.widths == K.widths == (1, 3, 2, 1) and K2.count == 12
    with pytest.raises(ValueError, match="needs 'B'"):
        Kron.from_fields({k: v for k, v in fields.items() if k != "B"})


def test_curvature_term_in_kron_form(tiny):
    """What the Laplace fit (prior=True) and the down-date (prior=False) ask of the back-end."""
    b, x, theta, K = tiny["bound"], tiny["x"], tiny["theta"], tiny["K"]
    term = kfac_curvature_term(b, x[:5], theta)
    assert isinstance(term, KronFactors) and term.count == 5
    prec = kfac_curvature_term(b, x, theta, prior=True)
    assert isinstance(prec, KronPrecision)
    assert prec.tau_w == pytest.approx((1 / 1.5**2, 3 / 1.5**2, 2 / 1.5**2), rel=1e-12)   # fan-in: in_l / s²
    assert prec.tau_b == pytest.approx((1 / 0.7**2,) * 3, rel=1e-12)
    cov, facts = Kron.from_curvature(prec)
    torch.testing.assert_close(cov.dense(), K.dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="curvature='ggn'"):
        kfac_curvature_term(b, x, theta, curvature="exact")
    with pytest.raises(ValueError, match="no active subset"):
        kfac_curvature_term(b, x, theta, index=torch.arange(3))


def test_refusals(tiny):
    data = synthetic_1d(n=8, seed=0)
    for noise in ("learned", "heteroscedastic"):
        bound, x, _, theta = _setup(BayesianMLP(1, (3,), noise=noise), n=8)
        with pytest.raises(ValueError, match="fixed noise"):
            kfac_factors(bound, x, theta)
    blr = BayesianLinearRegression(1)
    bound = BoundModel(blr, data.x, data.y)
    with pytest.raises(ValueError, match="activations"):
        kfac_factors(bound, data.x, torch.zeros(bound.layout.dim))
    K, F, b = tiny["K"], tiny["F"], tiny["bound"]
    with pytest.raises(ValueError, match="cannot remove"):
        K.downdate(kfac_factors(b, torch.cat([tiny["x"], tiny["x"]]), tiny["theta"]))
    bad_prior = torch.ones(K.size, dtype=torch.float64)
    bad_prior[0] = 2.0
    with pytest.raises(ValueError, match="one prior precision per site"):
        Kron.from_factors(F, bad_prior)
    with pytest.raises(ValueError, match="active"):
        Kron.from_fields(K.fields(), active=torch.arange(3))
    big = BayesianMLP(1, (100, 100), noise=0.1)            # d = 10 401 > DENSE_MAX
    bound, x, _, theta = _setup(big, n=4)
    Kbig = _kron(bound, x, theta)
    assert Kbig.size > DENSE_MAX
    with pytest.raises(ValueError, match="dense"):
        Kbig.dense()


def test_quick_benchmark_runs(tmp_path):
    out = tmp_path / "kfac.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.kfac_scale", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["quick"] is True
    for m in ("kfac", "diag"):
        for phase in ("build", "downdate", "predictive"):
            assert res["scale"][m][phase]["time_s"]["median"] > 0
    acc = res["accuracy"]
    for m in ("kfac", "diag"):
        assert 0 <= acc[m]["epistemic_std_rel_error"]["median"] < 10


def test_fit_with_structure_kron_end_to_end(tmp_path):
    """The structure wired through the library: fit builds a Kron posterior whose precision is KFAC's at the
    MAP; the linearised predictive (the J-free path) equals diag(J Σ Jᵀ) from the dense Σ; a file round trip
    keeps it; laplace-downdate subtracts D_f's factors (= KFAC on D_r at the same θ); lm-refit keeps the
    structure; rkl, which moment-matches draws, refuses it in one line."""
    from bayes_unlearn import fit, predict, unlearn
    from bayes_unlearn.inference import Posterior
    from bayes_unlearn.models import forget_random, split

    data = synthetic_1d(n=40, seed=1)
    model = BayesianMLP(1, (4, 3), "tanh", noise=0.1)
    post = fit(model, data.x, data.y, "laplace", curvature="ggn", structure="kron", num_steps=200,
               lbfgs_steps=100, progress=False)
    assert post.structure == "kron" and isinstance(post.cov, Kron)
    bound, theta = post.bound_model(), post.loc.double()
    K = _kron(bound, post.x.double(), theta)
    v = torch.randn(post.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(post.cov.matvec(v), K.matvec(v), rtol=1e-10, atol=1e-12)
    xt = data.x_test[:25]
    J = per_example_jacobians(bound, xt.double(), theta, with_scale=False)[0]
    epi = predict(post, xt, linearised=True).epistemic_std.double() ** 2
    torch.testing.assert_close(epi, torch.einsum("nd,de,ne->n", J, post.cov.dense(), J), rtol=1e-8, atol=1e-12)
    post.save(tmp_path / "kron.safetensors")
    back = Posterior.load(tmp_path / "kron.safetensors")
    assert back.structure == "kron"
    torch.testing.assert_close(back.cov.matvec(v), post.cov.matvec(v), rtol=1e-12, atol=1e-14)
    idx = forget_random(40, 4, seed=0)
    xr, yr, xf, yf = split(data.x, data.y, idx)
    down = unlearn(post, xf, yf, "laplace-downdate", mean="keep").posterior
    retained = Kron.from_factors(kfac_factors(BoundModel(model, xr.double(), yr.double()), xr.double(), theta),
                                 prior_curvature_diagonal(bound, xr.double(), theta))
    assert down.structure == "kron"
    torch.testing.assert_close(down.cov.matvec(v), retained.matvec(v), rtol=1e-8, atol=1e-10)
    assert unlearn(post, xf, yf, "lm-refit").posterior.structure == "kron"
    with pytest.raises(NotImplementedError, match="kron.*structure 'full' or 'diag'"):
        unlearn(post, xf, yf, "rkl")
