"""No-U-Turn sampling (Hoffman & Gelman, 2014) as the reference posterior for small models.

Draws θ^(s) ~ p(θ | D) with Pyro's ``NUTS`` kernel, one chain after another (each with its own
seed, so results do not depend on process pools), and keeps them as an "empirical" ``Posterior``
in the flat unconstrained space. Convergence is checked through ArviZ: the rank-normalised split
R-hat (Vehtari et al., 2021) should be below 1.01 and the bulk effective sample size large; the
worst values over all coordinates go to ``meta['diagnostics']`` and a warning is recorded when
they fail these thresholds.
"""

from __future__ import annotations

import time

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from .latent import BoundModel

__all__ = ["run_nuts"]


def run_nuts(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 500,
             warmup_steps: int = 500, num_chains: int = 2, seed: int = 0, target_accept_prob: float = 0.8,
             max_tree_depth: int = 10, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Run NUTS; return unconstrained draws [chains·samples, d] and a report with R-hat/ESS."""
    import arviz as az  # imported lazily: it is slow to import and only NUTS needs it here

    if num_samples < 1 or warmup_steps < 0 or num_chains < 1:
        raise ValueError("need num_samples >= 1, warmup_steps >= 0 and num_chains >= 1")
    t0 = time.perf_counter()
    chains = []
    for c in range(num_chains):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1000 * c)
            kernel = NUTS(bound.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
            mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                        disable_progbar=not progress)
            with pyro.validation_enabled(False):
                mcmc.run(x, y)
            values = {k: v.detach() for k, v in mcmc.get_samples().items() if k in bound.layout.names}
        chains.append(bound.layout.pack(values, constrained=True))
    draws = torch.stack(chains)  # [C, S, d]
    idata = az.from_dict(posterior={"theta": draws.numpy()[..., None, :].squeeze(-2)})
    rhat = az.rhat(idata)["theta"].values if num_chains > 1 else np.full(draws.shape[-1], np.nan)
    ess = az.ess(idata)["theta"].values
    diag = {"max_rhat": float(np.nanmax(rhat)) if num_chains > 1 else None,
            "min_ess_bulk": float(np.min(ess)), "num_chains": num_chains, "num_samples": num_samples,
            "warmup_steps": warmup_steps}
    warnings = []
    if num_chains > 1 and diag["max_rhat"] > 1.01:
        warnings.append(f"NUTS: max R-hat {diag['max_rhat']:.3f} > 1.01; run longer chains")
    if diag["min_ess_bulk"] < 100:
        warnings.append(f"NUTS: min bulk ESS {diag['min_ess_bulk']:.0f} < 100; run longer chains")
    report = {"diagnostics": diag, "warnings": warnings, "wall_time_s": time.perf_counter() - t0}
    return draws.reshape(-1, draws.shape[-1]), report
