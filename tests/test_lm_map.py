"""Tests for the Laplace MAP search by Levenberg–Marquardt (``fit(..., "laplace", optimizer="lm")``,
``inference.laplace.find_map_lm``) and the Gauss–Newton solvers it uses (``inference.gauss_newton``).

Oracles: conjugate BLR (Gauss–Newton is Newton on a quadratic objective, so LM reaches the closed-form MAP
in one or two iterations with either damping and every solver); on a small tanh BNN, the exact gradient
of the log joint at the returned θ (a mode has ‖∇‖ ≈ 0). Already covered in tests/test_refit.py and not
repeated here: LM with D = I on BLR, the dual/CG steps against the primal one, and ``retrain`` of a
posterior fitted with ``optimizer="lm"`` re-running LM.
"""

from __future__ import annotations

import pytest
import torch

from bayes_unlearn.inference import fit
from bayes_unlearn.inference.fit import MAP_GRAD_TOL
from bayes_unlearn.inference.gauss_newton import DUAL_MAX_ROWS, NegLogJoint, choose_solver, levenberg_marquardt
from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.models.data import synthetic_1d
from bayes_unlearn.models.mlp import BayesianMLP


def grad_norm(post) -> float:
    bound = BoundModel(post.model, post.x, post.y)
    return float(NegLogJoint(bound, post.x, post.y).grad(post.loc.double()).norm())


@pytest.mark.parametrize("solver", ["dual", "primal", "cg"])
def test_marquardt_lm_on_blr_reaches_the_closed_form_mode_in_two_iterations(blr_problem, solver):
    b = blr_problem
    bound = BoundModel(b["model"], b["X"], b["y"])
    theta, rep = levenberg_marquardt(NegLogJoint(bound, b["X"], b["y"]), torch.zeros(bound.layout.dim), gtol=1e-8,
                                     rtol=0.0, max_iters=20, tau=1e-9, damping="marquardt", solver=solver)
    assert rep["solver"] == solver and rep["damping_kind"] == "marquardt"
    assert rep["converged"] and rep["iterations"] <= 2
    assert torch.allclose(theta, b["exact_full"].mean.double(), atol=1e-6)


def test_inexact_cg_with_a_budget_still_reaches_the_blr_mode(blr_problem):
    """The matrix-free path with a forcing term and a small inner budget: more outer iterations, same mode."""
    b = blr_problem
    bound = BoundModel(b["model"], b["X"], b["y"])
    theta, rep = levenberg_marquardt(NegLogJoint(bound, b["X"], b["y"]), torch.zeros(bound.layout.dim), gtol=1e-8,
                                     rtol=0.0, max_iters=50, solver="cg", damping="marquardt", cg_max_iter=2,
                                     cg_forcing=True)
    assert rep["converged"], rep["stop"]
    assert max(rep["cg_iterations"]) <= 2 * 40 + 40  # at most cg_max_iter (+1 warm-start product) per solve
    assert torch.allclose(theta, b["exact_full"].mean.double(), atol=1e-6)


def test_auto_never_picks_the_dual_solver_above_its_row_limit():
    assert choose_solver("auto", 100, 1153) == "dual"
    for rows in (DUAL_MAX_ROWS + 1, 50_000, 500_000):
        # even with more parameters than rows, the M x M dual system is not formed above the limit
        assert choose_solver("auto", rows, 10 * rows) != "dual"
        assert choose_solver("auto", rows, 1153) == "primal"
        assert choose_solver("auto", rows, 1153, max_primal_rows=DUAL_MAX_ROWS) == "cg"


