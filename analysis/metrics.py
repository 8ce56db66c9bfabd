"""Distances between posteriors and against exact retraining (DESIGN.md §5; Nguyen et al., 2020).

Function space -- at each input x the predictive is moment-matched to a Gaussian N(m(x), s(x)²)
(see ``inference.predict``), and per-input distances are averaged over a set of inputs:

    KL(N(m₁, s₁²) ‖ N(m₂, s₂²)) = log(s₂/s₁) + (s₁² + (m₁ - m₂)²) / (2 s₂²) - ½
    W₂(N(m₁, s₁²), N(m₂, s₂²))  = √((m₁ - m₂)² + (s₁ - s₂)²)

Weight space (meaningful for linear models and warm-started runs only):

    KL(N(μ₁, Σ₁) ‖ N(μ₂, Σ₂)) = ½ [tr(Σ₂⁻¹Σ₁) + (μ₂-μ₁)ᵀΣ₂⁻¹(μ₂-μ₁) - d + log det Σ₂ - log det Σ₁]
    W₂² = ‖μ₁ - μ₂‖² + tr(Σ₁ + Σ₂ - 2 (Σ₂^{½} Σ₁ Σ₂^{½})^{½})

Gap closed by a method, with d a distance to the retrained posterior:

    gap_closed = 1 - d(method, retrain) / d(none, retrain)     (1 = as good as retraining, 0 = no better
                                                                than doing nothing, < 0 = worse)

Deletion-scenario metrics, from a result's own predictions (no retraining needed for the first):

    membership = NLL(D_f) - NLL(test)                          (≈ 0 after retraining on a random D_f;
                                                                < 0 while D_f is still "remembered")
    recovered  = (e_none - e_method) / (e_none - e_retrain)    (corrupted D_f, e = test RMSE or NLL:
                                                                1 = retrain's test error, 0 = none's)
"""

from __future__ import annotations

import math

import torch

from ..inference.posterior import Posterior
from ..inference.predict import Prediction, predict

__all__ = ["gaussian_kl_1d", "gaussian_w2_1d", "predictive_kl", "predictive_w2", "predictive_distances", "gap_closed",
           "gaussian_kl", "gaussian_w2", "rmse", "nll", "membership_signal", "recovered_fraction"]


def gaussian_kl_1d(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(m1, s1²) ‖ N(m2, s2²))."""
    return torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def gaussian_w2_1d(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Element-wise 2-Wasserstein distance between 1-D Gaussians."""
    return ((m1 - m2) ** 2 + (s1 - s2) ** 2).sqrt()


def _pred(p: Posterior | Prediction, x: torch.Tensor, num_samples: int, seed: int) -> Prediction:
    """A posterior's predictive at ``x``; a prediction (anything with ``.mean`` and ``.std``, [N] each: an
    ``inference.predict.Prediction`` or an ensemble's ``analysis.ensemble.MomentPrediction``) as it is."""
    if isinstance(p, Posterior):
        return predict(p, x, num_samples=num_samples, seed=seed)
    if not (hasattr(p, "mean") and hasattr(p, "std")):
        raise TypeError(f"expected a Posterior or a prediction with .mean and .std, got {type(p).__name__}")
    return p


def predictive_kl(p: Posterior | Prediction, q: Posterior | Prediction, x: torch.Tensor | None = None,
                  num_samples: int = 200, seed: int = 0) -> float:
    """Mean over inputs of KL(p(y|x) ‖ q(y|x)), both moment-matched Gaussians (predictions reused if given)."""
    a, b = _pred(p, x, num_samples, seed), _pred(q, x, num_samples, seed)
    return float(gaussian_kl_1d(a.mean.double(), a.std.double(), b.mean.double(), b.std.double()).mean())


def predictive_w2(p: Posterior | Prediction, q: Posterior | Prediction, x: torch.Tensor | None = None,
                  num_samples: int = 200, seed: int = 0) -> float:
    """Mean over inputs of W₂ between the moment-matched Gaussian predictives."""
    a, b = _pred(p, x, num_samples, seed), _pred(q, x, num_samples, seed)
    return float(gaussian_w2_1d(a.mean.double(), a.std.double(), b.mean.double(), b.std.double()).mean())


