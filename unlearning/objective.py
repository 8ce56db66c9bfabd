"""The forget-set log-likelihood, its adjusted version, and the unlearning model.

Forget log-likelihood of θ (derived from the user's model, see ``inference.latent``):

    ℓ_f(θ) = log p(D_f | θ) = Σ_{i ∈ D_f} log p(y_i | x_i, θ).

Adjusted likelihood (Nguyen et al., "Variational Bayesian Unlearning", NeurIPS 2020, §3.2): use
p(D_f | θ) only where the old posterior is not negligible,

    p_adj(D_f | θ) = p(D_f | θ)  if q(θ | D) > λ · max_θ q(θ | D),   else 1.

Nguyen et al. work with classification likelihoods, which are ≤ 1. A regression likelihood is a
density and p(D_f | θ) is often ≫ 1 (σ = 0.1 gives log p ≈ +1.4 per point), so "else 1" would
make the *outside* of the region the most probable part of q(θ|D)/p_adj. We therefore measure the
likelihood relative to its value at the old mean μ: p_adj = p(D_f|θ)/p(D_f|μ) inside, 1 outside.
Inside the region this only rescales the target by a constant; it makes the adjustment continuous
at typical points whatever the units of y.

For a Gaussian q with precision Λ, q(θ)/max q = exp(-½ (θ-μ)ᵀΛ(θ-μ)), so the rule is a
Mahalanobis ball: r²(θ) < -2 log λ. In d dimensions draws from q itself have r² ≈ χ²_d, so a
fixed λ means very different things for d = 4 and d = 1000; we therefore also accept
``quantile=p``, i.e. λ = exp(-½ χ²_{d,p}): the likelihood is used on the central p-mass of q.

Unlearning model (the old posterior becomes the prior; the forget likelihood is subtracted):

    θ ~ q(θ | D);   pyro.factor("forget", -log p_adj(D_f | θ))

whose ELBO for a guide q_u is -U(q_u) with U(q_u) = E_{q_u}[log p_adj(D_f|θ)] + KL(q_u ‖ q(θ|D))
(the "EUBO" of Nguyen et al.). ``poutine.scale`` refuses negative scales, hence ``pyro.factor``;
the inner trace that evaluates log p(D_f | θ) is wrapped in ``poutine.block``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from ..inference.latent import BoundModel
from ..inference.posterior import Posterior

__all__ = ["ForgetLikelihood", "lambda_from_quantile", "unlearning_model", "prior_distribution", "embed_active",
           "Whitening", "unlearning_prior", "unlearning_log_density"]


def lambda_from_quantile(d: int, quantile: float) -> float:
    """log λ such that the region q > λ max q holds ``quantile`` of a d-dim Gaussian's mass."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    from scipy.stats import chi2

    return -0.5 * float(chi2.ppf(quantile, d))


class ForgetLikelihood:
    """θ ↦ log p(D_f | θ) (optionally adjusted) for a fixed model and forget set.

    Parameters
    ----------
    bound : the model bound to its layout.
    x_f, y_f : the forget set.
    old : the old posterior q(θ | D) (needed only for the adjustment).
    lam, quantile : adjustment threshold λ ∈ [0, 1], or the mass ``quantile`` of q it keeps
        (give at most one; neither means no adjustment; λ = 0 is also no adjustment).
    """

    def __init__(self, bound: BoundModel, x_f: torch.Tensor, y_f: torch.Tensor, old: Posterior | None = None,
                 lam: float | None = None, quantile: float | None = None):
        self.offset = 0.0
        self.active = None
        if lam is not None and quantile is not None:
            raise ValueError("give either lam or quantile for the adjusted likelihood, not both")
        self.bound, self.x_f, self.y_f = bound, x_f, y_f
        self.log_lam: float | None = None
        if lam is not None:
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"lam must lie in [0, 1], got {lam}")
            self.log_lam = None if lam == 0.0 else math.log(lam)
        elif quantile is not None:
            if old is None:
                raise ValueError("the adjusted likelihood needs the old posterior")
            self.log_lam = lambda_from_quantile(old.cov.size, quantile)
        if self.log_lam is not None:
            if old is None:
                raise ValueError("the adjusted likelihood needs the old posterior")
            self.q = old.to_active_distribution()  # over the active coordinates (all, usually)
            self.active = old.active
            self.log_q_max = float(self.q.log_prob(self._act(old.loc)))
            with torch.no_grad():
                self.offset = float(self.per_point(old.loc).sum())

    def _act(self, theta: torch.Tensor) -> torch.Tensor:
        return theta if self.active is None else theta[..., self.active]

    @property
    def adjusted(self) -> bool:
        return self.log_lam is not None

    def per_point(self, theta: torch.Tensor) -> torch.Tensor:
        """ℓ_i(θ) for i ∈ D_f: [k] for θ [d], [S, k] for θ [S, d] (not adjusted)."""
        with poutine.block():
            return self.bound.log_likelihood(theta.to(self.x_f.dtype), self.x_f, self.y_f)

    def mask(self, theta: torch.Tensor) -> torch.Tensor:
        """1 where q(θ|D) > λ max q (the likelihood counts), else 0."""
        if not self.adjusted:
            return torch.ones(theta.shape[:-1], dtype=theta.dtype)
        with torch.no_grad():
            return (self.q.log_prob(self._act(theta)) - self.log_q_max > self.log_lam).to(theta.dtype)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """log p_adj(D_f | θ): scalar for θ [d], [S] for θ [S, d]."""
        if not self.adjusted:
            return self.per_point(theta).sum(-1)
        return (self.per_point(theta).sum(-1) - self.offset) * self.mask(theta)