def test_primal_and_cg_paths_never_hold_more_than_a_chunk_of_the_jacobian(blr_problem, monkeypatch):
    b = blr_problem
    bound = BoundModel(b["model"], b["X"], b["y"])
    seen = []
    import bayes_unlearn.inference.curvature.autodiff as curvature  # the module that holds it (ggn_diagonal's global)
    import bayes_unlearn.inference.gauss_newton as gauss_newton

    orig = curvature.whitened_jacobian

    def spy(*args, **kwargs):  # every Jacobian either path forms: its own steps' and the GGN diagonal's
        A = orig(*args, **kwargs)
        seen.append(A.shape[0])
        return A
    monkeypatch.setattr(curvature, "whitened_jacobian", spy)
    monkeypatch.setattr(gauss_newton, "whitened_jacobian", spy)
    for solver in ("primal", "cg"):
        seen.clear()
        problem = NegLogJoint(bound, b["X"], b["y"], chunk=16)
        _, rep = levenberg_marquardt(problem, torch.zeros(bound.layout.dim), gtol=1e-8, rtol=0.0, max_iters=5,
                                     solver=solver, damping="marquardt", tau=1e-9)
        assert rep["converged"]
        assert seen and max(seen) <= 16 < len(b["X"])


@pytest.fixture(scope="module")
def small_bnn():
    data = synthetic_1d(n=60, seed=1)
    model = BayesianMLP(1, (8,), "tanh", prior_scale="fan_in", noise=0.1)
    return model, data.x, data.y


def test_lm_and_lbfgs_paths_both_reach_a_mode_on_a_small_bnn(small_bnn):
    model, x, y = small_bnn
    lm = fit(model, x, y, "laplace", curvature="ggn", optimizer="lm", progress=False, seed=0)
    ad = fit(model, x, y, "laplace", curvature="ggn", progress=False, seed=0, num_steps=300)
    assert lm.meta["report"]["optimizer"] == "lm" and ad.meta["report"]["optimizer"] == "adam-lbfgs"
    for post in (lm, ad):
        g = grad_norm(post)
        assert g < MAP_GRAD_TOL, g
        assert abs(g - post.meta["report"]["grad_norm_at_map"]) < 1e-6
        assert not any("not a mode" in w for w in post.meta["warnings"])
    rep = lm.meta["report"]["lm"]
    assert rep["damping"] == "marquardt" and rep["iterations"] >= 1


def test_the_gradient_norm_warning_fires_at_a_non_mode(small_bnn):
    model, x, y = small_bnn
    post = fit(model, x, y, "laplace", curvature="ggn", progress=False, seed=0, num_steps=10, lbfgs_steps=0)
    g = grad_norm(post)
    assert g > MAP_GRAD_TOL
    assert any("not a mode" in w for w in post.meta["warnings"])


def test_ggn_lbfgs_is_one_newton_step_on_blr(blr_problem):
    """On a quadratic objective the inverse GGN is the inverse Hessian: the first (unit) step lands on the mode
    (a second one only mops up rounding at gtol = 1e-8)."""
    from bayes_unlearn.inference.gauss_newton import ggn_lbfgs

    b = blr_problem
    bound = BoundModel(b["model"], b["X"], b["y"])
    theta, rep = ggn_lbfgs(NegLogJoint(bound, b["X"], b["y"]), torch.zeros(bound.layout.dim), gtol=1e-8, mu=1e-12)
    assert rep["converged"] and rep["iterations"] <= 2
    assert torch.allclose(theta, b["exact_full"].mean.double(), atol=1e-6)


def test_the_newton_decrement_is_taken_without_the_damping(small_bnn):
    """½ gᵀB⁻¹g, the distance to the mode in nats, must not see μ · diag B: on a net diag B is large on the
    coordinates the data pin down, so any damping shrinks the estimate (35× at μ = 1e-3 at N = 50k)."""
    from bayes_unlearn.inference.gauss_newton import _GGNInverse
    from bayes_unlearn.inference.laplace import prior_draw

    model, x, y = small_bnn
    problem = NegLogJoint(BoundModel(model, x, y), x, y)
    theta = prior_draw(problem.bound, x, 0).double()
    g = problem.grad(theta)
    B = problem.ggn_matrix(theta) + torch.diag(problem.prior_diag(theta))
    exact = 0.5 * float(g @ torch.linalg.solve(B, g))
    for kind in ("primal", "dual"):
        H = _GGNInverse(problem, theta, kind)
        H.factor(1e-1)
        assert 0.5 * float(g @ H.undamped(g)) == pytest.approx(exact, rel=1e-8), kind
        assert 0.5 * float(g @ H(g)) < (1 - 1e-2) * exact  # the damped solve would have said "closer"


