"""Variational inference with Pyro autoguides (Ranganath et al., 2014; Kucukelbir et al., 2017).

Maximises the evidence lower bound over a Gaussian family q_φ(θ) on the flat latent vector θ,

    ELBO(φ) = E_{q_φ}[log p̃(θ, D)] - E_{q_φ}[log q_φ(θ)]  ≤  log p(D),

with reparameterised Monte-Carlo gradients (``Trace_ELBO``) and ``ClippedAdam``. Families:

    "meanfield"  AutoDiagonalNormal             Σ = diag(s²)
    "lowrank"    AutoLowRankMultivariateNormal  Σ = F Fᵀ + diag(c)
    "fullrank"   AutoMultivariateNormal         Σ = L Lᵀ

Convergence rule (deterministic, scale-free): losses are averaged over windows of ``window``
steps; when a window's mean fails to improve on the best so far by more than two standard
errors of the window mean, the step size is halved ("plateau"). The fit stops after
``max_plateaus`` halvings or ``num_steps`` steps. A non-finite loss or parameter raises
:class:`DivergenceError` at once.

Guides are built with ``pyro.settings.context(module_local_params=True)``, so two fits never share
parameters through Pyro's global param store.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim.clipped_adam import ClippedAdam
from tqdm.auto import tqdm

from .latent import BoundModel, LatentLayout

__all__ = ["GUIDES", "DivergenceError", "make_guide", "optimise_elbo", "guide_to_fields", "warm_start_guide"]

GUIDES = {"meanfield": AutoDiagonalNormal, "lowrank": AutoLowRankMultivariateNormal,
          "fullrank": AutoMultivariateNormal}
STRUCTURE_OF = {"meanfield": "diag", "lowrank": "lowrank", "fullrank": "full"}


class DivergenceError(RuntimeError):
    """The optimisation ran away (non-finite loss or parameters, or a monitor said so)."""


def make_guide(model: Callable, family: str, layout: LatentLayout, init_loc: torch.Tensor | None = None,
               init_scale: float = 0.05, rank: int | None = None):
    """An autoguide of ``family`` for ``model``, initialised at θ = ``init_loc`` when given."""
    if family not in GUIDES:
        raise ValueError(f"unknown guide family {family!r}; choose one of {sorted(GUIDES)}")
    kw = {"init_scale": init_scale}
    if init_loc is not None:
        kw["init_loc_fn"] = init_to_value(values={k: v.detach() for k, v in layout.unpack(init_loc).items()})
    if family == "lowrank":
        kw["rank"] = rank
    with pyro.settings.context(module_local_params=True):
        return GUIDES[family](model, **kw)


def guide_to_fields(guide, family: str) -> dict[str, torch.Tensor]:
    """The fitted guide's posterior as ``Posterior`` fields (loc + covariance structure), detached."""
    with torch.no_grad():
        q = guide.get_posterior()
        if family == "meanfield":
            return {"loc": q.mean.clone(), "scale": q.stddev.clone()}
        if family == "lowrank":
            return {"loc": q.loc.clone(), "cov_factor": q.cov_factor.clone(), "cov_diag": q.cov_diag.clone()}
        return {"loc": q.loc.clone(), "scale_tril": q.scale_tril.clone()}


def warm_start_guide(guide, family: str, fields: dict[str, torch.Tensor]) -> None:
    """Set an initialised guide's parameters to a given Gaussian (loc/scale/... as in guide_to_fields)."""
    with torch.no_grad():
        guide.loc.data.copy_(fields["loc"])
        if family == "meanfield":
            guide.scale = fields["scale"].clone()
        elif family == "lowrank":
            # pyro: cov = (F ∘ s)(F ∘ s)ᵀ + diag(s²)
            s = fields["cov_diag"].sqrt()
            guide.scale = s.clone()
            guide.cov_factor.data = (fields["cov_factor"] / s[:, None]).clone()
        else:
            L = fields["scale_tril"]
            s = L.diagonal().clone()
            guide.scale = s
            guide.scale_tril = (L / s[:, None]).clone()


