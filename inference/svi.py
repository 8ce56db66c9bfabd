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
``max_plateaus`` halvings or ``num_steps`` steps. A non-finite loss, gradient or parameter (also one
found by torch's argument validation while the guide's distribution is built) is a divergence: with
``restarts`` left the fit resumes from the last state that passed a window check with half the step
size, otherwise it raises :class:`DivergenceError` naming the step, the value and the remedy.

Defaults of ``fit`` (:func:`family_defaults`): ``lr=0.03`` for the location and scales, times
``factor_lr`` = 1/√(d-1) (full-rank Cholesky factor) or 1/√rank (low-rank factor) for the covariance
factor, because Adam moves every coordinate by about ``lr`` per step and a factor's row of k entries
then by about lr·√k; ``init_scale=0.05``; ``restarts=3``; for the full-rank family log q(θ) is taken
from the draw's noise (``noise_logq``, :meth:`DirectELBO._draw`). ``optimise_elbo`` itself keeps its
old defaults (one step size, no restarts) for its other callers.

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

import copy
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
           "optimise_elbo", "scaled_log_joint", "guide_to_fields", "warm_start_guide", "guide_site_names",
           "family_defaults"]

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
        try:
            q = guide.get_posterior()
        except ValueError as e:
            if not _is_invalid_argument(e):
                raise
            raise DivergenceError(f"the fitted guide has non-finite or out-of-support parameters ({str(e)[:160]}); "
                                  "lower lr or init_scale") from e
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
    """log p̃(θ) + scale · Σ_i ℓ_i(θ) on (x, y), from one trace of the model (scalar for θ [d]):
    :meth:`BoundModel.log_joint` as a function of (bound, θ, x, y), the form :class:`DirectELBO` compiles."""
    return bound.log_joint(theta, x, y, scale)


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

    def __init__(self, log_joint: Callable[..., torch.Tensor], num_particles: int = 1, jit: bool = True,
                 noise_logq: bool = False):
        if num_particles < 1:
            raise ValueError(f"num_particles must be positive, got {num_particles}")
        self.log_joint, self.num_particles, self.jit = log_joint, int(num_particles), jit
        self.noise_logq = noise_logq
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

    def _draw(self, guide, shape: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """θ ~ q (reparameterised) and log q(θ).

        With ``noise_logq`` and a full-rank guide, θ = μ + L ε and log q(θ) = -½‖ε‖² - Σ log L_ii
        - (d/2) log 2π from the noise ε itself: the same value and gradient as ``q.log_prob(θ)`` in exact
        arithmetic, but without the triangular solve L⁻¹(θ - μ), which in float32 loses all accuracy
        once the unit-triangular factor is ill-conditioned (the fit then "improves" without bound: the
        default BNN's full-rank fit reached a loss of -5e7 at step 29 and NaN at 32), and without
        building (and validating) a ``MultivariateNormal``."""
        if self.noise_logq and isinstance(guide, AutoMultivariateNormal):
            L = guide.scale[..., None] * guide.scale_tril
            eps = torch.empty(shape + guide.loc.shape, dtype=guide.loc.dtype).normal_()
            theta = guide.loc + (eps @ L.transpose(-1, -2) if shape else L @ eps)
            d = guide.loc.shape[-1]
            logq = -0.5 * (eps * eps).sum(-1) - L.diagonal().log().sum() - 0.5 * d * math.log(2 * math.pi)
            return theta, logq
        q = guide.get_posterior()
        theta = q.rsample(shape)
        return theta, q.log_prob(theta)

    def differentiable_loss(self, guide, *args) -> torch.Tensor:
        """-[log p̃(θ, ·) - log q(θ)] averaged over ``num_particles`` reparameterised draws θ ~ q."""
        if self.num_particles == 1:
            theta, logq = self._draw(guide)
            return -(self._fn(theta, args)(theta, *args) - logq)
        theta, logq = self._draw(guide, (self.num_particles,))
        f = lambda t: self.log_joint(t, *args)  # noqa: E731
        try:
            lj = torch.func.vmap(f)(theta)
        except Exception:  # models with data-dependent Python control flow: one particle at a time
            lj = torch.stack([f(t) for t in theta])
        return -(lj - logq).mean()


def _is_invalid_argument(e: ValueError) -> bool:
    """torch's distribution argument validation (a NaN/inf or out-of-support guide parameter)."""
    return "invalid values" in str(e) or "Expected parameter" in str(e)


def _param_groups(guide, lr: float, lr_scale: dict[str, float] | None) -> list[dict]:
    """One optimiser group per guide parameter; ``lr_scale`` multiplies the step size of named ones
    (a key matches a parameter ``key`` or its unconstrained ``key_unconstrained``)."""
    groups = []
    for name, p in guide.named_parameters():
        base = name[:-len("_unconstrained")] if name.endswith("_unconstrained") else name
        groups.append({"params": [p], "lr": lr * (lr_scale or {}).get(base, 1.0), "name": base})
    return groups


def optimise_elbo(model: Callable, guide, args: tuple, *, num_steps: int = 10000, lr: float = 0.03,
                  num_particles: int = 1, clip_norm: float = 10.0, window: int = 200, max_plateaus: int = 10,
                  min_steps: int = 0, loss: Trace_ELBO | None = None, progress: bool = True,
                  monitor: Callable[[int, float], str | None] | None = None, desc: str = "SVI",
                  elbo: str = "trace", bound_model: BoundModel | None = None,
                  log_joint: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  batch_size: int | None = None, batch_seed: int = 0, jit: bool = True,
                  lr_scale: dict[str, float] | None = None, restarts: int = 0, noise_logq: bool = False) -> dict:
    """Run SVI until the convergence rule of the module docstring; return the loss history.

    ``elbo="trace"`` uses Pyro's ``Trace_ELBO`` (or ``loss``) on ``model(*args)``; ``elbo="direct"``
    the :class:`DirectELBO` with the log joint of ``bound_model`` on ``args = (x, y)``, or ``log_joint(θ)``
    for a model without data (the unlearning model); ``jit=False`` keeps it eager. ``batch_size`` (needs ``args = (x, y)``)
    draws minibatches from a permutation seeded by ``batch_seed`` and scales their likelihood by N/B.
    ``monitor(step, loss)`` may return a message to stop early (reported as ``stopped``).

    ``lr_scale`` multiplies ``lr`` for the named guide parameters (e.g. ``{"scale_tril": 0.03}``).
    ``noise_logq`` evaluates a full-rank guide's log q from its noise (:meth:`DirectELBO._draw`).

    Divergence: a non-finite loss or gradient is caught at its step, before the optimiser applies it
    (so the parameters stay finite); parameters are also checked once a window, and a ValueError from
    torch's argument validation while the guide's distribution is built (a non-finite or out-of-support
    parameter) counts as a divergence too. With ``restarts=R > 0`` the fit resumes up to R times from
    the last state that passed a window check (parameters, optimiser moments, losses) with the step
    size halved; each restart is listed in the report's ``restarts``. When none is left it raises
    :class:`DivergenceError` naming the step, the value and the remedy.

    Returns ``{"losses", "steps", "converged", "stopped", "wall_time_s", "elbo", "restarts", ...}``.
    """
    if num_steps < 1 or lr <= 0 or window < 2:
        raise ValueError(f"need num_steps >= 1, lr > 0 and window >= 2 (got {num_steps}, {lr}, {window})")
    if elbo not in ELBOS:
        raise ValueError(f"elbo must be one of {ELBOS}, got {elbo!r}")
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
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
        loss_obj = DirectELBO(fn, num_particles=num_particles, jit=jit, noise_logq=noise_logq)
        loss_fn = lambda m, g, *a: loss_obj.differentiable_loss(g, *a)  # noqa: E731
    else:
        loss_obj = loss or Trace_ELBO(num_particles=num_particles)
        step_model = model if stream is None else _ScaleData(scale)(model)
        loss_fn = lambda m, g, *a: loss_obj.differentiable_loss(step_model, g, *a)  # noqa: E731
    with pyro.settings.context(module_local_params=True):
        try:
            guide(*args)  # initialise parameters
        except ValueError as e:
            if not _is_invalid_argument(e):
                raise
            raise DivergenceError(f"{desc}: the guide's initial parameters are not finite ({e}); check init_loc "
                                  "and init_scale") from e
        params = list(guide.parameters())
        optim = ClippedAdam(_param_groups(guide, lr, lr_scale), lr=lr, clip_norm=clip_norm)
        losses: list[float] = []
        best, plateaus, converged, stopped = math.inf, 0, False, None
        restart_log: list[dict] = []

        def snapshot(step: int) -> dict:
            return {"step": step, "params": [p.detach().clone() for p in params],
                    "optim": copy.deepcopy(optim.state_dict()), "best": best, "plateaus": plateaus}

        last_good = snapshot(0) if restarts else None
        bar = tqdm(total=num_steps, desc=desc, disable=not progress, leave=False)
        step = 0
        try:
            while step < num_steps:
                step_args = args
                if stream is not None:
                    idx = stream.next()
                    step_args = (args[0][idx], args[1][idx])
                optim.zero_grad()
                bad = None  # (what, value) of a divergence at this step
                try:
                    value = loss_fn(model, guide, *step_args)
                except ValueError as e:
                    if not _is_invalid_argument(e):
                        raise
                    bad = ("a guide parameter", f"non-finite or out of support ({str(e)[:160]})")
                if bad is None:
                    v = float(value.detach())
                    if not math.isfinite(v):
                        bad = ("the loss", v)
                    else:
                        value.backward()
                        gsum = sum(float(p.grad.sum()) for p in params if p.grad is not None)
                        if not math.isfinite(gsum):
                            bad = ("the gradient", "non-finite")
                        else:
                            optim.step()
                            # parameters are checked once a window (costs about a step for big guides)
                            if (step + 1) % window == 0 and not all(torch.isfinite(p).all() for p in params):
                                bad = ("a guide parameter", "non-finite")
                if bad is not None:
                    cur_lr = optim.param_groups[0]["lr"]
                    if len(restart_log) < restarts:
                        # resume from the last state that passed a window check, with half the step size
                        with torch.no_grad():
                            for p, saved in zip(params, last_good["params"]):
                                p.copy_(saved)
                        optim.load_state_dict(copy.deepcopy(last_good["optim"]))
                        for g in optim.param_groups:
                            g["lr"] *= 0.5
                        restart_log.append({"step": step, "what": bad[0], "value": str(bad[1]),
                                            "resumed_from": last_good["step"],
                                            "lr": optim.param_groups[0]["lr"]})
                        best, plateaus = last_good["best"], last_good["plateaus"]
                        del losses[last_good["step"]:]
                        bar.n = last_good["step"]
                        step = last_good["step"]
                        last_good = snapshot(step)  # the halved step size is part of the resumed state
                        continue
                    tried = f" after {len(restart_log)} restart(s) with halved step sizes" if restart_log else ""
                    raise DivergenceError(
                        f"{desc}: {bad[0]} became {bad[1]} at step {step}{tried}; lower lr (now {cur_lr:.3g}) "
                        "or init_scale, or check the model and data scale")
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
                            step += 1
                            break
                        for g in optim.param_groups:
                            g["lr"] *= 0.5
                    best = min(best, mean)
                    if restarts:
                        last_good = snapshot(step + 1)
                bar.update(1)
                step += 1
        finally:
            bar.close()
    out = {"losses": losses, "steps": len(losses), "converged": converged, "stopped": stopped,
           "wall_time_s": time.perf_counter() - t0, "elbo": elbo,
           "batch_size": None if stream is None else stream.batch_size, "restarts": restart_log}
    if elbo == "direct":
        out["jit"] = loss_obj.jit_status
    return out


def guide_site_names(guide) -> list[str]:
    """The latent sites of an initialised ``AutoContinuous`` guide in the order it packs them into θ.

    Pyro packs (``AutoContinuous._unpack_latent``) in the order of the stochastic nodes of the guide's
    public ``prototype_trace``; the layout of :class:`~inference.latent.BoundModel` must match it."""
    if guide.prototype_trace is None:
        raise ValueError("the guide has not been initialised: call guide(x, y) once before asking its sites")
    return [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]


def family_defaults(family: str, dim: int, rank: int | None = None) -> dict:
    """The SVI defaults of ``family`` for a d = ``dim`` latent vector (README, table of fit options).

    Adam moves every coordinate by about ``lr`` per step whatever its gradient, so a row of k free
    entries of a covariance factor moves by about lr·√k per step: the factor's step size is scaled by
    1/√k (k = d - 1 for the full-rank Cholesky factor, k = rank for the low-rank factor) so that its
    rows move as fast as the location and scales do."""
    out = {"lr": DEFAULT_LR, "init_scale": DEFAULT_INIT_SCALE, "restarts": DEFAULT_RESTARTS, "lr_scale": {}}
    if family == "fullrank":
        out["lr_scale"] = {"scale_tril": 1.0 / math.sqrt(max(dim - 1, 1))}
    elif family == "lowrank":
        k = rank if rank is not None else int(round(dim ** 0.5))
        out["lr_scale"] = {"cov_factor": 1.0 / math.sqrt(max(k, 1))}
    return out


DEFAULT_LR = 0.03
DEFAULT_INIT_SCALE = 0.05
DEFAULT_RESTARTS = 3


def fit_svi_fields(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, family: str, *, seed: int = 0,
                   init_loc: torch.Tensor | None = None, init_fields: dict | None = None,
                   init_scale: float | None = None, rank: int | None = None, progress: bool = True,
                   elbo: str = DEFAULT_ELBO, lr: float | None = None, factor_lr: float | None = None,
                   restarts: int | None = None, **options) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit one autoguide to ``bound.model`` on (x, y); return Posterior fields and the fit report.

    ``lr``, ``init_scale``, ``restarts`` and ``factor_lr`` (the multiplier of ``lr`` for the covariance
    factor) default to :func:`family_defaults`; the values used are in the report's ``defaults``."""
    dflt = family_defaults(family, bound.layout.dim, rank)
    lr = dflt["lr"] if lr is None else lr
    init_scale = dflt["init_scale"] if init_scale is None else init_scale
    restarts = dflt["restarts"] if restarts is None else restarts
    lr_scale = {k: (v if factor_lr is None else factor_lr) for k, v in dflt["lr_scale"].items()}
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        guide = make_guide(bound.model, family, bound.layout, init_loc=init_loc, init_scale=init_scale, rank=rank)
        if init_fields is not None:
            guide(x, y)
            warm_start_guide(guide, family, init_fields)
        report = optimise_elbo(bound.model, guide, (x, y), progress=progress, desc=f"SVI ({family})", elbo=elbo,
                               bound_model=bound, batch_seed=seed, lr=lr, lr_scale=lr_scale, restarts=restarts,
                               noise_logq=True, **options)
        fields = guide_to_fields(guide, family)
    report["defaults"] = {"lr": lr, "init_scale": init_scale, "restarts": restarts,
                          "factor_lr": next(iter(lr_scale.values()), None)}
    names = guide_site_names(guide)
    if names != bound.layout.names:
        raise RuntimeError(f"guide site order {names} differs from the model layout {bound.layout.names}")
    return fields, report
