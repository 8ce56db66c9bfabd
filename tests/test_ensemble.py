"""The retrain ensemble used as the reference of ``bayes-unlearn run`` (analysis.ensemble)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bayes_unlearn.analysis.config import load_config, merge, resolve
from bayes_unlearn.analysis.ensemble import (MomentPrediction, exchangeable_rank, floor_ratio, leave_one_out_floor,
                                           loo_distances, mixture, pooled_rank_test, within_floor, residual_memory)


def test_mixture_matches_the_moments_of_draws_from_the_mixture():
    g = torch.Generator().manual_seed(0)
    means = [torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.5, 3.0, 0.0])]
    stds = [torch.tensor([1.0, 0.1, 0.5]), torch.tensor([0.5, 0.2, 0.5]), torch.tensor([2.0, 0.3, 1.0])]
    mix = mixture([MomentPrediction(m, s) for m, s in zip(means, stds)])
    n = 200_000
    comp = torch.randint(0, 3, (n,), generator=g)
    M, S = torch.stack(means)[comp], torch.stack(stds)[comp]
    draws = M + S * torch.randn(M.shape, generator=g)
    assert torch.allclose(mix.mean.float(), draws.mean(0), atol=0.02)
    assert torch.allclose(mix.std.float(), draws.std(0), rtol=0.01)


def _at(v: float) -> dict:
    return {"test": MomentPrediction(torch.full((4,), v), torch.ones(4))}


def _sq(p, ref):
    return {"sq": float(((p.mean.double() - ref.mean) ** 2).mean())}


def test_leave_one_out_floor_and_floor_ratio():
    a, b = _at(0.0), _at(0.2)
    floor = leave_one_out_floor([a, b], _sq)
    assert floor["test"]["sq"] == pytest.approx([0.04, 0.04])  # with K = 2 the other retrain is the whole LOO mixture
    # a result on the mixture mean (0.1) is 0.01 from each retrain: rho = 0.02 / 0.08
    mid = loo_distances(_at(0.1), [a, b], _sq)["test"]["sq"]
    assert mid == pytest.approx([0.01, 0.01]) and floor_ratio(mid, floor["test"]["sq"]) == pytest.approx(0.25)
    assert within_floor(mid, floor["test"]["sq"])
    assert not within_floor(loo_distances(_at(0.5), [a, b], _sq)["test"]["sq"], floor["test"]["sq"])
    with pytest.raises(ValueError, match="at least 2 retrains"):
        leave_one_out_floor([a], _sq)
    with pytest.raises(ValueError, match="same references"):
        floor_ratio([0.1], floor["test"]["sq"])


def test_floor_ratio_refuses_what_the_old_band_let_through():
    """The old rule, d(method, mixture of all K) <= max_k floor_k, let through a result further from one
    retrain than the other retrain is; held against the same references it is outside the floor."""
    a, b = _at(0.0), _at(0.2)
    floor = leave_one_out_floor([a, b], _sq)["test"]["sq"]
    m = _at(0.29)
    old_band = _sq(m["test"], mixture([a["test"], b["test"]]))["sq"] <= max(floor)
    assert old_band  # 0.0361 <= 0.04: "indistinguishable" under the old rule
    held = loo_distances(m, [a, b], _sq)["test"]["sq"]  # 0.0081 from b, 0.0841 from a
    assert floor_ratio(held, floor) == pytest.approx(1.1525) and not within_floor(held, floor)


def _tiny_cfg(**analysis):
    cfg = load_config(quick=True)
    return resolve(merge(cfg, {"data": {"n": 60}, "methods": {"run": ["retrain-warm"]},
                               "analysis": {"figures": False, "netcdf": False, **analysis}}))


def test_a_failed_reference_keeps_the_other_results(tmp_path, monkeypatch):
    """If `retrain` raises, the run still writes every file, reports the failure and scores nothing."""
    import bayes_unlearn.analysis.experiment as ex

    real = ex.unlearn

    def broken(post, xf, yf, method, **kw):
        if method == "retrain":
            raise RuntimeError("simulated crash")
        return real(post, xf, yf, method, **kw)

    monkeypatch.setattr(ex, "unlearn", broken)
    doc = ex.run_experiment(_tiny_cfg(references=1, noise_floor=False), tmp_path, progress=False)
    by = {r["method"]: r for r in doc["results"]}
    assert by["retrain"]["verdict"] == "failed" and "simulated crash" in by["retrain"]["verdict_reasons"][0]
    assert "error" in doc["reference"] and by["retrain-warm"]["metrics"] == {}
    assert json.loads((tmp_path / "metrics.json").read_text())["reference"]["error"]
    assert "Reference failed" in (tmp_path / "report.md").read_text()


def test_single_retrain_reference_with_a_noise_floor(tmp_path):
    doc = __import__("bayes_unlearn.analysis.experiment", fromlist=["run_experiment"]).run_experiment(
        _tiny_cfg(references=1, noise_floor=True), tmp_path, progress=False)
    assert doc["reference"]["kind"] == "single" and doc["reference"]["seeds"] == [1]
    by = {r["method"]: r for r in doc["results"]}
    # with one retrain as the reference, that retrain is at distance 0 and the floor is a second retrain's distance
    assert by["retrain"]["metrics"]["test/predictive_kl"] == 0.0
    assert doc["noise_floor"]["test/predictive_kl"] > 0 and by["retrain"]["indistinguishable"]


def _kl_1d(p, ref) -> float:
    from bayes_unlearn.analysis.metrics import gaussian_kl_1d

    return float(gaussian_kl_1d(p.mean, p.std, ref.mean, ref.std).mean())


def _member(g: torch.Generator, shift: float = 0.0) -> dict:
    """A 'retrain': a predictive on 20 inputs whose mean is a random draw (another mode), + shift."""
    mean = torch.randn(20, generator=g, dtype=torch.float64) * 0.3 + shift
    return {"forget": MomentPrediction(mean, torch.full((20,), 0.2, dtype=torch.float64))}


def test_exchangeable_rank_is_uniform_for_one_more_retrain_and_last_for_an_outlier():
    g = torch.Generator().manual_seed(0)
    counts = [0] * 5
    for _ in range(400):  # the method drawn like the four retrains: every rank 1..5 about equally often
        retrains = [_member(g) for _ in range(4)]
        counts[int(exchangeable_rank(_member(g), retrains, _kl_1d)["forget"]) - 1] += 1
    assert min(counts) >= 55 and max(counts) <= 105, counts  # 80 expected each (binomial sd 8)
    # a method off by a constant: farther from the others than every retrain, on every draw
    for _ in range(20):
        retrains = [_member(g) for _ in range(4)]
        assert exchangeable_rank(_member(g, shift=1.0), retrains, _kl_1d)["forget"] == 5.0
    # a method equal to one retrain ties with it: the two share the mean of their ranks
    retrains = [_member(g) for _ in range(3)]
    r = exchangeable_rank(retrains[0], retrains, _kl_1d)["forget"]
    assert r != int(r)
    with pytest.raises(ValueError, match="at least 2"):
        exchangeable_rank(_member(g), [_member(g)], _kl_1d)


def test_residual_memory_reads_the_share_of_the_original_departure_a_method_kept():
    g = torch.Generator().manual_seed(1)
    retrains = [_member(g) for _ in range(4)]
    bar = torch.stack([r["forget"].mean for r in retrains]).mean(0)
    delta = torch.randn(20, generator=g, dtype=torch.float64)  # what the original learnt from D_f
    orth = torch.randn(20, generator=g, dtype=torch.float64)
    orth -= (orth @ delta) / (delta @ delta) * delta             # an error that is no memory of D_f
    sd = torch.full((20,), 0.2, dtype=torch.float64)
    original = {"forget": MomentPrediction(bar + delta, sd)}
    kept = {"forget": MomentPrediction(bar + 0.37 * delta + orth, sd)}
    assert residual_memory(kept, retrains, original)["forget"] == pytest.approx(0.37)
    assert residual_memory(original, retrains, original)["forget"] == pytest.approx(1.0)
    # the mixture mean itself keeps nothing; an error the other way is negative, not "no memory"
    assert residual_memory({"forget": MomentPrediction(bar, sd)}, retrains, original)["forget"] == pytest.approx(0.0)
    assert residual_memory({"forget": MomentPrediction(bar - 0.5 * delta, sd)}, retrains, original)["forget"] < -0.49
    # the original at the retrains' mean: no departure to share in
    assert math.isnan(residual_memory(kept, retrains, {"forget": MomentPrediction(bar, sd)})["forget"])
    with pytest.raises(ValueError, match="at least one retrain"):
        residual_memory(kept, [], original)


def test_pooled_rank_test_is_the_exact_tail_of_a_sum_of_uniform_ranks():
    assert pooled_rank_test([4], [4]) == pytest.approx(0.25)          # last of 4 on one seed
    assert pooled_rank_test([2, 2], [2, 2]) == pytest.approx(0.25)    # last of 2, twice
    assert pooled_rank_test([1, 1, 1], [5, 5, 5]) == pytest.approx(1.0)
    assert pooled_rank_test([5] * 5, [5] * 5) == pytest.approx(0.2 ** 5)
    # sum 9 of two ranks on 1..5: (4,5), (5,4), (5,5) of 25
    assert pooled_rank_test([4, 5], [5, 5]) == pytest.approx(3 / 25)
    # a tie's mean rank is rounded down: 4.5 of 5 reads as 4, p = 2/5 (not 1/5)
    assert pooled_rank_test([4.5], [5]) == pytest.approx(0.4)
    # mixed sizes: ranks 4 of 4 and 5 of 5 sum to 9, the largest possible: 1/20
    assert pooled_rank_test([4, 5], [4, 5]) == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="one rank and its n"):
        pooled_rank_test([1, 2], [5])
    with pytest.raises(ValueError, match="lies in 1"):
        pooled_rank_test([6], [5])