def test_ggn_lbfgs_stops_on_the_estimated_decrement_only_below_kl_tol(small_bnn):
    """With kl_tol, meeting the gradient target is not enough: the loop goes on until ½ gᵀB⁻¹g ≤ kl_tol."""
    from bayes_unlearn.inference.gauss_newton import ggn_lbfgs
    from bayes_unlearn.inference.laplace import prior_draw

    model, x, y = small_bnn
    problem = NegLogJoint(BoundModel(model, x, y), x, y)
    theta0, _ = levenberg_marquardt(problem, prior_draw(problem.bound, x, 0), max_iters=50, rtol=0.0, gtol=1e-6,
                                    damping="marquardt")
    loose = 10.0 * float(problem.grad(theta0).norm())  # met at the start
    _, plain = ggn_lbfgs(problem, theta0, gtol=loose)
    theta, rep = ggn_lbfgs(problem, theta0, gtol=loose, kl_tol=1e-10)
    assert plain["iterations"] == 0 and plain["newton_decrement"] is None
    assert rep["converged"] and rep["iterations"] > 0 and rep["newton_decrement"] <= 1e-10
    g = problem.grad(theta)
    B = problem.ggn_matrix(theta) + torch.diag(problem.prior_diag(theta))
    assert 0.5 * float(g @ torch.linalg.solve(B, g)) < 1e-8


def test_ggn_lbfgs_keeps_its_damped_factor_while_the_damping_stays_in_the_slack_band(small_bnn):
    """``mu_slack``: a Cholesky only when μ leaves [μ_f / slack, μ_f · slack] of the factor in use, and the
    iteration still reaches the gradient target; ``mu_slack=1`` factorises at every change of μ."""
    from bayes_unlearn.inference.gauss_newton import ggn_lbfgs
    from bayes_unlearn.inference.laplace import prior_draw

    model, x, y = small_bnn
    problem = NegLogJoint(BoundModel(model, x, y), x, y)
    theta0, _ = levenberg_marquardt(problem, prior_draw(problem.bound, x, 0), max_iters=15, rtol=0.0, gtol=1e-6,
                                    damping="marquardt")
    runs = {s: ggn_lbfgs(problem, theta0, max_iters=300, gtol=1e-3, mu_slack=s)[1] for s in (1.0, 10.0)}
    for s, rep in runs.items():
        assert rep["converged"], (s, rep["grad_norm"])
        assert all(used / s * (1 - 1e-12) <= asked <= used * s * (1 + 1e-12) for asked, used in rep["damping_used"])
    assert all(asked == used for asked, used in runs[1.0]["damping_used"])
    assert len({a for a, _ in runs[10.0]["damping_used"]}) > 3  # μ did move
    assert runs[10.0]["factorisations"] < runs[1.0]["factorisations"]
    with pytest.raises(ValueError, match="mu_slack"):
        ggn_lbfgs(problem, theta0, mu_slack=0.5)


def test_ggn_lbfgs_finishes_the_gauss_newton_tail_on_a_small_bnn(small_bnn):
    """Where LM's convergence is linear (the residual curvature it ignores), the same number of GGN-preconditioned
    L-BFGS iterations from the same point gets (much) closer to the mode."""
    from bayes_unlearn.inference.gauss_newton import ggn_lbfgs
    from bayes_unlearn.inference.laplace import prior_draw

    model, x, y = small_bnn
    bound = BoundModel(model, x, y)
    problem = NegLogJoint(bound, x, y)
    theta, _ = levenberg_marquardt(problem, prior_draw(bound, x, 0), max_iters=50, rtol=0.0, gtol=1e-6,
                                   damping="marquardt")
    _, qn = ggn_lbfgs(problem, theta, max_iters=200, gtol=1e-3)
    _, lm = levenberg_marquardt(problem, theta, max_iters=qn["iterations"], rtol=0.0, gtol=1e-3, damping="marquardt")
    assert qn["converged"], qn["grad_norm"]
    assert lm["grad_norm"] > 3 * qn["grad_norm"]


