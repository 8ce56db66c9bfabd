"""Per-step cost of the SVI loop: Pyro's ``Trace_ELBO`` (stock) against the direct ELBO.

Both run through :func:`inference.svi.optimise_elbo` (the same loop, optimiser and convergence
bookkeeping) with a mean-field guide on the default BNN, so the only difference is the estimator:

    stock         Trace_ELBO: trace the guide, replay and trace the model, sum site log-densities
    direct-eager  θ = q.rsample();  -[log p̃(θ, D) - log q(θ)] with log p̃ from one model trace
    direct        the same with log p̃(·, D) compiled once by torch.jit.trace (the default)

ms/step = wall time / steps (median over interleaved repeats). The *floor* is one forward and
backward pass of the compiled log joint alone: the model's own tensor work, which no loop can
avoid; overhead = ms/step - floor.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
import warnings

import pyro
import torch

from bayes_unlearn.inference.latent import BoundModel
from bayes_unlearn.inference.svi import DirectELBO, make_guide, optimise_elbo, scaled_log_joint
from bayes_unlearn.models import BayesianMLP
from bayes_unlearn.models.data import synthetic_1d

VARIANTS = {"stock": dict(elbo="trace"), "direct-eager": dict(elbo="direct", jit=False),
            "direct": dict(elbo="direct", jit=True)}


def default_bnn() -> BayesianMLP:
    """BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1): d = 1153."""
    return BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1)


def _run(model, bound: BoundModel, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
         batch_size: int | None = None, final: dict | None = None, **variant) -> float:
    """ms/step of ``steps`` SVI steps (the convergence rule switched off); the last loss goes to ``final``."""
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        guide = make_guide(model, "meanfield", bound.layout)
        guide(x, y)
        rep = optimise_elbo(model, guide, (x, y), num_steps=steps + 10, lr=0.01, window=steps + 10,
                            max_plateaus=10**9, progress=False, bound_model=bound, batch_size=batch_size,
                            **variant)
    if final is not None:
        final["loss"] = rep["losses"][-1]
    return rep["wall_time_s"] / rep["steps"] * 1e3


def _jit_trace_elbo(model, bound, x, y, steps: int, seed: int) -> dict:
    """Pyro's own JitTrace_ELBO in the same loop, where it works."""
    from pyro.infer import JitTrace_ELBO

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"ms_per_step": _run(model, bound, x, y, steps, seed, elbo="trace", loss=JitTrace_ELBO())}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:200],
                "note": "JitTrace_ELBO reads parameters from Pyro's global param store; the package's guides "
                        "keep module-local parameters (module_local_params=True), so it cannot run them"}


def _floor_ms(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    """One forward + backward of the jit-compiled log joint (no guide, no optimiser), ms."""
    theta = torch.zeros(bound.layout.dim)
    d = DirectELBO(lambda t, a, b: scaled_log_joint(bound, t, a, b))
    f = d._fn(theta, (x, y))
    t = theta.clone().requires_grad_(True)
    for _ in range(10):
        f(t, x, y).backward()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(t, x, y).backward()
    return (time.perf_counter() - t0) / reps * 1e3


def _profile(model, bound, x, y, steps: int, variant: dict, top: int = 8) -> list[dict]:
    pr = cProfile.Profile()
    pr.enable()
    _run(model, bound, x, y, steps, 0, **variant)
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]  # by own (total) time
    return [{"function": f"{fn[0].split('site-packages/')[-1]}:{fn[1]}({fn[2]})", "calls": v[1],
             "own_ms_per_step": v[2] / (steps + 10) * 1e3, "cum_ms_per_step": v[3] / (steps + 10) * 1e3}
            for fn, v in rows]


def svi_step_benchmark(n: int = 600, steps: int = 200, repeats: int = 5, big_n: int = 100_000,
                       big_steps: int = 20, batch_size: int = 1000, seed: int = 0) -> dict:
    """ms/step stock vs direct on the default BNN + synthetic_1d(n); minibatch cost at ``big_n``."""
    model = default_bnn()
    data = synthetic_1d(n=n, seed=seed)
    bound = BoundModel(model, data.x, data.y)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    floors = []
    for _ in range(repeats):  # interleaved, so that machine load hits every variant (and the floor) alike
        for name, variant in VARIANTS.items():
            times[name].append(_run(model, bound, data.x, data.y, steps, seed, **variant))
        floors.append(_floor_ms(bound, data.x, data.y, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = statistics.median(floors)
    finals = {}
    for name, variant in VARIANTS.items():  # the same draws and objective: the same trajectory
        finals[name] = {}
        _run(model, bound, data.x, data.y, steps, seed, final=finals[name], **variant)
    out = {"model": repr(model), "num_params": bound.layout.dim, "n": n, "steps": steps, "repeats": repeats,
           "ms_per_step": med, "ms_per_step_all": times, "floor_ms": floor, "floor_ms_all": floors,
           "overhead_ms": {k: v - floor for k, v in med.items()},
           "speedup_total": med["stock"] / med["direct"],
           "speedup_overhead": (med["stock"] - floor) / max(med["direct"] - floor, 1e-9),
           "final_loss_after_steps": {k: v["loss"] for k, v in finals.items()},
           "jit_trace_elbo": _jit_trace_elbo(model, bound, data.x, data.y, steps, seed),
           "profile": {"stock": _profile(model, bound, data.x, data.y, steps, VARIANTS["stock"]),
                       "direct": _profile(model, bound, data.x, data.y, steps, VARIANTS["direct"])}}
    big = synthetic_1d(n=big_n, seed=seed)
    bb = BoundModel(model, big.x[:10], big.y[:10])
    out["minibatch"] = {"n": big_n, "batch_size": batch_size,
                        "full_batch_ms_per_step": _run(model, bb, big.x, big.y, big_steps, seed, elbo="direct"),
                        "minibatch_ms_per_step": _run(model, bb, big.x, big.y, big_steps, seed, elbo="direct",
                                                      batch_size=batch_size)}
    return out
