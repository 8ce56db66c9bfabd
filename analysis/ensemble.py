"""A retrain ensemble as the reference of an unlearning experiment, and its noise floor (DESIGN.md §5).

A Bayesian neural net retrained from scratch with another seed lands in another mode, so one retrain
is a noisy target. ``bayes-unlearn run`` retrains K times (``analysis.references``, seeds
seed+1 … seed+K) and compares every method with the ensemble's predictive, the equally weighted
mixture of the K retrained predictives, moment-matched per input x:

    m̄(x) = (1/K) Σ_k m_k(x),     s̄²(x) = (1/K) Σ_k (s_k²(x) + m_k²(x)) − m̄²(x).

The noise floor is each retrain's distance to the ensemble of the *other* K − 1 (leave-one-out),

    floor_k = d(p_k, mix_{j≠k} p_j),

and a method is held against the same leave-one-out mixtures, so that both sides face a reference of
K − 1 retrains:

    ρ = Σ_k d(method, mix_{j≠k} p_j) / Σ_k floor_k       (the floor ratio).

ρ ≤ 1 on a split is "within the noise floor" there: the method is as close to the retrains as a retrain
is to the others. On every split, it is "indistinguishable from retraining". For a multimodal posterior,
that is what "as if never seen" can mean. ρ of "none" (the original posterior) says whether the deletion
is visible at all: ρ(none) ≈ 1 means that retrains disagree with one another as much as the deletion
moves the posterior, and gap closed is then not readable.

ρ ≤ 1 is a per-seed rule with no stated error rate: a retrain held out of the ensemble and scored like a
method fails it on 2–3 seeds in 10 (benchmarks/README.md). The calibrated alternative is a rank test
of exchangeability. Put the method among the n − 1 retrains (the references and any held-out ones) and
give every one of the n members its distance to the mixture of the other n − 1,

    s_q = d(p_q, mix_{j≠q} p_j),   R = rank of s_method among the n values (1 closest … n farthest).

If the method were one more retrain, the n members would be exchangeable and R uniform on {1, …, n},
whatever the distance and however multimodal the posterior (:func:`exchangeable_rank`). One seed gives at
best p = 1/n; over S independent seeds the sum of ranks has an exact null distribution (the convolution
of S discrete uniforms), and ``pooled_rank_test`` returns P(Σ R_s ≥ observed) under it: a small p says
that the method is farther from the retrains than a retrain is, more often than chance allows.

(Until session 9 the rule was d(method, full mixture) ≤ max_k floor_k. That holds a method against a
K-member mixture, which is wider than the floor's K − 1-member ones, and takes the worst retrain as the
bar: both flatter the method. The test ``test_floor_ratio_refuses_what_the_old_band_let_through`` shows a
result that rule let through.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

__all__ = ["MomentPrediction", "mixture", "leave_one_out_floor", "loo_distances", "floor_ratio", "within_floor",
           "exchangeable_rank", "pooled_rank_test", "pool_ranks", "residual_memory"]


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


def loo_distances(pred: Mapping[str, object], preds: Sequence[Mapping[str, object]],
                  distance: Callable[[object, object], dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """Per split and distance name, the K values d(pred, mixture of all retrains but k): a method held
    against the same references as :func:`leave_one_out_floor` holds each retrain."""
    K = len(preds)
    if K < 2:
        raise ValueError(f"leave-one-out distances need at least 2 retrains, got {K}")
    out: dict[str, dict[str, list[float]]] = {}
    for s in preds[0]:
        for k in range(K):
            loo = mixture([preds[j][s] for j in range(K) if j != k])
            for name, value in distance(pred[s], loo).items():
                out.setdefault(s, {}).setdefault(name, []).append(float(value))
    return out


def floor_ratio(method_values: Sequence[float], floor_values: Sequence[float]) -> float:
    """ρ = Σ_k d(method, ref_k) / Σ_k floor_k over the same K references (≤ 1: within the noise floor)."""
    if len(method_values) != len(floor_values) or not floor_values:
        raise ValueError(f"{len(method_values)} method distances against {len(floor_values)} floor values: "
                         "hold the method against the same references as the floor")
    total = float(sum(floor_values))
    if total <= 0.0:  # retrains that agree exactly: only a method at distance 0 is within
        return 0.0 if float(sum(method_values)) <= 0.0 else float("inf")
    return float(sum(method_values)) / total


def within_floor(method_values: Sequence[float], floor_values: Sequence[float]) -> bool:
    """Whether a method is within the noise floor: :func:`floor_ratio` ≤ 1."""
    return floor_ratio(method_values, floor_values) <= 1.0


def exchangeable_rank(pred: Mapping[str, object], retrains: Sequence[Mapping[str, object]],
                      distance: Callable[[object, object], float], *, rtol: float = 1e-9) -> dict[str, float]:
    """Per split, the rank of ``pred`` among the n = len(retrains) + 1 members of {pred} ∪ retrains, each
    member scored by its distance to the mixture of the other n − 1 (1: the closest, n: the farthest;
    ties within ``rtol`` share their mean rank). Uniform on {1, …, n} when ``pred`` is one more retrain.

    ``pred`` and each retrain hold ``{split: prediction}``; ``distance(p, ref)`` returns a float."""
    if len(retrains) < 2:
        raise ValueError(f"a rank among retrains needs at least 2 of them, got {len(retrains)}")
    members = [pred, *retrains]
    out: dict[str, float] = {}
    for s in pred:
        scores = [float(distance(members[q][s], mixture([members[j][s] for j in range(len(members)) if j != q])))
                  for q in range(len(members))]
        if not all(math.isfinite(v) for v in scores):
            raise ValueError(f"a distance on split {s!r} is not finite ({scores}); check the predictives")
        m = scores[0]
        tie = rtol * max(abs(m), 1e-300)
        below = sum(1 for v in scores[1:] if v < m - tie)
        ties = sum(1 for v in scores[1:] if abs(v - m) <= tie)
        out[s] = 1.0 + below + 0.5 * ties
    return out


def residual_memory(pred: Mapping[str, object], retrains: Sequence[Mapping[str, object]],
                    original: Mapping[str, object]) -> dict[str, float]:
    """Per split, the share of the original posterior's departure from the retrains that ``pred`` kept, on the
    predictive mean: with m̄ the retrains' mixture mean and Δ = μ_original − m̄ over the split's inputs,

        memory = Σ_x (μ_pred(x) − m̄(x)) Δ(x) / Σ_x Δ(x)²,

    the coefficient of ``pred``'s error along Δ (0: none of it kept, as far as the retrains' mean tells; 1: all
    of it, like ``none``; NaN where Δ = 0). On a forget set the original's departure is what it learnt from D_f,
    so memory > 0 is information about D_f left behind. It is linear where the KL gap closed is quadratic in the
    mean error: with equal predictive variances, a method that keeps 37 % of Δ and nothing else closes
    1 − 0.37² ≈ 86 % of the KL gap. A retrain held out of ``retrains`` gives its spread under "one more retrain"
    (benchmarks/README.md). Only readable where the deletion is visible: where Δ is mode noise (``none`` near the
    noise floor) a retrain that shares θ*'s mode scores near 1."""
    if len(retrains) < 1:
        raise ValueError("residual memory needs at least one retrain")
    out: dict[str, float] = {}
    for s in pred:
        bar = mixture([r[s] for r in retrains]).mean
        delta = original[s].mean.double() - bar
        den = float((delta * delta).sum())
        out[s] = float(((pred[s].mean.double() - bar) * delta).sum()) / den if den > 0.0 else float("nan")
    return out


