"""Curvature of log densities over θ: exact Hessians and the generalised Gauss-Newton matrix.

Exact Hessian (``torch.func.hessian`` = forward-over-reverse AD), in float64:

    H(θ) = ∇²_θ f(θ).

Generalised Gauss-Newton / Fisher (Schraudolph, 2002; Martens, 2020; Immer et al., 2021) for an
observation y_i ~ N(m_i(θ), s_i(θ)²): the Fisher of a Gaussian in (m, s) is diag(1/s², 2/s²), so

    G(θ) = Σ_i  (∇m_i ∇m_iᵀ) / s_i²  +  2 (∇s_i ∇s_iᵀ) / s_i²,

which is positive semi-definite by construction and needs only Jacobians. For a homoscedastic
fixed-noise net this is Jᵀ J / σ². Its diagonal, Σ_i (∇m_i)² / s_i² + 2 (∇s_i)² / s_i², is
computed in chunks of data points so memory stays O(chunk · d).

The prior's curvature -∇² log p̃(θ) is added exactly for "full"; for "diag" its diagonal is read
off the Hessian-vector product with the ones vector, which is exact for element-wise independent
priors (every built-in model; documented as a requirement for user models using ``diag``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.distributions import Normal

from .latent import BoundModel

__all__ = ["hessian", "ggn", "ggn_diagonal", "prior_curvature", "prior_curvature_diagonal"]


def hessian(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of a scalar function at θ (float64, symmetrised)."""
    theta = theta.detach().to(torch.float64)
    try:
        H = torch.func.hessian(f)(theta)
    except Exception:  # functions torch.func cannot transform: one reverse pass per row
        H = torch.autograd.functional.hessian(f, theta)
    return 0.5 * (H + H.T)


def _obs_params(bound: BoundModel, x: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def params(theta: torch.Tensor):
        fn = bound.observation(theta, x)
        base = fn
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not isinstance(base, Normal):
            raise NotImplementedError(
                f"the GGN is implemented for Normal observations; the model's observed site is "
                f"{type(base).__name__}: use curvature='exact' instead")
        n = len(x)
        return base.loc.expand(n).reshape(n), base.scale.expand(n).reshape(n)
    return params


def _jacobians(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor):
    p = _obs_params(bound, x)
    (Jm, Js), (m, s) = torch.func.jacrev(lambda t: p(t), has_aux=False)(theta), p(theta)
    return Jm, Js, m, s


def ggn(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, index: torch.Tensor | None = None,
        chunk: int = 1024) -> torch.Tensor:
    """Dense GGN of the negative log-likelihood at θ, [d, d] (or [k, k] on coordinates ``index``)."""
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    k = len(theta) if index is None else len(index)
    G = theta.new_zeros(k, k)
    for start in range(0, len(x), chunk):
        Jm, Js, _, s = _jacobians(bound, x[start:start + chunk], theta)
        if index is not None:
            Jm, Js = Jm[:, index], Js[:, index]
        w = 1.0 / s**2
        G += (Jm * w[:, None]).T @ Jm + 2.0 * (Js * w[:, None]).T @ Js
    return 0.5 * (G + G.T)


def ggn_diagonal(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """diag of the GGN, [d], in chunks of ``chunk`` data points."""
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    out = torch.zeros_like(theta)
    for start in range(0, len(x), chunk):
        Jm, Js, _, s = _jacobians(bound, x[start:start + chunk], theta)
        w = 1.0 / s**2
        out += (Jm**2 * w[:, None]).sum(0) + 2.0 * (Js**2 * w[:, None]).sum(0)
    return out


def prior_curvature(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor,
                    index: torch.Tensor | None = None) -> torch.Tensor:
    """-∇² log p̃(θ) (dense; restricted to coordinates ``index`` when given)."""
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    if index is None:
        return -hessian(lambda t: bound.log_prior(t, x), theta)

    def f(sub):
        full = theta.clone()
        full = full.index_put((index,), sub)
        return bound.log_prior(full, x)
    return -hessian(f, theta[index])


def prior_curvature_diagonal(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """diag(-∇² log p̃(θ)) via one Hessian-vector product with 1 (exact for independent priors)."""
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    g = lambda t: torch.func.grad(lambda u: bound.log_prior(u, x))(t)  # noqa: E731
    _, hv = torch.func.jvp(g, (theta,), (torch.ones_like(theta),))
    return -hv
