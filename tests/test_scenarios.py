"""Deletion scenarios of ``bayes-unlearn run``: ``corrupted`` and ``sequential`` forget sets, and the
membership / utility metrics (``analysis.scenarios``, ``models.forget_sets.corrupt_targets``)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bayes_unlearn.analysis.config import (ConfigError, build_data, build_forget_indices, corrupt_forget_set, load_config, merge,
                             resolve)
from bayes_unlearn.analysis.experiment import run_experiment
from bayes_unlearn.analysis.metrics import membership_signal, recovered_fraction
from bayes_unlearn.analysis.scenarios import worst_verdict
from bayes_unlearn.models.forget_sets import corrupt_targets, split_requests

# --quick scale, with shorter optimisations and no extras: each run well under a minute on one core
_FAST = {"inference": {"options": {"num_steps": 200, "lbfgs_steps": 100}},
         "analysis": {"figures": False, "netcdf": False, "noise_floor": False, "references": 1,
                      "psis_samples": 100}}


def _cfg(forget: dict, run: list[str], seed: int = 0) -> dict:
    return resolve(merge(load_config(quick=True, seed=seed), {**_FAST, "forget": forget, "methods": {"run": run}}))


# -- the data side ---------------------------------------------------------------------------------
def test_corrupt_targets_shifts_exactly_the_rows_by_shift_std_and_leaves_the_input_alone():
    y = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 2.0 + 5.0
    y_before = y.clone()
    idx = torch.tensor([3, 7, 20, 49])
    out = corrupt_targets(y, idx, mode="shift", shift=2.5)
    assert torch.equal(y, y_before)                      # the input is not modified
    changed = torch.nonzero(out != y).flatten()
    assert changed.tolist() == idx.tolist()              # exactly idx, nothing else
    std = float(y.double().std())                        # ≈ 2 by construction
    assert 1.5 < std < 2.5
    assert torch.allclose((out - y)[idx].double(), torch.full((4,), 2.5 * std, dtype=torch.float64), atol=1e-5)


def test_corrupt_targets_noise_mode_is_seeded_and_only_touches_idx():
    y = torch.linspace(-1.0, 1.0, 40)
    idx = [0, 5, 6]
    a, b = corrupt_targets(y, idx, mode="noise", shift=4.0, seed=3), corrupt_targets(y, idx, mode="noise", shift=4.0,
                                                                                     seed=3)
    c = corrupt_targets(y, idx, mode="noise", shift=4.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.nonzero(a != y).flatten().tolist() == idx
    with pytest.raises(ValueError, match="mode"):
        corrupt_targets(y, idx, mode="flip")
    with pytest.raises(ValueError, match="shift"):
        corrupt_targets(y, idx, shift=float("nan"))


def test_split_requests_cuts_the_forget_set_into_nearly_equal_disjoint_parts():
    idx = torch.arange(0, 100, 3)                        # 34 rows
    parts = split_requests(idx, 4, n=100, seed=0)
    assert sorted(len(p) for p in parts) == [8, 8, 9, 9]
    assert sorted(torch.cat(parts).tolist()) == idx.tolist()
    # a random order (seeded), not the sorted forget set cut into blocks
    assert [p.tolist() for p in parts] == [p.tolist() for p in split_requests(idx, 4, n=100, seed=0)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in split_requests(idx, 4, n=100, seed=1)]
    assert parts[0].tolist() != idx[:9].tolist()
    with pytest.raises(ValueError, match="requests"):
        split_requests(idx, 35, n=100)


def test_corrupt_forget_set_corrupts_training_targets_of_d_f_only_never_the_test_set():
    cfg = merge(load_config(quick=True), {"forget": {"kind": "corrupted", "fraction": 0.1, "shift": 3.0}})
    data = build_data(cfg)
    idx = build_forget_indices(cfg, data)
    bad, record = corrupt_forget_set(cfg, data, idx)
    assert torch.equal(bad.y_test, data.y_test) and torch.equal(bad.x, data.x)
    assert torch.nonzero(bad.y != data.y).flatten().tolist() == idx.tolist()
    assert record["num_corrupted"] == len(idx) == 12 and record["mode"] == "shift"


# -- the metrics -------------------------------------------------------------------------------------
def test_membership_and_recovered_fraction():
    assert membership_signal(1.0, 1.5) == pytest.approx(-0.5)   # D_f fitted better than test: remembered
    assert recovered_fraction(2.0, 1.5, 1.0) == pytest.approx(0.5)
    assert recovered_fraction(2.0, 2.5, 1.0) == pytest.approx(-0.5)
    assert math.isnan(recovered_fraction(1.0, 0.9, 1.2))        # retraining did not help: undefined
    assert worst_verdict(["ok", "failed", "uncertain"]) == "failed"
    assert worst_verdict(["ok", "uncertain", None]) == "uncertain" and worst_verdict([None]) is None


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize("forget, key", [
    ({"kind": "corrupted", "fraction": 1.5}, "forget.fraction"),
    ({"kind": "corrupted", "fraction": 0.1, "mode": "flip"}, "forget.mode"),
    ({"kind": "corrupted", "fraction": 0.1, "shift": 0.0}, "forget.shift"),
    ({"kind": "corrupted", "size": -2}, "forget.size"),
    ({"kind": "corrupted", "fraction": 0.1, "requests": 3}, "forget.'requests'"),
    ({"kind": "sequential", "fraction": 0.1}, "forget.requests"),
    ({"kind": "sequential", "fraction": 0.1, "requests": 1}, "forget.requests"),
    ({"kind": "sequential", "fraction": 0.1, "requests": 2, "shift": 3.0}, "forget.'shift'"),
    ({"kind": "sequential", "fraction": 0.1, "requests": 2, "step_references": "yes"}, "forget.step_references"),
    ({"kind": "sequential", "fraction": 0.1, "requests": 2, "seed": -1}, "forget.seed"),
])
def test_bad_scenario_keys_are_refused_naming_the_key(forget, key):
    cfg = merge(load_config(quick=True), {"forget": forget})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(cfg)


@pytest.mark.parametrize("forget, message", [
    ({"kind": "sequential", "size": 3, "requests": 4}, "forget.requests = 4 is more than the 3 rows"),
    ({"kind": "corrupted", "size": 3, "fraction": 0.1}, "exactly one of forget.size or forget.fraction"),
    ({"kind": "sequential", "size": 120, "requests": 2}, "would forget all data"),
])
def test_impossible_scenarios_are_refused_before_any_fit(forget, message):
    cfg = merge(load_config(quick=True), {"forget": forget})
    with pytest.raises(ConfigError, match=message):
        build_forget_indices(cfg, build_data(cfg))


# -- whole runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corrupted")
    cfg = _cfg({"kind": "corrupted", "fraction": 0.1, "shift": 3.0}, ["laplace-downdate"])
    return run_experiment(cfg, out, progress=False), out


def test_corrupted_run_forgetting_the_corrupted_rows_recovers_test_error(corrupted_run):
    doc, out = corrupted_run
    by = {r["method"]: r["metrics"] for r in doc["results"]}
    # 12 of 120 targets shifted by 3 std: the fit on them is measurably worse on the clean test set
    # (measured, seeds 0-3: retrain / none test RMSE = 0.40-0.58 here; at fraction 0.05 it is 0.54-0.68, and
    # mode = "noise" at 0.05 is not reliable: seed 3 gave none 0.126 < retrain 0.132)
    assert by["retrain"]["test/rmse"] < 0.75 * by["none"]["test/rmse"]
    assert by["retrain"]["test/nll"] < by["none"]["test/nll"]
    assert by["none"]["utility/test_rmse_recovered"] == 0.0 and by["retrain"]["utility/test_rmse_recovered"] == 1.0
    assert "utility/test_nll_recovered" in by["laplace-downdate"]
    # retraining does not fit the corrupted targets: D_f is far worse fitted than the test set
    assert by["retrain"]["membership"] > by["none"]["membership"] > 0
    req = doc["request"]["corruption"]
    assert req["num_corrupted"] == doc["request"]["num_forget"] == 12 and req["shift"] == 3.0
    report = (out / "report.md").read_text()
    assert "### Corrupted targets" in report and "| method | test RMSE | RMSE recovered |" in report
    with open(out / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"membership", "utility/test_rmse_recovered"} <= set(header)


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    # the conjugate linear model: the Laplace down-date is exact, so the chain must not drift at all
    cfg = resolve(merge(_cfg({"kind": "sequential", "requests": 3, "fraction": 0.1, "step_references": True},
                             ["laplace-downdate", "retrain-warm"]), {"model": {"name": "linear"}}))
    return run_experiment(cfg, out, progress=False), out


def test_sequential_run_reports_every_request_and_ends_on_the_retained_data(sequential_run):
    doc, out = sequential_run
    rows = {r["method"]: r for r in doc["results"]}
    assert "sequential" not in rows["none"] and "sequential" not in rows["retrain"]
    req = doc["request"]
    assert req["sequential"]["requests"] == 3 and sum(req["sequential"]["sizes"]) == req["num_forget"] == 12
    assert len(rows["retrain-warm"]["sequential"]) == 3
    row = rows["laplace-downdate"]
    steps = row["sequential"]
    assert [e["request"] for e in steps] == [0, 1, 2]
    assert sum(e["num_forget"] for e in steps) == req["num_forget"]
    assert [e["num_forgotten_so_far"] for e in steps] == [4, 8, 12]
    assert [e["num_retain"] for e in steps] == [116, 112, 108]      # the final posterior's data is D_r
    assert row["wall_time_s"] == pytest.approx(sum(e["wall_time_s"] for e in steps))
    assert row["verdict"] == worst_verdict([e["verdict"] for e in steps])
    assert all(math.isfinite(e["test/rmse"]) and math.isfinite(e["forget_so_far/nll"]) for e in steps)
    # exact down-dates: after every request the chain equals a retrain on what is left (no drift)
    assert all(e["verdict"] == "ok" and e["test/predictive_kl"] < 1e-6 for e in steps)
    assert row["metrics"]["test/predictive_kl"] < 1e-6 and row["verdict"] == "ok"
    report = (out / "report.md").read_text()
    assert "### Sequential deletion requests" in report and "| laplace-downdate |" in report
    assert "| method | request 1 | request 2 | request 3 |" in report
