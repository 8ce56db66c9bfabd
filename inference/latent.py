"""The flat unconstrained latent vector θ of a Pyro model, and the model's log densities over it.

Every posterior in this package is a distribution over one vector θ ∈ ℝ^d: the model's latent
sites, each mapped to unconstrained space by ``biject_to(site.support).inv`` and flattened in
prototype-trace order -- the same convention as Pyro's ``AutoContinuous`` guides, so that
``guide.get_posterior()`` is directly a distribution over θ.

For a model p(θ) ∏_i p(y_i | x_i, θ) written as a Pyro program ``model(x, y=None)`` we derive,
never re-implement by hand:

    log p̃(θ)          = Σ_sites log p(T(θ_s)) + log|det ∂T/∂θ_s|      (prior in unconstrained space)
    ℓ_i(θ)            = log p(y_i | x_i, θ)                          (per-point log-likelihood)
    log p̃(θ, D)       = log p̃(θ) + Σ_i ℓ_i(θ)                       (log joint)

by conditioning the model on the unpacked latents (``poutine.condition``), tracing it on (x, y)
and reading the log densities of its sites. The observed site is found by tracing.

Model convention: ``model(x, y=None)`` with one ``pyro.plate("data", len(x))`` holding exactly
one observed site (any name); every latent site lies outside that plate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to

__all__ = ["LatentSite", "LatentLayout", "BoundModel", "ModelConventionError", "DATA_PLATE", "check_feature_count"]

DATA_PLATE = "data"

# Constraints that can be written to / read from a file by name (used by Posterior.save/load).
_NAMED_CONSTRAINTS: dict[str, Any] = {
    "real": constraints.real,
    "real_vector": constraints.real_vector,
    "positive": constraints.positive,
    "nonnegative": constraints.nonnegative,
    "unit_interval": constraints.unit_interval,
    "simplex": constraints.simplex,
    "lower_cholesky": constraints.lower_cholesky,
    "corr_cholesky": constraints.corr_cholesky,
}


class ModelConventionError(ValueError):
    """The model does not follow the ``model(x, y=None)`` convention of this package."""


def _constraint_name(c: Any) -> str | None:
    for name, known in _NAMED_CONSTRAINTS.items():
        if c is known:
            return name
    base = c
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is not c:
        inner = _constraint_name(base)
        return None if inner is None else f"independent:{c.reinterpreted_batch_ndims}:{inner}"
    if isinstance(c, constraints.interval):
        return f"interval:{float(c.lower_bound)!r}:{float(c.upper_bound)!r}"
    if isinstance(c, constraints.greater_than_eq):
        return f"greater_than_eq:{float(c.lower_bound)!r}"
    if isinstance(c, constraints.greater_than):
        return f"greater_than:{float(c.lower_bound)!r}"
    return None


def _constraint_from_name(name: str) -> Any:
    if name in _NAMED_CONSTRAINTS:
        return _NAMED_CONSTRAINTS[name]
    kind, _, rest = name.partition(":")
    if kind == "independent":
        n, _, inner = rest.partition(":")
        return constraints.independent(_constraint_from_name(inner), int(n))
    if kind == "interval":
        lo, hi = rest.split(":")
        return constraints.interval(float(lo), float(hi))
    if kind == "greater_than":
        return constraints.greater_than(float(rest))
    if kind == "greater_than_eq":
        return constraints.greater_than_eq(float(rest))
    raise ValueError(f"unknown constraint name {name!r} in a posterior file")


@dataclass(frozen=True)
class LatentSite:
    """One latent site: its name, constrained shape, unconstrained shape and support."""

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    support: Any

    @property
    def numel(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self):
        return biject_to(self.support)

    def to_json(self) -> dict:
        name = _constraint_name(self.support)
        if name is None:
            raise ValueError(
                f"site {self.name!r} has support {self.support!r}, which cannot be written to a file; "
                "pass model= to Posterior.load to rebuild it from the model instead"
            )
        return {"name": self.name, "shape": list(self.shape),
                "unconstrained_shape": list(self.unconstrained_shape), "support": name}

    @classmethod
    def from_json(cls, d: dict) -> "LatentSite":
        return cls(d["name"], tuple(d["shape"]), tuple(d["unconstrained_shape"]),
                   _constraint_from_name(d["support"]))


@dataclass(frozen=True)
class LatentLayout:
    """How the flat unconstrained vector θ splits into the model's latent sites."""

    sites: tuple[LatentSite, ...]

    @property
    def dim(self) -> int:
        return sum(s.numel for s in self.sites)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for s in self.sites:
            out[s.name] = slice(start, start + s.numel)
            start += s.numel
        return out

    def unpack(self, theta: torch.Tensor, constrain: bool = True) -> dict[str, torch.Tensor]:
        """θ of shape [..., d] -> {site: value of shape [..., *site.shape]} (constrained by default)."""
        if theta.shape[-1] != self.dim:
            raise ValueError(f"theta has last dimension {theta.shape[-1]}, expected {self.dim}")
        batch = theta.shape[:-1]
        out = {}
        for s, sl in zip(self.sites, self.slices().values()):
            u = theta[..., sl].reshape(batch + s.unconstrained_shape)
            out[s.name] = s.transform(u) if constrain else u
        return out

    def pack(self, values: dict[str, torch.Tensor], constrained: bool = True) -> torch.Tensor:
        """Inverse of :meth:`unpack`: {site: value} -> θ of shape [..., d]."""
        parts = []
        for s in self.sites:
            v = values[s.name]
            u = s.transform.inv(v) if constrained else v
            batch = u.shape[: u.dim() - len(s.unconstrained_shape)]
            parts.append(u.reshape(batch + (-1,)))
        return torch.cat(parts, dim=-1)

    def log_abs_det_jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """Σ_s log|det ∂T_s/∂θ_s| for θ of shape [d] (scalar)."""
        total = theta.new_zeros(())
        for s, sl in zip(self.sites, self.slices().values()):
            if s.support is constraints.real or s.support is constraints.real_vector:
                continue
            u = theta[sl].reshape(s.unconstrained_shape)
            t = s.transform
            total = total + t.log_abs_det_jacobian(u, t(u)).sum()
        return total

    def to_json(self) -> list[dict]:
        return [s.to_json() for s in self.sites]

    @classmethod
    def from_json(cls, items: list[dict]) -> "LatentLayout":
        return cls(tuple(LatentSite.from_json(d) for d in items))


