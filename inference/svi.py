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

Two estimators of the same objective (``elbo=``):

    "trace"   Pyro's ``Trace_ELBO``: traces guide and model every step (the stock loop).
    "direct"  θ = q_φ.rsample() (the very draw the guide would make), and
                  -ELBO ≈ -[log p̃(θ, D) - log q_φ(θ)]
              with log p̃(θ, D) from :class:`~inference.latent.BoundModel` (prior in unconstrained
              space with its Jacobian + likelihood). For an ``AutoContinuous`` guide the Jacobian
              terms of Trace_ELBO's guide and model cancel to exactly this, so both estimators give
              the same number for the same draw; "direct" skips Pyro's per-step tracing, and
              compiles log p̃(·, D) once with ``torch.jit.trace`` (checked against the eager value at
              two points; a model whose trace does not reproduce it runs eagerly). With
              ``num_particles=S > 1`` the S draws θ ∈ ℝ^{S×d} are taken at once and log p̃ is
              vectorised over them with torch.func.vmap (eager); the loss is their mean, as in
              Trace_ELBO (whose S draws come one at a time, so the draws themselves differ).

Minibatches (``batch_size=B < N``): the log-likelihood of a batch b is scaled by N/B,

    log p̃(θ) + (N/B) Σ_{i∈b} ℓ_i(θ),      E_b[·] = log p̃(θ, D),

an unbiased estimate of the log joint (what ``pyro.plate(..., subsample_size=B)`` computes). We do
not use plate subsampling because the model convention feeds x to the model, which would then have
to index it by the plate's indices; scaling the observed site of the ``data`` plate works for every
conforming model unchanged. Batches are equal-sized slices of a seeded permutation, redrawn every
epoch (the N mod B left-over points of an epoch wait for the next one). The convergence rule needs
no change: the window standard error already contains the minibatch noise.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim.clipped_adam import ClippedAdam
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from .latent import DATA_PLATE, BoundModel, LatentLayout

__all__ = ["GUIDES", "ELBOS", "DEFAULT_ELBO", "DivergenceError", "DirectELBO", "BatchStream", "make_guide",
           "optimise_elbo", "scaled_log_joint", "guide_to_fields", "warm_start_guide"]

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


ELBOS = ("direct", "trace")
DEFAULT_ELBO = "direct"


class _ScaleData(Messenger):
    """Multiply the log density of the observed site in the ``data`` plate by ``scale`` (= N/B)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"] and \
                any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.scale


def scaled_log_joint(bound: BoundModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     scale: float = 1.0) -> torch.Tensor:
    """log p̃(θ) + scale · Σ_i ℓ_i(θ) on (x, y), from one trace of the model (scalar for θ [d])."""
    tr = bound.trace(theta, x, y)
    total = theta.new_zeros(())
    for name in bound.layout.names:
        site = tr.nodes[name]
        total = total + site["fn"].log_prob(site["value"]).sum()
    obs = bound._obs_log_prob(tr).sum()
    return total + bound.layout.log_abs_det_jacobian(theta) + (obs if scale == 1.0 else scale * obs)


class BatchStream:
    """Equal-sized minibatch indices from a seeded permutation, redrawn every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.n, self.batch_size = n, min(int(batch_size), n)
        self.gen = torch.Generator().manual_seed(int(seed))
        self._perm, self._pos = None, n

    @property
    def scale(self) -> float:
        return self.n / self.batch_size

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self.n:
            self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


class DirectELBO:
    """-ELBO of an ``AutoContinuous`` guide against a log joint over the flat θ (module docstring).

    ``log_joint(theta, *args)`` is the log joint (scalar for θ [d]); ``args`` are the step's data
    (a minibatch, or nothing). With ``jit`` it is compiled once per argument shape by
    ``torch.jit.trace`` and checked against the eager value at two points; on any mismatch or error
    the eager function is used (``self.jit_status`` says which and why).
    """

    def __init__(self, log_joint: Callable[..., torch.Tensor], num_particles: int = 1, jit: bool = True):
        if num_particles < 1:
            raise ValueError(f"num_particles must be positive, got {num_particles}")
        self.log_joint, self.num_particles, self.jit = log_joint, int(num_particles), jit
        self._compiled: dict = {}
        self.jit_status: dict = {}

    def _fn(self, theta: torch.Tensor, args: tuple) -> Callable[..., torch.Tensor]:
        if not self.jit or self.num_particles > 1:
            return self.log_joint
        key = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        if key not in self._compiled:
            self._compiled[key] = self._compile(theta.detach(), args)
        return self._compiled[key]

    def _compile(self, theta: torch.Tensor, args: tuple) -> Callable[..., torch.Tensor]:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.log_joint, (theta, *args), check_trace=False)
                g = torch.Generator().manual_seed(0)
                other = theta + 0.1 * torch.randn(theta.shape, generator=g, dtype=theta.dtype)
                for t in (theta, other):
                    a, b = traced(t, *args), self.log_joint(t, *args)
                    if not torch.allclose(a, b, rtol=1e-5, atol=1e-5 * (1.0 + float(b.abs()))):
                        raise RuntimeError(f"traced value {float(a):.8g} != eager {float(b):.8g}")
            self.jit_status = {"jit": True}
            return traced
        except Exception as e:  # data-dependent control flow, untraceable ops, ...: run eagerly
            self.jit_status = {"jit": False, "reason": f"{type(e).__name__}: {e}"[:200]}
            return self.log_joint

    def differentiable_loss(self, guide, *args) -> torch.Tensor:
        """-[log p̃(θ, ·) - log q(θ)] averaged over ``num_particles`` reparameterised draws θ ~ q."""
        q = guide.get_posterior()
        if self.num_particles == 1:
            theta = q.rsample()
            return -(self._fn(theta, args)(theta, *args) - q.log_prob(theta))
        theta = q.rsample((self.num_particles,))
        f = lambda t: self.log_joint(t, *args)  # noqa: E731
        try:
            lj = torch.func.vmap(f)(theta)
        except Exception:  # models with data-dependent Python control flow: one particle at a time
            lj = torch.stack([f(t) for t in theta])
        return -(lj - q.log_prob(theta)).mean()


