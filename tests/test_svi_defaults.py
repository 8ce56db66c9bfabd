"""SVI with its default options on every guide family (issue 15), and divergence handling.

References are the measurements of ``python -m benchmarks.svi_defaults`` (benchmarks/results/
svi_defaults.json): the final ELBOs of each family's fits over seeds 0-4, estimated with 256 posterior
draws as mean log p(θ, D) + H[q]. Fits are seeded and deterministic on one machine, but not across
machines (see :func:`elbo_band`), so the check is a band around the seeds' range, not a seed's number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from benchmarks.svi_defaults import elbo_estimate, problem
from bayes_unlearn.inference import DivergenceError, fit
from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.inference.svi import DirectELBO, family_defaults, make_guide, optimise_elbo, scaled_log_joint
from bayes_unlearn.models import BayesianLinearRegression

FAMILIES = ("meanfield", "lowrank", "fullrank")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "svi_defaults.json"


def elbo_band(net: str, family: str) -> tuple[float, float]:
    """The band a default fit's final ELBO must land in: the range over seeds 0-4 measured by
    ``benchmarks/svi_defaults.py``, widened by half its width on each side. Not the seed's own number: an
    SVI trajectory is chaotic in the last bits of floating point, and the same seed-0 fit measured on two
    machines with the same torch differed by 66 nats (meanfield) and 110 nats (lowrank), while seeds span
    110-270 nats. A failed fit (stuck near the prior, or run off) lands hundreds to thousands of nats out."""
    rows = [r["elbo"] for r in json.loads(RESULTS.read_text())["rows"] if r["net"] == net and r["family"] == family]
    lo, hi = min(rows), max(rows)
    return lo - (hi - lo) / 2, hi + (hi - lo) / 2


@pytest.fixture(scope="module")
def quick_fits():
    model, x, y = problem("quick", 0)
    return {f: fit(model, x, y, f, seed=0, progress=False) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_quick_bnn_fits_with_defaults(quick_fits, family):
    post = quick_fits[family]
    rep = post.meta["report"]
    assert rep["converged"] and rep["restarts"] == [] and post.meta["warnings"] == []
    assert rep["defaults"] == {"lr": 0.03, "init_scale": 0.05, "restarts": 3,
                               "factor_lr": {"meanfield": None, "lowrank": 1 / math.sqrt(10),
                                             "fullrank": 1 / math.sqrt(96)}[family]}
    elbo = elbo_estimate(post)
    lo, hi = elbo_band("quick", family)
    assert lo < elbo < hi, (family, elbo, lo, hi)


def test_quick_bnn_fullrank_is_not_worse_than_meanfield(quick_fits):
    # the full-rank family contains the mean-field one, so its optimum cannot be worse; measured +20.6 nats on
    # seed 0 (over seeds 0-4: +29.5 [-10.5, 72.1], so a fit can stop short of it: this pins seed 0's reference)
    assert elbo_estimate(quick_fits["fullrank"]) > elbo_estimate(quick_fits["meanfield"]) + 10.0


def test_fullrank_defaults_on_conjugate_linear_model_reach_the_evidence():
    """Full-rank Gaussian is the exact family here: ELBO = log p(D) at the optimum (measured gap 0.03)."""
    model, x, y = problem("linear", 0)
    post = fit(model, x, y, "fullrank", seed=0, progress=False)
    assert post.meta["report"]["converged"]
    gap = model.log_evidence(x, y) - elbo_estimate(post)
    assert -0.05 < gap < 0.2, gap  # an ELBO above the evidence (beyond draw noise) would be a bug
    mean, cov = model.exact_posterior(x, y)
    torch.testing.assert_close(post.loc.double(), mean, atol=3 * float(cov.diagonal().sqrt().max()), rtol=0)


def test_family_defaults_scale_the_factor_step_with_dimension():
    assert family_defaults("meanfield", 1153)["lr_scale"] == {}
    assert family_defaults("fullrank", 1153)["lr_scale"] == {"scale_tril": 1 / math.sqrt(1152)}
    assert family_defaults("lowrank", 1153)["lr_scale"] == {"cov_factor": 1 / math.sqrt(34)}
    assert family_defaults("lowrank", 1153, rank=4)["lr_scale"] == {"cov_factor": 0.5}


def test_noise_logq_equals_log_prob_and_its_gradient():
    """log q from the noise ε (fullrank) is the MultivariateNormal's log_prob, value and gradient."""
    model, x, y = problem("quick", 0)
    bound = BoundModel(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        guide = make_guide(model, "fullrank", bound.layout)
        guide(x, y)
        with torch.no_grad():  # a non-trivial factor
            guide.scale_tril_unconstrained.add_(0.05 * torch.randn_like(guide.scale_tril_unconstrained))
        params = list(guide.parameters())
        out = []
        for noise in (False, True):
            torch.manual_seed(5)
            loss = DirectELBO(lambda t, a, b: scaled_log_joint(bound, t, a, b), jit=False,
                              noise_logq=noise).differentiable_loss(guide, x, y)
            out.append((loss, torch.autograd.grad(loss, params)))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-3)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


# -- divergence ----------------------------------------------------------------------------------------

def _blr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    return BayesianLinearRegression(2, noise=0.1), x, x @ torch.tensor([1.0, -1.0]) + 0.1 * torch.randn(40, generator=g)


