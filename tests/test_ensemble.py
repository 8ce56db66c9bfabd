"""The retrain ensemble used as the reference of ``bayes-unlearn run`` (analysis.ensemble)."""

from __future__ import annotations

import json

import pytest
import torch

from bayes_unlearn.analysis.config import load_config, merge, resolve
from bayes_unlearn.analysis.ensemble import MomentPrediction, leave_one_out_floor, mixture, within_floor


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


def test_leave_one_out_floor_and_band():
    a = {"test": MomentPrediction(torch.zeros(4), torch.ones(4))}
    b = {"test": MomentPrediction(torch.full((4,), 0.2), torch.ones(4))}

    def dist(p, ref):
        return {"sq": float(((p.mean.double() - ref.mean) ** 2).mean())}

    floor = leave_one_out_floor([a, b], dist)
    assert floor["test"]["sq"] == pytest.approx([0.04, 0.04])  # with K = 2 the other retrain is the whole LOO mixture
    # a result on the mixture mean (0.1) is inside the band, one at 0.5 is not
    assert within_floor(dist(MomentPrediction(torch.full((4,), 0.1), torch.ones(4)), mixture([a["test"], b["test"]]))
                        ["sq"], floor["test"]["sq"])
    assert not within_floor(dist(MomentPrediction(torch.full((4,), 0.5), torch.ones(4)),
                                 mixture([a["test"], b["test"]]))["sq"], floor["test"]["sq"])
    with pytest.raises(ValueError, match="at least 2 retrains"):
        leave_one_out_floor([a], dist)


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