def optimise_elbo(model: Callable, guide, args: tuple, *, num_steps: int = 10000, lr: float = 0.03,
                  num_particles: int = 1, clip_norm: float = 10.0, window: int = 200, max_plateaus: int = 10,
                  min_steps: int = 0, loss: Trace_ELBO | None = None, progress: bool = True,
                  monitor: Callable[[int, float], str | None] | None = None, desc: str = "SVI") -> dict:
    """Run SVI until the convergence rule of the module docstring; return the loss history.

    ``monitor(step, loss)`` may return a message to stop early (reported as ``stopped``).
    Returns ``{"losses", "steps", "converged", "stopped", "wall_time_s"}``.
    """
    if num_steps < 1 or lr <= 0 or window < 2:
        raise ValueError(f"need num_steps >= 1, lr > 0 and window >= 2 (got {num_steps}, {lr}, {window})")
    t0 = time.perf_counter()
    elbo = loss or Trace_ELBO(num_particles=num_particles)
    with pyro.settings.context(module_local_params=True):
        guide(*args)  # initialise parameters
        optim = ClippedAdam(guide.parameters(), lr=lr, clip_norm=clip_norm)
        loss_fn = elbo.differentiable_loss
        losses: list[float] = []
        best, plateaus, converged, stopped = math.inf, 0, False, None
        bar = tqdm(total=num_steps, desc=desc, disable=not progress, leave=False)
        try:
            for step in range(num_steps):
                optim.zero_grad()
                value = loss_fn(model, guide, *args)
                value.backward()
                optim.step()
                v = float(value.detach())
                # parameters are checked once a window (the check costs as much as a step for big guides)
                check_params = (step + 1) % window == 0
                if not math.isfinite(v) or (check_params and not all(torch.isfinite(p).all()
                                                                     for p in guide.parameters())):
                    raise DivergenceError(
                        f"{desc}: the loss became {v} at step {step}; lower lr (now {lr}) or check the model "
                        "and data scale")
                losses.append(v)
                if monitor is not None:
                    stopped = monitor(step, v)
                    if stopped:
                        break
                if (step + 1) % window == 0:
                    w = torch.tensor(losses[-window:])
                    mean, se = float(w.mean()), float(w.std() / math.sqrt(window))
                    bar.set_postfix(loss=f"{mean:.4g}", lr=f"{optim.param_groups[0]['lr']:.2g}")
                    if step + 1 >= min_steps and mean > best - 2 * se:
                        plateaus += 1
                        if plateaus >= max_plateaus:
                            converged = True
                            bar.update(1)
                            break
                        for g in optim.param_groups:
                            g["lr"] *= 0.5
                    best = min(best, mean)
                bar.update(1)
        finally:
            bar.close()
    return {"losses": losses, "steps": len(losses), "converged": converged, "stopped": stopped,
            "wall_time_s": time.perf_counter() - t0}


def fit_svi_fields(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, family: str, *, seed: int = 0,
                   init_loc: torch.Tensor | None = None, init_fields: dict | None = None,
                   init_scale: float = 0.05, rank: int | None = None, progress: bool = True,
                   **options) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit one autoguide to ``bound.model`` on (x, y); return Posterior fields and the fit report."""
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        guide = make_guide(bound.model, family, bound.layout, init_loc=init_loc, init_scale=init_scale, rank=rank)
        if init_fields is not None:
            guide(x, y)
            warm_start_guide(guide, family, init_fields)
        report = optimise_elbo(bound.model, guide, (x, y), progress=progress, desc=f"SVI ({family})", **options)
        fields = guide_to_fields(guide, family)
    names = list(guide._unconstrained_shapes)
    if names != bound.layout.names:
        raise RuntimeError(f"guide site order {names} differs from the model layout {bound.layout.names}")
    return fields, report