def _poisoning_monitor(guide, at_steps):
    """A monitor that sets loc[0] to NaN after the optimiser's step number ``at_steps[i]`` (once each)."""
    left = list(at_steps)

    def monitor(step, loss):
        if left and step == left[0]:
            left.pop(0)
            with torch.no_grad():
                guide.loc[0] = float("nan")
        return None
    return monitor


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("elbo", ["direct", "trace"])
def test_nan_parameter_raises_divergence_error_naming_the_step(family, elbo):
    model, x, y = _blr()
    bound = BoundModel(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        guide = make_guide(model, family, bound.layout, rank=1)
        guide(x, y)
        # the NaN is set after step 7, so step 8 finds it: the issue's raw torch ValueError ("Expected
        # parameter loc ... found invalid values") while the guide's distribution is built, or a NaN loss
        with pytest.raises(DivergenceError, match=r"at step 8; lower lr") as err:
            optimise_elbo(model, guide, (x, y), num_steps=50, window=10, progress=False, elbo=elbo,
                          bound_model=bound, noise_logq=True, monitor=_poisoning_monitor(guide, [7]))
    assert "nan" in str(err.value).lower() or "non-finite" in str(err.value)


def test_nan_gradient_is_caught_before_it_reaches_the_parameters():
    x = torch.linspace(-1, 1, 20)[:, None]
    y = x[:, 0].clone()
    calls = {"n": 0}

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        calls["n"] += 1
        # a finite value whose gradient is NaN on call 30 (sqrt at 0 times 0)
        bad = torch.sqrt(torch.zeros((), dtype=x.dtype) + 0 * w) if calls["n"] == 30 else 0.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(w * x[:, 0] + 0 * bad, 0.1), obs=y)

    bound = BoundModel(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        guide = make_guide(model, "meanfield", bound.layout)
        guide(x, y)
        start = calls["n"]
        with pytest.raises(DivergenceError, match=r"the gradient became non-finite at step (\d+)") as err:
            optimise_elbo(model, guide, (x, y), num_steps=50, window=10, progress=False, elbo="trace")
        assert f"at step {30 - start - 1}" in str(err.value)  # call k + 1 traces the model at step k
        assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_restart_from_last_finite_state_recovers_and_is_recorded():
    model, x, y = _blr()
    bound = BoundModel(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        guide = make_guide(model, "fullrank", bound.layout)
        guide(x, y)
        rep = optimise_elbo(model, guide, (x, y), num_steps=400, window=20, max_plateaus=4, lr=0.03,
                            progress=False, elbo="direct", bound_model=bound, noise_logq=True, restarts=1,
                            monitor=_poisoning_monitor(guide, [25]))
    # step 26 finds the NaN; the last state that passed a window check is the one after step 19 (20 steps)
    assert [(r["step"], r["resumed_from"], r["lr"]) for r in rep["restarts"]] == [(26, 20, 0.015)]
    assert rep["converged"] and len(rep["losses"]) == rep["steps"]
    assert all(math.isfinite(v) for v in rep["losses"])


def test_fit_records_a_restart_in_meta_and_warnings():
    x = torch.linspace(-1, 1, 30)[:, None]
    y = 0.5 * x[:, 0]
    calls = {"n": 0}

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        calls["n"] += 1
        scale = float("nan") if calls["n"] == 40 else 0.1  # one NaN likelihood, then a healthy model again
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(x @ w, torch.tensor(scale, dtype=x.dtype), validate_args=False), obs=y)

    post = fit(model, x, y, "meanfield", seed=0, progress=False, elbo="trace", window=20, max_plateaus=3)
    (r,) = post.meta["report"]["restarts"]
    assert r["what"] == "the loss" and r["value"] == "nan" and r["resumed_from"] == 20 and r["lr"] == 0.015
    assert post.meta["report"]["converged"]
    assert any(w.startswith(f"SVI diverged at step {r['step']} (the loss became nan); restarted from step 20 "
                            "with the step size halved to 0.015") for w in post.meta["warnings"])
    # the same poisoned model without restarts raises, naming the step
    calls["n"] = 0
    with pytest.raises(DivergenceError, match=rf"the loss became nan at step {r['step']}; lower lr"):
        fit(model, x, y, "meanfield", seed=0, progress=False, elbo="trace", window=20, max_plateaus=3, restarts=0)


def test_restarts_exhausted_raise_divergence_error():
    model, x, y = _blr()
    bound = BoundModel(model, x, y)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(0)
        guide = make_guide(model, "meanfield", bound.layout)
        guide(x, y)
        with pytest.raises(DivergenceError, match=r"at step 6 after 2 restart\(s\) with halved step sizes; lower lr "
                                                  r"\(now 0.0075\)"):
            optimise_elbo(model, guide, (x, y), num_steps=100, window=10, progress=False, elbo="direct",
                          bound_model=bound, restarts=2, monitor=_poisoning_monitor(guide, [5, 5, 5]))


def test_fit_that_stops_at_num_steps_says_so():
    model, x, y = _blr()
    post = fit(model, x, y, "fullrank", seed=0, progress=False, num_steps=60)
    assert post.meta["report"]["converged"] is False and post.meta["report"]["steps"] == 60
    assert post.meta["warnings"] == ["SVI did not meet the convergence rule in 60 steps (it stopped at num_steps "
                                     "before max_plateaus step-size halvings); raise num_steps"]


# -- the default BNN (slow) ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_default_bnn_fits_with_defaults(family):
    model, x, y = problem("default", 0)
    post = fit(model, x, y, family, seed=0, progress=False)
    assert post.meta["report"]["converged"] and post.meta["warnings"] == []
    elbo = elbo_estimate(post)
    lo, hi = elbo_band("default", family)
    assert lo < elbo < hi, (family, elbo, lo, hi)