def embed_active(old: Posterior):
    """θ_a ↦ θ: the active coordinates placed into the old mean (identity without ``active``)."""
    if old.active is None:
        return lambda theta: theta
    loc, idx = old.loc, old.active

    def embed(theta_a: torch.Tensor) -> torch.Tensor:
        full = loc.to(theta_a.dtype).expand(theta_a.shape[:-1] + loc.shape).clone()
        full[..., idx] = theta_a
        return full
    return embed


def prior_distribution(old: Posterior) -> torch.distributions.Distribution:
    """q(θ | D) as a Pyro distribution over the flat θ (its active coordinates; event dim 1)."""
    q = old.to_active_distribution()
    if isinstance(q, torch.distributions.Independent):
        return dist.Normal(q.base_dist.loc, q.base_dist.scale).to_event(1)
    if isinstance(q, torch.distributions.LowRankMultivariateNormal):
        return dist.LowRankMultivariateNormal(q.loc, q.cov_factor, q.cov_diag)
    return dist.MultivariateNormal(q.loc, scale_tril=q.scale_tril)


class Whitening:
    """The affine map z ↦ θ = μ + A z with q(θ|D) = N(μ, A Aᵀ), so that z ~ N(0, I) under q(θ|D).

    A is the old covariance's square-root factor (``Covariance.scale_factor``: a vector for a diagonal
    one, the lower Cholesky factor of Σ for a full one or a precision; low-rank covariances keep none),
    over the active coordinates. A Gaussian guide N(m, S Sᵀ) on z is the Gaussian
    N(μ + A m, (A S)(A S)ᵀ) on θ; with S lower triangular (or diagonal) so is A S, so the mapped
    guide keeps its structure. Optimising in z preconditions the re-fit by the old posterior's
    covariance: a step of the same size means the same fraction of a posterior std in every direction.
    """

    @staticmethod
    def supports(old: Posterior) -> bool:
        """Whether ``old`` is a Gaussian whose covariance keeps a square-root factor A."""
        return old.cov.gaussian and old.cov.scale_factor() is not None

    def __init__(self, old: Posterior):
        A = old.cov.scale_factor() if old.cov.gaussian else None
        if A is None:
            raise ValueError(f"whitening needs a Gaussian posterior whose covariance keeps a square-root factor "
                             f"(diag, full, precision), not a {old.structure!r} one")
        self.mu = old.active_loc
        self.diag = A.dim() == 1
        self.A = A

    def theta(self, z: torch.Tensor) -> torch.Tensor:
        A, mu = self.A.to(z.dtype), self.mu.to(z.dtype)
        return mu + (A * z if self.diag else z @ A.T)

    def start_fields(self, family: str) -> dict[str, torch.Tensor]:
        """q(θ|D) itself as guide fields on z: N(0, I)."""
        k, dt = len(self.mu), self.mu.dtype
        if family == "meanfield":
            return {"loc": torch.zeros(k, dtype=dt), "scale": torch.ones(k, dtype=dt)}
        return {"loc": torch.zeros(k, dtype=dt), "scale_tril": torch.eye(k, dtype=dt)}

    def fields(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Guide fields on z (loc + scale or scale_tril) as fields on θ."""
        A = self.A.to(f["loc"].dtype)
        if "scale" in f:
            return {"loc": self.theta(f["loc"]), "scale": A * f["scale"]}
        return {"loc": self.theta(f["loc"]), "scale_tril": (A[:, None] * f["scale_tril"]) if self.diag
                else A @ f["scale_tril"]}


def unlearning_prior(old: Posterior, whitening: Whitening | None = None):
    """(prior of the unlearning model's site, map from the site's value to the full θ).

    The site is θ's active coordinates under q(θ|D), or with ``whitening`` z ~ N(0, I), θ = μ + A z."""
    embed = embed_active(old)
    if whitening is None:
        return prior_distribution(old), embed
    k = len(whitening.mu)
    return (dist.Normal(torch.zeros(k, dtype=whitening.mu.dtype), 1.0).to_event(1),
            lambda z: embed(whitening.theta(z)))


def unlearning_log_density(old: Posterior, forget: ForgetLikelihood, whitening: Whitening | None = None):
    """v ↦ log prior(v) - log p_adj(D_f | θ(v)): the unlearning model's log density as a plain function."""
    prior, to_theta = unlearning_prior(old, whitening)
    return lambda v: prior.log_prob(v) - forget(to_theta(v))


def unlearning_model(old: Posterior, forget: ForgetLikelihood, whitening: Whitening | None = None):
    """The Pyro program  θ ~ q(θ|D); factor(-log p_adj(D_f|θ))  over one flat site ``theta``.

    For a posterior restricted to ``active`` coordinates the site holds those only; the others stay
    at the old mean. With ``whitening`` the site is z ~ N(0, I) and θ = μ + A z (the same model)."""
    prior, to_theta = unlearning_prior(old, whitening)

    def model(*_):
        theta = pyro.sample("theta", prior)
        pyro.factor("forget", -forget(to_theta(theta)))
        return theta
    return model