def optimise_elbo(model: Callable, guide, args: tuple, *, num_steps: int = 10000, lr: float = 0.03,
                  num_particles: int = 1, clip_norm: float = 10.0, window: int = 200, max_plateaus: int = 10,
                  min_steps: int = 0, loss: Trace_ELBO | None = None, progress: bool = True,
                  monitor: Callable[[int, float], str | None] | None = None, desc: str = "SVI",
                  elbo: str = "trace", bound_model: BoundModel | None = None,
                  log_joint: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  batch_size: int | None = None, batch_seed: int = 0, jit: bool = True) -> dict:
    """Run SVI until the convergence rule of the module docstring; return the loss history.

    ``elbo="trace"`` uses Pyro's ``Trace_ELBO`` (or ``loss``) on ``model(*args)``; ``elbo="direct"``
    the :class:`DirectELBO` with the log joint of ``bound_model`` on ``args = (x, y)``, or ``log_joint(θ)``
    for a model without data (the unlearning model); ``jit=False`` keeps it eager. ``batch_size`` (needs ``args = (x, y)``)
    draws minibatches from a permutation seeded by ``batch_seed`` and scales their likelihood by N/B.
    ``monitor(step, loss)`` may return a message to stop early (reported as ``stopped``).
    Returns ``{"losses", "steps", "converged", "stopped", "wall_time_s", "elbo", ...}``.
    """
    if num_steps < 1 or lr <= 0 or window < 2:
        raise ValueError(f"need num_steps >= 1, lr > 0 and window >= 2 (got {num_steps}, {lr}, {window})")
    if elbo not in ELBOS:
        raise ValueError(f"elbo must be one of {ELBOS}, got {elbo!r}")
    t0 = time.perf_counter()
    stream = None
    if batch_size is not None and batch_size < len(args[0]):
        if len(args) != 2:
            raise ValueError("batch_size needs the data as args = (x, y)")
        stream = BatchStream(len(args[0]), batch_size, batch_seed)
    scale = 1.0 if stream is None else stream.scale
    if elbo == "direct":
        if log_joint is not None:
            fn = lambda theta, *a: log_joint(theta)  # noqa: E731
        elif bound_model is not None:
            fn = lambda theta, x, y: scaled_log_joint(bound_model, theta, x, y, scale)  # noqa: E731
        else:
            raise ValueError("elbo='direct' needs bound_model= (a BoundModel of the model) or log_joint=")
        loss_obj = DirectELBO(fn, num_particles=num_particles, jit=jit)
        loss_fn = lambda m, g, *a: loss_obj.differentiable_loss(g, *a)  # noqa: E731
    else:
        loss_obj = loss or Trace_ELBO(num_particles=num_particles)
        step_model = model if stream is None else _ScaleData(scale)(model)
        loss_fn = lambda m, g, *a: loss_obj.differentiable_loss(step_model, g, *a)  # noqa: E731
    with pyro.settings.context(module_local_params=True):
        guide(*args)  # initialise parameters
        optim = ClippedAdam(guide.parameters(), lr=lr, clip_norm=clip_norm)
        losses: list[float] = []
        best, plateaus, converged, stopped = math.inf, 0, False, None
        bar = tqdm(total=num_steps, desc=desc, disable=not progress, leave=False)
        try:
            for step in range(num_steps):
                step_args = args
                if stream is not None:
                    idx = stream.next()
                    step_args = (args[0][idx], args[1][idx])
                optim.zero_grad()
                value = loss_fn(model, guide, *step_args)
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
    out = {"losses": losses, "steps": len(losses), "converged": converged, "stopped": stopped,
           "wall_time_s": time.perf_counter() - t0, "elbo": elbo,
           "batch_size": None if stream is None else stream.batch_size}
    if elbo == "direct":
        out["jit"] = loss_obj.jit_status
    return out


def fit_svi_fields(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, family: str, *, seed: int = 0,
                   init_loc: torch.Tensor | None = None, init_fields: dict | None = None,
                   init_scale: float = 0.05, rank: int | None = None, progress: bool = True,
                   elbo: str = DEFAULT_ELBO, **options) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit one autoguide to ``bound.model`` on (x, y); return Posterior fields and the fit report."""
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        guide = make_guide(bound.model, family, bound.layout, init_loc=init_loc, init_scale=init_scale, rank=rank)
        if init_fields is not None:
            guide(x, y)
            warm_start_guide(guide, family, init_fields)
        report = optimise_elbo(bound.model, guide, (x, y), progress=progress, desc=f"SVI ({family})", elbo=elbo,
                               bound_model=bound, batch_seed=seed, **options)
        fields = guide_to_fields(guide, family)
    names = list(guide._unconstrained_shapes)
    if names != bound.layout.names:
        raise RuntimeError(f"guide site order {names} differs from the model layout {bound.layout.names}")
    return fields, report