def _in_data_plate(site: dict) -> int | None:
    """The batch dim of the 'data' plate for a site, or None if it is outside that plate."""
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame.dim
    return None


class BoundModel:
    """A conforming Pyro model together with its latent layout and observed site.

    Built once per model by tracing it on example data; afterwards gives the per-point
    log-likelihood, the log prior and the log joint as functions of the flat vector θ, which
    ``torch.func`` can differentiate (gradients, Hessians, Jacobians).
    """

    def __init__(self, model: Callable, x: torch.Tensor, y: torch.Tensor | None = None):
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro program model(x, y=None), got {type(model)!r}")
        self.model = model
        y_proto = y if y is not None else None
        # the prototype trace draws latents from the prior: keep the caller's global RNG untouched
        with torch.no_grad(), pyro.validation_enabled(True), torch.random.fork_rng(devices=[]):
            try:
                tr = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(x, y_proto)
            except Exception as e:  # give the user the model-level error, with context
                raise ModelConventionError(f"tracing model(x, y) failed: {type(e).__name__}: {e}") from e
        sites, observed = [], []
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                observed.append(name)
                continue
            if _in_data_plate(site) is not None:
                raise ModelConventionError(
                    f"latent site {name!r} lies inside the {DATA_PLATE!r} plate; local latent variables are "
                    "not supported: keep every latent site outside pyro.plate('data', len(x))"
                )
            value = site["value"]
            support = site["fn"].support
            u = biject_to(support).inv(value)
            sites.append(LatentSite(name, tuple(value.shape), tuple(u.shape), support))
        if y is not None:
            obs_in_plate = [n for n in observed if _in_data_plate(tr.nodes[n]) is not None]
            if len(obs_in_plate) != 1:
                raise ModelConventionError(
                    f"expected exactly one observed site inside pyro.plate({DATA_PLATE!r}, len(x)), found "
                    f"{obs_in_plate or 'none'} (observed sites: {observed or 'none'}); see the README's model convention"
                )
            self.obs_name = obs_in_plate[0]
        else:
            # Without y, find the sampled site inside the data plate.
            cand = [n for n, s in tr.nodes.items()
                    if s["type"] == "sample" and not site_is_subsample(s) and _in_data_plate(s) is not None]
            if len(cand) != 1:
                raise ModelConventionError(f"expected one site inside pyro.plate({DATA_PLATE!r}), found {cand}")
            self.obs_name = cand[0]
        if not sites:
            raise ModelConventionError("the model has no latent sites: there is nothing to infer")
        self.layout = LatentLayout(tuple(sites))

    # -- tracing ---------------------------------------------------------------------------------
    def trace(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> poutine.Trace:
        """Trace the model with its latents fixed to θ (shape [d]); validation off for torch.func."""
        values = self.layout.unpack(theta)
        with pyro.validation_enabled(False):
            return poutine.trace(poutine.condition(self.model, data=values)).get_trace(x, y)

    def obs_log_prob(self, tr: poutine.Trace) -> torch.Tensor:
        """ℓ_i(θ) = log p(y_i | x_i, θ) of each data point, read from a trace of :meth:`trace`: shape [N].

        The observed site's log density (times its mask, if any), every batch dim other than the
        ``data`` plate's summed out."""
        site = tr.nodes[self.obs_name]
        lp = site["fn"].log_prob(site["value"])
        if site.get("mask") is not None:
            lp = lp * site["mask"]
        pdim = _in_data_plate(site)
        # reduce every batch dim other than the data plate's to get one number per data point
        lp = lp.movedim(pdim, 0)
        return lp.reshape(lp.shape[0], -1).sum(-1)

    def prior_log_prob(self, tr: poutine.Trace, theta: torch.Tensor) -> torch.Tensor:
        """log p̃(θ) = Σ_sites log p(T(θ_s)) + log|det ∂T/∂θ_s|, read from a trace of :meth:`trace` at θ [d]
        (scalar): the prior density in unconstrained space, Jacobian included."""
        total = theta.new_zeros(())
        for name in self.layout.names:
            site = tr.nodes[name]
            total = total + site["fn"].log_prob(site["value"]).sum()
        return total + self.layout.log_abs_det_jacobian(theta)

    def log_likelihood(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point log-likelihood ℓ_i(θ): shape [N] for θ [d], [S, N] for θ [S, d]."""
        if theta.dim() == 2:
            return self._batched(lambda t: self.log_likelihood(t, x, y), theta)
        return self.obs_log_prob(self.trace(theta, x, y))

    def log_prior(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p̃(θ): prior density of θ in unconstrained space (including the Jacobian term)."""
        if theta.dim() == 2:
            return self._batched(lambda t: self.log_prior(t, x), theta)
        tr = self.trace(theta, x, torch.zeros(len(x), dtype=x.dtype))  # a dummy y: nothing is sampled
        return self.prior_log_prob(tr, theta)

    def log_joint(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """log p̃(θ) + scale · Σ_i ℓ_i(θ) from one trace (scalar for θ [d], [S] for θ [S, d]).

        ``scale`` = 1 is the log joint log p̃(θ, D); ``scale`` = N/B on a minibatch of B of the N points
        is its unbiased minibatch estimate (``inference.svi``)."""
        if theta.dim() == 2:
            return self._batched(lambda t: self.log_joint(t, x, y, scale), theta)
        tr = self.trace(theta, x, y)
        obs = self.obs_log_prob(tr).sum()
        return self.prior_log_prob(tr, theta) + (obs if scale == 1.0 else scale * obs)

    def observation(self, theta: torch.Tensor, x: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution of the observed site given θ at inputs x (y is not sampled)."""
        dummy = torch.zeros(len(x), dtype=x.dtype)
        return self.trace(theta, x, dummy).nodes[self.obs_name]["fn"]

    def predictive_moments(self, theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of y_i | θ at each input: ([N], [N]) for θ [d], ([S, N], [S, N]) for [S, d]."""
        if theta.dim() == 2:
            try:  # one vectorised pass over the draws (a Python loop of traces costs ~10x more)
                return torch.func.vmap(lambda t: self.predictive_moments(t, x))(theta)
            except Exception:  # models with data-dependent Python control flow: fall back to a loop
                moments = [self.predictive_moments(t, x) for t in theta]
                return torch.stack([m for m, _ in moments]), torch.stack([v for _, v in moments])
        fn = self.observation(theta, x)
        return fn.mean.reshape(len(x)), fn.variance.reshape(len(x))

    @staticmethod
    def _batched(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        try:
            return torch.func.vmap(f)(theta)
        except Exception:  # models with data-dependent Python control flow: fall back to a loop
            return torch.stack([f(t) for t in theta])


def check_feature_count(model: Any, x: torch.Tensor, name: str) -> None:
    """If the model states its input size (``model.in_dim``, as the built-in models do), ``x`` must match it."""
    d = getattr(model, "in_dim", None)
    if isinstance(d, int) and x.dim() == 2 and x.shape[1] != d:
        raise ValueError(f"{name} has {x.shape[1]} features but the model takes in_dim={d}; pass inputs with "
                         f"{d} columns (in the training data's order)")