def pooled_rank_test(ranks: Sequence[float], sizes: Sequence[int]) -> float:
    """One-sided p-value P(Σ_s R_s ≥ Σ_s r_s) with R_s independent and uniform on {1, …, n_s} (the null of
    :func:`exchangeable_rank`: the method is one more retrain on every seed). Exact, by convolution; a mean
    rank from ties (r_s + ½) is rounded down, which can only raise p (conservative)."""
    if len(ranks) != len(sizes) or not ranks:
        raise ValueError(f"{len(ranks)} ranks and {len(sizes)} sizes: give one rank and its n per seed")
    for r, n in zip(ranks, sizes):
        if int(n) != n or n < 2 or not 1 <= r <= n:
            raise ValueError(f"rank {r!r} of n = {n!r}: a rank lies in 1 … n with n ≥ 2")
    dist = [1.0]  # P(Σ R = k + number of seeds so far), k = 0, 1, …
    for n in sizes:
        n = int(n)
        new = [0.0] * (len(dist) + n - 1)
        for k, pk in enumerate(dist):
            for j in range(n):
                new[k + j] += pk / n
        dist = new
    observed = math.floor(sum(ranks)) - len(sizes)  # the index of Σ r rounded down
    return float(min(1.0, sum(dist[max(0, observed):])))


def pool_ranks(rows: Sequence[Mapping[str, object]], splits: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per split, the seeds' ranks pooled: ``{"p", "mean", "null_mean", "seeds"}`` from the rows (one per seed) that
    hold a numeric ``{split}/rank`` and ``rank_n`` (:func:`exchangeable_rank`); splits with none are left out.
    ``p`` is :func:`pooled_rank_test`, ``null_mean`` the mean rank if the method were one more retrain."""
    out: dict[str, dict[str, float]] = {}
    for sp in splits:
        pairs = [(float(r[f"{sp}/rank"]), int(r["rank_n"])) for r in rows
                 if isinstance(r.get(f"{sp}/rank"), (int, float)) and isinstance(r.get("rank_n"), (int, float))]
        if pairs:
            ranks, ns = [a for a, _ in pairs], [b for _, b in pairs]
            out[sp] = {"p": pooled_rank_test(ranks, ns), "mean": sum(ranks) / len(ranks),
                       "null_mean": sum(n + 1 for n in ns) / (2 * len(ns)), "seeds": len(pairs)}
    return out
