"""A retrain ensemble as the reference of an unlearning experiment, and its noise floor (DESIGN.md §5).

A Bayesian neural net retrained from scratch with another seed lands in another mode, so one retrain
is a noisy target. ``bayes-unlearn run`` retrains K times (``analysis.references``, seeds
seed+1 … seed+K) and compares every method with the ensemble's predictive, the equally weighted
mixture of the K retrained predictives, moment-matched per input x:

    m̄(x) = (1/K) Σ_k m_k(x),     s̄²(x) = (1/K) Σ_k (s_k²(x) + m_k²(x)) − m̄²(x).

The noise floor is each retrain's distance to the ensemble of the *other* K − 1 (leave-one-out),

    floor_k = d(p_k, mix_{j≠k} p_j),

and a method whose distance to the full ensemble is within max_k floor_k on a split is
"indistinguishable from retraining" there: it is as close to the ensemble as a retrain that the
ensemble never saw. For a multimodal posterior, that is what "as if never seen" can mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

__all__ = ["MomentPrediction", "mixture", "leave_one_out_floor", "within_floor"]


@dataclass(frozen=True)
class MomentPrediction:
    """A Gaussian predictive per input: ``mean`` and ``std``, shape ``[N]`` (what the distances need)."""

    mean: torch.Tensor
    std: torch.Tensor


def mixture(preds: Sequence) -> MomentPrediction:
    """The moment-matched equal-weight mixture of predictives with ``.mean`` and ``.std`` (``[N]`` each)."""
    if len(preds) == 0:
        raise ValueError("mixture needs at least one predictive")
    if len(preds) == 1:  # exactly the one predictive (no round-off from the variance formula)
        return MomentPrediction(preds[0].mean.double(), preds[0].std.double())
    m = torch.stack([p.mean.double() for p in preds])
    v = torch.stack([p.std.double() ** 2 for p in preds])
    mean = m.mean(0)
    var = (v + m**2).mean(0) - mean**2
    return MomentPrediction(mean, var.clamp_min(1e-300).sqrt())


def leave_one_out_floor(preds: Sequence[Mapping[str, object]],
                        distance: Callable[[object, object], dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """Per split and distance name, the K values d(p_k, mixture of the other retrains).

    ``preds`` holds one ``{split: prediction}`` per retrain (K ≥ 2); ``distance(p, ref)`` returns
    ``{name: value}`` (e.g. predictive KL, reverse KL, W₂). Returns ``{split: {name: [K values]}}``.
    """
    K = len(preds)
    if K < 2:
        raise ValueError(f"a leave-one-out noise floor needs at least 2 retrains, got {K}; "
                         "set analysis.references >= 2")
    out: dict[str, dict[str, list[float]]] = {}
    for s in preds[0]:
        for k in range(K):
            loo = mixture([preds[j][s] for j in range(K) if j != k])
            for name, value in distance(preds[k][s], loo).items():
                out.setdefault(s, {}).setdefault(name, []).append(float(value))
    return out


def within_floor(d: float, floor_values: Sequence[float]) -> bool:
    """Whether a method's distance ``d`` to the ensemble is within the band max_k floor_k."""
    return bool(d <= max(floor_values))
