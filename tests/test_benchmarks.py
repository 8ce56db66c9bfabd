"""``python -m benchmarks.run --quick`` runs end to end and writes a well-formed result.

No timed assertions: only the JSON schema, finite ratios, and that the figure and tables exist.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives in the repo root
from benchmarks.run import main  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--out", str(out)]) == 0
    with open(out / "benchmarks.json") as f:
        return out, json.load(f)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_quick_benchmark_schema(quick):
    out, res = quick
    assert (out / "benchmarks.png").stat().st_size > 1000
    assert res["quick"] is True and {"svi", "grid", "params", "scaling", "targets"} <= set(res)
    svi = res["svi"]
    assert set(svi["ms_per_step"]) == {"stock", "direct-eager", "direct"}
    assert all(_finite(v) and v > 0 for v in svi["ms_per_step"].values())
    assert _finite(svi["speedup_total"]) and _finite(svi["speedup_overhead"]) and svi["profile"]["stock"]
    for case in res["grid"] + res["params"]:
        for cell in case["cells"]:
            assert _finite(cell["retrain_s"]) and cell["num_forget"] >= 1
            for row in cell["methods"]:
                assert "error" not in row, row
                assert _finite(row["unlearn_s"]) and _finite(row["speedup"]) and _finite(row["gap_closed"])
    # laplace-downdate is exact for the conjugate model: it closes the whole gap
    blr = res["grid"][0]["cells"][0]
    assert next(r for r in blr["methods"] if r["method"] == "laplace-downdate")["gap_closed"] > 0.99
    sc = res["scaling"]
    assert all(len(v) == len(sc["sizes"]) for v in sc["unlearn_s"].values())
    assert all(_finite(v) for v in sc["ratio_largest_to_smallest"].values())
    for t in res["targets"].values():
        assert t["met"] in (True, False, None) and "goal" in t


def test_bootstrap_interval_covers_the_median_of_a_large_sample():
    import numpy as np

    from benchmarks.bnn_unlearning import bootstrap_ci

    rng = np.random.default_rng(1)
    v = list(rng.normal(3.0, 1.0, 400))
    med, lo, hi = bootstrap_ci(v)
    assert lo < med < hi
    # the median's standard error for a normal sample is ≈ 1.2533 σ/√n: the interval is ≈ ±1.96 of it
    half = 1.96 * 1.2533 / 20
    assert abs((hi - lo) / 2 - half) < 0.5 * half
    assert abs(med - 3.0) < 3 * half
    assert all(np.isnan(bootstrap_ci([])))


def test_verdict_counts_and_table_from_a_document():
    from benchmarks.bnn_unlearning import markdown_table, summarise, verdict_counts

    def row(m, v, g):
        return {"method": m, "verdict": v, "wall_time_s": 1.0, "speedup_vs_retrain": 2.0,
                **{f"{s}/gap_closed": g for s in ("forget", "retain", "test")}}
    per_seed = [{"seed": 0, "rows": [row("a", "ok", 0.3), row("b", "failed", 0.95), row("c", "ok", 0.99)]},
                {"seed": 1, "rows": [row("a", "uncertain", 0.3), row("b", "failed", 0.2), row("c", "ok", 0.97)]}]
    vc = verdict_counts(per_seed)
    assert vc["results"] == 6
    assert [(s, m) for s, m, _ in vc["ok_with_gap_below_0.5"]] == [(0, "a")]
    assert [(s, m) for s, m, _ in vc["failed_with_gap_at_least_0.9"]] == [(0, "b")]
    doc = {"config": {"seeds": [0, 1]}, "summary": summarise(per_seed), "verdict_counts": vc}
    table = markdown_table(doc)
    assert "| c | 0.98 [" in table and "| 0/0/2 |" in table and "| 1/1/0 |" in table
    assert "\"ok\" with gap closed < 0.5 on a split: 1" in table


def test_table_adds_the_adam_retrain_column_only_when_it_was_run():
    from benchmarks.bnn_unlearning import markdown_table, summarise, verdict_counts

    def row(m, adam=None):
        r = {"method": m, "verdict": "ok", "wall_time_s": 1.0, "speedup_vs_retrain": 2.0,
             **{f"{s}/gap_closed": 0.9 for s in ("forget", "retain", "test")}}
        if adam is not None:
            r["speedup_vs_retrain_adam"] = adam
        return r
    for rows, has in (([row("lm-refit", 40.0), row("retrain@adam", 1.0)], True), ([row("lm-refit")], False)):
        per_seed = [{"seed": 0, "rows": rows}]
        doc = {"config": {"seeds": [0]}, "summary": summarise(per_seed), "verdict_counts": verdict_counts(per_seed)}
        table = markdown_table(doc)
        assert ("× retrain@adam" in table) is has
        assert ("| 40.0 [40.0, 40.0] |" in table) is has


def _doc(seeds, **config):
    from benchmarks.bnn_unlearning import summarise, verdict_counts

    def row(m, rho):
        return {"method": m, "verdict": "ok", "wall_time_s": 1.0, "speedup_vs_retrain": 2.0,
                **{f"{s}/{k}": v for s in ("forget", "retain", "test")
                   for k, v in (("gap_closed", 0.9), ("gap_closed_loo", 0.8), ("floor_ratio", rho))},
                "within_floor": rho <= 1.0}
    per_seed = [{"seed": s, "rows": [row("lm-refit", 0.5 + s), row("none", 40.0)]} for s in seeds]
    cfg = {"n": 300, "scenario": "region", "family": "laplace", "structure": "full", "references": 3,
           "methods": ["lm-refit"], "fit_options": "{}", "method_options": "{}", "seeds": list(seeds), **config}
    return {"config": cfg, "per_seed": per_seed, "summary": summarise(per_seed), "verdict_counts": verdict_counts(per_seed)}


def test_merge_joins_disjoint_seeds_and_refuses_unlike_runs(tmp_path):
    from benchmarks._io import write_result
    from benchmarks.bnn_unlearning import markdown_table, merge

    paths = []
    for name, seeds, cfg in (("a", [0], {}), ("b", [1, 2], {}), ("c", [1], {}), ("d", [3], {"n": 10_000})):
        paths.append(str(write_result(tmp_path / f"{name}.json", _doc(seeds, **cfg))))
    doc = merge(paths[:2])
    assert doc["config"]["seeds"] == [0, 1, 2]
    lm = next(c for c in doc["summary"] if c["method"] == "lm-refit")
    assert lm["n"] == 3 and lm["within_floor"] == [1, 3]  # rho 0.5, 1.5, 2.5: only seed 0 within the floor
    assert lm["forget/floor_ratio"][0] == 1.5
    table = markdown_table(doc)
    assert "Against the noise floor" in table and "| lm-refit | 1.50 [" in table and "| 1/3 |" in table
    with pytest.raises(ValueError, match="seeds .* repeat"):
        merge([paths[1], paths[2]])
    with pytest.raises(ValueError, match=r"differs .* in \['n'\]"):
        merge([paths[0], paths[3]])


def test_unknown_scenario_and_a_single_reference_are_refused_before_any_fit():
    import torch

    from benchmarks.bnn_unlearning import forget_indices, run_seed

    with pytest.raises(ValueError, match="unknown scenario 'regoin'"):
        forget_indices(torch.zeros(5, 1), "regoin", 0)
    assert len(forget_indices(torch.zeros(200, 1), "random:0.05", 0)) == 10
    with pytest.raises(ValueError, match="at least 2 retrains"):
        run_seed(0, n=50, scenario="region", family="laplace", structure="full", methods=[], K=1, method_options={})


def test_seed_offset_runs_a_held_out_retrain_scored_like_a_method(monkeypatch):
    """'retrain@holdout' with {"seed_offset": 2000}: the same retrain as the references under a seed none of them
    used, so its ρ is what a retrain itself scores against the floor (K = 2 references: seeds s and s + 1000)."""
    import benchmarks.bnn_unlearning as bu
    from bayes_unlearn import unlearning

    seen, times = [], []
    real = unlearning.unlearn

    def spy(post, xf, yf, method, *, seed=0, **kw):
        seen.append((method, seed))
        r = real(post, xf, yf, method, seed=seed, **kw)
        times.append(r.wall_time_s)
        return r

    monkeypatch.setattr(unlearning, "unlearn", spy)
    doc = bu.run_seed(4, n=60, scenario="random:0.1", family="laplace", structure="diag",
                      methods=["retrain@holdout", "retrain@lm"], K=2,
                      method_options={"retrain@holdout": {"seed_offset": 2000}, "retrain@lm": {"optimizer": "lm"}},
                      fit_options={"optimizer": "adam-lbfgs", "num_steps": 50})
    assert seen == [("retrain", 4), ("retrain", 1004), ("retrain", 2004), ("retrain", 4)]
    row = next(r for r in doc["rows"] if r["method"] == "retrain@holdout")
    assert math.isfinite(row["forget/floor_ratio"]) and "within_floor" in row
    # the mean retrain time pools the default retrains (the references and the held-out one), not a variant
    # with other options (the LM retrain of an Adam fit)
    assert doc["reference_wall_times_s"] == times[:2] and doc["retrain_wall_times_s"] == times[:3]
    # the exchangeability rank: the held-out retrain among the 2 references (n = 3); any other row ("none"
    # here; retrain@lm is refused on this Adam fit and carries its error) among them and the held-out one (n = 4)
    assert row["rank_n"] == 3 and all(1 <= row[f"{s}/rank"] <= 3 for s in bu.SPLITS)
    other = next(r for r in doc["rows"] if r["method"] == "none")
    assert other["rank_n"] == 4 and all(1 <= other[f"{s}/rank"] <= 4 for s in bu.SPLITS)
    # residual memory against the same pool: θ* keeps all of its own departure; the held-out retrain a share
    # that is read against that 1 (finite, and not the original's)
    assert all(other[f"{s}/memory"] == pytest.approx(1.0) for s in bu.SPLITS)
    assert all(math.isfinite(row[f"{s}/memory"]) and row[f"{s}/memory"] != pytest.approx(1.0) for s in bu.SPLITS)
    assert "rank_n" not in next(r for r in doc["rows"] if r["method"] == "retrain@lm")
    cell = next(c for c in bu.summarise([doc]) if c["method"] == "retrain@holdout")
    assert cell["rank_seeds"] == 1 and cell["forget/rank_mean"][1] == 2.0
    assert cell["forget/rank_p"] == pytest.approx((4 - row["forget/rank"]) / 3 if row["forget/rank"] == int(
        row["forget/rank"]) else (4 - math.floor(row["forget/rank"])) / 3)


def test_verdict_share_flags_the_region_and_reads_the_flags_against_measured_misses(tmp_path):
    """benchmarks.verdict_share on a tiny net: the region is flagged and lm-refit's verdict there is no longer
    "ok"; a measured miss joined from a bnn_unlearning JSON is counted as flagged (and as "ok" before)."""
    import json

    from benchmarks import verdict_share as vs

    measured = {"method": "lm-refit", "forget/rank": 4.0, "retain/rank": 2.0, "test/rank": 4.0, "rank_n": 4,
                "forget/floor_ratio": 1.5, "retain/floor_ratio": 0.5, "test/floor_ratio": 1.2,
                "within_floor": False, "verdict": "ok"}
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"per_seed": [{"seed": 2, "scenario": "region", "rows": [
        {"method": "retrain"}, measured]}]}))
    doc = vs.main(["--n", "80", "--seeds", "2", "--scenarios", "region", "random:0.05", "--ranks", str(ranks),
                   "--fit-options", '{"num_steps": 300}', "--out", str(tmp_path / "vs.json")])
    region, scattered = doc["rows"]
    assert region["flagged"] and region["forget_share"] > 0.5 and region["lm_refit_verdict"] != "ok"
    assert any(r.startswith("the forget set supplied") for r in region["lm_refit_reasons"])
    assert region["measured_rank"] == {"forget": 4.0, "retain": 2.0, "test": 4.0} and "measured_rank" not in scattered
    s = doc["summary"]["region"]
    assert (s["seeds"], s["flagged"], s["measured_misses"], s["misses_flagged"]) == (1, 1, 1, 1)
    assert (s["misses_ok_before"], s["misses_ok_now"], s["lm_refit_ok"]) == (1, 0, 0)
    assert doc["summary"]["random:0.05"]["seeds"] == 1 and doc["summary"]["random:0.05"]["measured_misses"] == 0


@pytest.mark.slow  # about 45 s idle: a fit, three retrains and five refits
def test_warm_start_variants_score_like_methods_and_reuse_their_store(tmp_path):
    """benchmarks.bnn_warm_starts on a tiny net: every variant is refitted and scored (ρ, L_r against the
    references, Laplace log-evidence); the fit and the retrains are stored once and reused."""
    from benchmarks import bnn_warm_starts as bw

    args = ["--n", "80", "--seed", "1", "--scenario", "random:0.1", "--references", "2", "--max-iters", "40",
            "--variants", "draw:0.1", "reset:10", "shrink:0.9", "prior:10", "--store", str(tmp_path / "store")]
    doc = bw.main(args + ["--out", str(tmp_path / "a.json")])
    names = [r["variant"] for r in doc["rows"]]
    assert names == ["none", "retrain (reference 0)", "retrain (reference 1)", "retrain (held out)", "lm-refit",
                     "draw:0.1", "reset:10", "shrink:0.9", "prior:10"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "fit_n80_s1.st", "ref_n80_s1_random0.1_0.st", "ref_n80_s1_random0.1_1.st", "ref_n80_s1_random0.1_2.st"]
    for r in doc["rows"]:
        assert all(math.isfinite(r[f"{s}/floor_ratio"]) for s in ("forget", "retain", "test")), r
        assert math.isfinite(r["log_evidence"]), r
    # a reference's own retained loss minus the references' mean: the two references' differences cancel
    refs = [r["retained_loss_minus_retrains"] for r in doc["rows"] if r["variant"].startswith("retrain (reference")]
    assert sum(refs) == pytest.approx(0.0, abs=1e-6)
    assert doc["fit_time_s"] is not None
    again = bw.main(args + ["--variants", "shrink:0.9", "--out", str(tmp_path / "b.json")])
    assert again["fit_time_s"] is None  # loaded from the store, not refitted
    assert again["rows"][4]["retained_loss_minus_retrains"] == pytest.approx(doc["rows"][4]["retained_loss_minus_retrains"])
    with pytest.raises(SystemExit):
        bw.main(args + ["--variants", "jitter:1", "--out", str(tmp_path / "c.json")])