def predictive_distances(p: Posterior | Prediction, ref: Posterior | Prediction, x: torch.Tensor | None = None,
                         num_samples: int = 200, seed: int = 0) -> dict[str, float]:
    """The function-space distances of ``p`` to a reference ``ref`` (predictions reused if given):
    ``predictive_kl`` = KL(p ‖ ref), ``predictive_kl_reverse`` = KL(ref ‖ p) and ``w2``, each a mean over inputs."""
    a, b = _pred(p, x, num_samples, seed), _pred(ref, x, num_samples, seed)
    return {"predictive_kl": predictive_kl(a, b), "predictive_kl_reverse": predictive_kl(b, a),
            "w2": predictive_w2(a, b)}


def gap_closed(d_method: float, d_none: float) -> float:
    """1 - d(method, retrain) / d(none, retrain); NaN when doing nothing is already exact (d_none = 0)."""
    if d_none <= 0:
        return math.nan
    return 1.0 - d_method / d_none


def gaussian_kl(p: Posterior, q: Posterior) -> float:
    """Weight-space KL(p ‖ q) between the Gaussian (moment-matched) forms of two posteriors."""
    a = torch.distributions.MultivariateNormal(p.loc.double(), p.covariance().double())
    b = torch.distributions.MultivariateNormal(q.loc.double(), q.covariance().double())
    return float(torch.distributions.kl_divergence(a, b))


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    ev, V = torch.linalg.eigh(0.5 * (m + m.T))
    return (V * ev.clamp_min(0).sqrt()) @ V.T


def gaussian_w2(p: Posterior, q: Posterior) -> float:
    """Weight-space 2-Wasserstein distance between the Gaussian forms of two posteriors."""
    c1, c2 = p.covariance().double(), q.covariance().double()
    r2 = _sqrtm(c2)
    cross = _sqrtm(r2 @ c1 @ r2)
    w2 = (p.loc.double() - q.loc.double()).pow(2).sum() + torch.trace(c1 + c2 - 2 * cross)
    return float(w2.clamp_min(0).sqrt())


def rmse(pred: Prediction, y: torch.Tensor) -> float:
    """Root mean squared error of the predictive mean."""
    return float(((pred.mean - y) ** 2).mean().sqrt())


def nll(pred: Prediction, y: torch.Tensor) -> float:
    """Mean negative log density of y under the moment-matched Gaussian predictive."""
    return float(-torch.distributions.Normal(pred.mean.double(), pred.std.double()).log_prob(y.double()).mean())


def membership_signal(nll_forget: float, nll_test: float) -> float:
    """Membership signal of D_f: mean NLL on D_f − mean NLL on the test set (per point, same predictive).

    A loss-threshold membership inference statistic (Yeom et al., 2018; Shokri et al., 2017): a model that
    still "remembers" D_f fits it better than unseen data, so the signal is negative. After exact retraining
    on a random deletion, D_f is unseen data and the signal is ≈ 0 (up to sampling noise of |D_f| points);
    for a region or corrupted D_f it is positive for retraining (D_f is unlike the rest), and a method should
    be judged by how close it is to retrain's value, not to 0.
    """
    return float(nll_forget - nll_test)


def recovered_fraction(value_none: float, value_method: float, value_retrain: float) -> float:
    """Fraction of the damage of the corrupted rows a method undoes, on an error (RMSE, NLL; lower is better):

        (value_none − value_method) / (value_none − value_retrain)

    1 = the method recovers retraining's error, 0 = no better than keeping the corrupted rows (``none``),
    < 0 = worse. NaN when retraining is not better than ``none`` (value_none ≤ value_retrain: the corruption
    did not hurt, so there is nothing to recover) or a value is not finite.
    """
    gap = value_none - value_retrain
    if not all(math.isfinite(v) for v in (value_none, value_method, value_retrain)) or gap <= 0:
        return math.nan
    return float((value_none - value_method) / gap)