def test_continuation_sizes_double_from_the_start_and_end_at_n():
    from bayes_unlearn.inference.laplace import continuation_sizes

    assert continuation_sizes(10_000, 512) == [512, 1024, 2048, 4096, 10_000]  # 8192 is within 1.25x of N
    assert continuation_sizes(50_000, 512, 4.0) == [512, 2048, 8192, 32_768, 50_000]
    assert continuation_sizes(1000, 512) == [1000] and continuation_sizes(5000, None) == [5000]
    with pytest.raises(ValueError, match="continuation_factor"):
        continuation_sizes(5000, 512, 1.0)


@pytest.fixture(scope="module")
def medium_bnn():
    data = synthetic_1d(n=1200, seed=2)
    return BayesianMLP(1, (8,), "tanh", prior_scale="fan_in", noise=0.1), data.x, data.y


def test_continuation_runs_its_stages_on_nested_subsamples_and_reaches_the_mode(medium_bnn):
    """From a prior draw with N >= 2 * continuation the LM search first fits 150, 300, 600 rows, then all 1200,
    to the same gradient tolerance; the stages are seeded (same seed, same θ) and recorded."""
    from bayes_unlearn.inference.laplace import find_map_lm

    model, x, y = medium_bnn
    bound = BoundModel(model, x, y)
    theta, rep = find_map_lm(bound, x, y, seed=0, continuation=150)
    stages = rep["lm"]["continuation"]
    assert [s["n"] for s in stages] == [150, 300, 600]
    assert all(s["grad_norm"] <= 1.0 or s["lm_stop"] != "converged" for s in stages)
    g = float(NegLogJoint(bound, x, y).grad(theta).norm())
    assert rep["converged"] and g <= 1e-3 and abs(g - rep["grad_norm_at_map"]) < 1e-9
    again, _ = find_map_lm(bound, x, y, seed=0, continuation=150)
    assert torch.equal(theta, again)
    _, plain = find_map_lm(bound, x, y, seed=0, continuation=None)
    assert plain["lm"]["continuation"] == []
    # a warm start never runs the stages
    _, warm = find_map_lm(bound, x, y, seed=0, continuation=150, init_loc=theta)
    assert warm["lm"]["continuation"] == [] and warm["steps"] == 0


def test_auto_optimizer_is_lm_from_its_threshold_for_a_normal_likelihood(medium_bnn):
    from bayes_unlearn.inference.fit import LM_AUTO_MIN_N, resolve_optimizer

    model, x, y = medium_bnn
    assert len(x) >= LM_AUTO_MIN_N > 300
    bound = BoundModel(model, x, y)
    assert resolve_optimizer(bound, x, {}) == "lm"
    assert resolve_optimizer(bound, x[:300], {}) == "adam-lbfgs"
    assert resolve_optimizer(bound, x, {"num_steps": 100}) == "adam-lbfgs"  # an Adam option asks for Adam
    assert resolve_optimizer(bound, x[:300], {"optimizer": "lm"}) == "lm"
    assert resolve_optimizer(bound, x[:300], {"lm_gtol": 1e-4}) == "lm"  # an LM option asks for LM

    import pyro
    import pyro.distributions as dist

    def student(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.StudentT(4.0, w * x[:, 0], 0.1), obs=y)
    assert resolve_optimizer(BoundModel(student, x, y), x, {}) == "adam-lbfgs"  # no GGN for a Student-t


def test_retrain_of_an_auto_fit_reuses_the_optimiser_the_fit_resolved(blr_problem):
    """N = 1100 resolves "auto" to LM; after deleting 200 rows the retained 900 would resolve to Adam + L-BFGS,
    but ``retrain`` re-runs the optimiser the original fit ran."""
    from bayes_unlearn.unlearning import unlearn

    g = torch.Generator().manual_seed(3)
    X = torch.randn(1100, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(1100, generator=g)
    model = blr_problem["model"]
    post = fit(model, X, y, "laplace", progress=False)
    assert post.meta["report"]["optimizer"] == "lm" and "optimizer" not in post.meta["fit"]["options"]
    res = unlearn(post, X[:200], y[:200], "retrain")
    assert res.posterior.meta["report"]["optimizer"] == "lm"
