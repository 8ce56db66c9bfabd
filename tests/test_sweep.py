"""``bayes-unlearn sweep``: the sweep file, tasks and records, --resume, the summary and the bootstrap."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from bayes_unlearn.analysis.cli import main
from bayes_unlearn.analysis.config import ConfigError
from bayes_unlearn.analysis.stats import bootstrap_ci
from bayes_unlearn.analysis.sweep import SPLITS, SweepError, plan_sweep, run_sweep, summarise

# tiny tasks: the conjugate linear model on 60 points, two references and one method, no extras (≈ 2 s each)
BASE = """
[base]
data = { n = 60 }
model = { name = "linear" }
inference = { options = { num_steps = 100 } }
[base.analysis]
figures = false
netcdf = false
noise_floor = false
references = 1
psis_samples = 50
predictive_samples = 20
[methods]
run = ["retrain-warm"]
"""
# "empty" passes every check that needs no data, and fails at run time: no point has x in [10, 11]
SWEEP = "seeds = 2\n" + BASE + """
[scenarios.region]
forget = { kind = "region", low = 1.5, high = 3.5 }
[scenarios.empty]
forget = { kind = "region", low = 10.0, high = 11.0 }
"""
TIMING = {"speedup", "wall_time_s"}


def _write(path, text):
    path.write_text(text)
    return path


def _cells(summary: dict) -> list[dict]:
    return [c for c in summary["cells"] if c["metric"] not in TIMING]


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory):
    """A serial sweep through the CLI: region/seed{0,1} complete, empty/seed{0,1} failed (exit status 1)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_file = _write(root / "sweep.toml", SWEEP)
    rc = main(["sweep", "--config", str(sweep_file), "--out", str(root / "out"), "--quick", "--engine", "serial",
               "--no-progress"])
    return {"rc": rc, "file": sweep_file, "out": root / "out"}


# -- the bootstrap ---------------------------------------------------------------------------------------
def test_bootstrap_interval_matches_the_normal_interval_of_a_large_sample():
    v = np.random.default_rng(1).normal(3.0, 2.0, 400)
    est, lo, hi = bootstrap_ci(v)
    assert est == pytest.approx(v.mean())
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v))
    assert abs(lo - (est - half)) < 0.15 * half and abs(hi - (est + half)) < 0.15 * half
    # a narrower level gives a narrower interval; the same seed gives the same interval
    _, lo80, hi80 = bootstrap_ci(v, level=0.80)
    assert lo < lo80 < hi80 < hi
    assert bootstrap_ci(v, seed=7) == bootstrap_ci(v, seed=7) != bootstrap_ci(v, seed=8)


def test_bootstrap_skips_missing_values_and_handles_tiny_samples():
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([None, 1.0, float("nan"), 3.0, float("inf")]) == bootstrap_ci([1.0, 3.0])
    assert all(math.isnan(x) for x in bootstrap_ci([None, float("nan")]))
    est, lo, hi = bootstrap_ci([1.0, 2.0, 4.0], stat=np.median)
    assert est == 2.0 and 1.0 <= lo <= hi <= 4.0
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)


def test_the_benchmark_keeps_its_median_bootstrap():
    from benchmarks.bnn_unlearning import bootstrap_ci as bench_ci

    v = list(np.random.default_rng(2).normal(size=9))
    assert bench_ci(v) == bootstrap_ci(v, stat=np.median)
    assert bench_ci(v)[0] == pytest.approx(float(np.median(v)))


# -- the sweep file ----------------------------------------------------------------------------------------
def test_a_task_config_is_defaults_then_base_then_methods_then_scenario_then_seed():
    spec = {"seeds": [4, 7], "base": {"data": {"n": 80}, "methods": {"run": ["lm-refit"]}},
            "methods": {"run": ["retrain-warm"], "skip": []},
            "scenarios": {"a": {"data": {"noise": 0.2}}, "b": {"methods": {"run": ["laplace-downdate"]}}}}
    sw = plan_sweep(spec, quick=True)
    assert [(t.scenario, t.seed) for t in sw.tasks] == [("a", 4), ("a", 7), ("b", 4), ("b", 7)]
    a, b = sw.tasks[0].config, sw.tasks[3].config
    assert a["data"] == {"name": "synthetic_1d", "n": 80, "noise": 0.2, "n_test": 100}  # --quick's n_test kept
    assert a["model"]["hidden"] == [8, 8]                                          # --quick applies
    assert a["methods"]["run"] == ["retrain-warm"] and b["methods"]["run"] == ["laplace-downdate"]
    assert (a["seed"], b["seed"]) == (4, 7)
    assert plan_sweep({"seeds": 3, "scenarios": {"x": {}}}).seeds == [0, 1, 2]


@pytest.mark.parametrize("text, needle", [
    ("seeds = 2\ncolour = 1\n[scenarios.a]\n", "sweep.'colour'"),
    ("seeds = 2\n[scenarios.a]\nmodel = { hiden = [8] }\n", "scenarios.a: unknown key model.'hiden'"),
    ("seeds = 2\n[scenarios.a]\nforget = { kind = \"region\", lo = 1.0 }\n", "scenarios.a: unknown key forget.'lo'"),
    ("seeds = 2\n[scenarios.'a/b']\n", "scenarios.'a/b'"),
    ("seeds = 2\n[scenarios.figures]\n", "scenarios.'figures'"),
    ("seeds = 0\n[scenarios.a]\n", "seeds"),
    ("seeds = [1, 1]\n[scenarios.a]\n", "repeats"),
    ("seeds = 2\n[scenarios.a]\nseed = 3\n", "scenarios.a.seed"),
    ("seeds = 2\n[methods]\nrun = [\"no-such-method\"]\n[scenarios.a]\n", "scenarios.a: methods.run"),
    ("seeds = 2\n", "[scenarios]"),
])
def test_a_bad_sweep_file_exits_2_with_one_line_naming_the_key(tmp_path, capsys, text, needle):
    f = _write(tmp_path / "bad.toml", text)
    assert main(["sweep", "--config", str(f), "--out", str(tmp_path / "out"), "--engine", "serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written before every task was checked


def test_sweep_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--config", "--out", "--quick", "--engine", "--address", "--num-cpus", "--resume", "--no-progress"):
        assert opt in text


def test_ray_missing_is_one_line_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SweepError, match=r"pip install 'bayes-unlearn\[sweep\]'"):
        run_sweep(_write(tmp_path / "s.toml", SWEEP), tmp_path / "out", quick=True, engine="ray")
    assert not (tmp_path / "out").exists()


# -- running, records and the summary ---------------------------------------------------------------------
def test_a_failing_task_is_recorded_and_the_sweep_finishes(serial_sweep):
    out = serial_sweep["out"]
    assert serial_sweep["rc"] == 1  # a task failed
    for k in (0, 1):
        ok = json.loads((out / "region" / f"seed{k}" / "task.json").read_text())
        assert ok["status"] == "complete" and ok["engine"] == "serial" and ok["wall_time_s"] > 0
        bad = json.loads((out / "empty" / f"seed{k}" / "task.json").read_text())
        assert bad["status"] == "failed" and bad["error"].startswith("ConfigError") and "empty" in bad["error"]
        assert "Traceback" in bad["traceback"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["complete"] == 2
    assert [(f["scenario"], f["seed"]) for f in summary["tasks"]["failed"]] == [("empty", 0), ("empty", 1)]
    assert "empty/seed0" in (out / "report.md").read_text()


def test_summary_schema_and_cells_agree_with_the_task_folders(serial_sweep):
    out = serial_sweep["out"]
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"engine", "seeds", "scenarios", "tasks", "cells"}
    assert (s["engine"], s["seeds"], s["scenarios"]) == ("serial", [0, 1], ["region", "empty"])
    keys = {"scenario", "method", "metric", "mean", "median", "ci_low", "ci_high", "n"}
    assert all(set(c) == keys for c in s["cells"])
    assert {c["scenario"] for c in s["cells"]} == {"region"}  # the failed scenario has no cells
    index = {(c["method"], c["metric"]): c for c in s["cells"]}
    assert {m for m, _ in index} == {"none", "retrain", "retrain-warm"}
    for metric in ("test/gap_closed", "forget/gap_closed", "speedup", "wall_time_s", "verdict_ok"):
        assert ("retrain-warm", metric) in index
    assert ("none", "speedup") not in index  # doing nothing has no meaningful speed-up
    docs = [json.loads((out / "region" / f"seed{k}" / "metrics.json").read_text()) for k in (0, 1)]
    rows = [{r["method"]: r for r in d["results"]} for d in docs]
    w2 = [r["retrain-warm"]["metrics"]["test/w2"] for r in rows]
    c = index[("retrain-warm", "test/w2")]
    assert c["n"] == 2 and c["mean"] == pytest.approx(np.mean(w2)) and c["median"] == pytest.approx(np.median(w2))
    assert c["ci_low"] <= c["mean"] <= c["ci_high"] and min(w2) <= c["ci_low"] and c["ci_high"] <= max(w2)
    speed = [r["retrain"]["wall_time_s"] / r["retrain-warm"]["wall_time_s"] for r in rows]
    assert index[("retrain-warm", "speedup")]["mean"] == pytest.approx(np.mean(speed))
    ok = [float(r["retrain-warm"]["verdict"] == "ok") for r in rows]
    assert index[("retrain-warm", "verdict_ok")]["mean"] == pytest.approx(np.mean(ok))
    with (out / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(s["cells"]) and set(table[0]) == keys
    report = (out / "report.md").read_text()
    assert "## region" in report and "| retrain-warm |" in report and "figures/region_gap_closed.png" in report
    assert (out / "figures" / "region_gap_closed.png").stat().st_size > 1000
    assert not (out / "figures" / "empty_gap_closed.png").exists()


def test_summarise_rebuilds_the_same_summary_from_the_folder(serial_sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(serial_sweep["out"], copy)
    before = json.loads((copy / "summary.json").read_text())
    for name in ("summary.json", "summary.csv", "report.md"):
        (copy / name).unlink()
    (copy / "sweep.json").unlink()  # even the plan: rebuilt from the task folders
    again = summarise(copy)
    assert again["cells"] == before["cells"] and again["tasks"]["complete"] == 2
    assert (copy / "report.md").exists() and (copy / "summary.csv").exists()


def test_an_existing_sweep_folder_needs_resume(serial_sweep, capsys):
    rc = main(["sweep", "--config", str(serial_sweep["file"]), "--out", str(serial_sweep["out"]), "--quick",
               "--engine", "serial"])
    assert rc == 2 and "--resume" in capsys.readouterr().err


def test_resume_with_another_configuration_is_refused(serial_sweep, tmp_path):
    other = _write(tmp_path / "other.toml", SWEEP.replace("n = 60", "n = 61"))
    with pytest.raises(ConfigError, match=r"region/seed0 finished with another configuration.*data\.n"):
        run_sweep(other, serial_sweep["out"], quick=True, engine="serial", resume=True, progress=False)


def test_resume_reruns_only_the_unfinished_task_and_reproduces_it(serial_sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(serial_sweep["out"], out)  # copy2: modification times kept
    done, redo = out / "region" / "seed0", out / "region" / "seed1"
    mtimes = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    old = json.loads((redo / "metrics.json").read_text())
    (redo / "task.json").unlink()  # as if the sweep had been killed during this task
    summary = run_sweep(serial_sweep["file"], out, quick=True, engine="serial", resume=True, progress=False)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the finished task was not touched
    assert json.loads((redo / "task.json").read_text())["status"] == "complete"
    new = json.loads((redo / "metrics.json").read_text())
    # same seed, same numbers (timings aside)
    assert [r["metrics"] for r in new["results"]] == [r["metrics"] for r in old["results"]]
    assert summary["tasks"]["complete"] == 2 and len(summary["tasks"]["failed"]) == 2  # failed ones rerun, fail again
    assert _cells(summary) == _cells(json.loads((serial_sweep["out"] / "summary.json").read_text()))


def test_ray_engine_gives_the_serial_cells(serial_sweep, tmp_path):
    pytest.importorskip("ray")
    region_only = _write(tmp_path / "region.toml", SWEEP.split("[scenarios.empty]")[0])  # two tasks, one per CPU
    summary = run_sweep(region_only, tmp_path / "ray", quick=True, engine="ray", num_cpus=2, progress=False)
    assert summary["engine"] == "ray" and summary["tasks"] == {"complete": 2, "failed": [], "pending": []}
    assert json.loads((tmp_path / "ray" / "region" / "seed1" / "task.json").read_text())["engine"] == "ray"
    serial = json.loads((serial_sweep["out"] / "summary.json").read_text())
    assert _cells(summary) == _cells(serial) and len(_cells(summary)) > 50  # same seeds, same summary
    import ray

    assert not ray.is_initialized()  # the instance it started is shut down


def test_committed_sweep_files_resolve():
    """Every task of the committed sweep files (docs/sweeps/*.toml) passes the config checks."""
    from pathlib import Path

    from bayes_unlearn.analysis.sweep import load_sweep

    files = sorted((Path(__file__).resolve().parent.parent / "docs" / "sweeps").glob("*.toml"))
    assert {f.stem for f in files} >= {"synthetic_1d", "concrete", "pitfalls"}
    for f in files:
        assert len(load_sweep(f).tasks) >= 5, f


def test_summary_carries_the_noise_floor_beside_the_methods():
    from bayes_unlearn.analysis.sweep import NOISE_FLOOR, _task_rows

    doc = {"results": [{"method": "retrain", "wall_time_s": 4.0, "metrics": {"test/gap_closed": 0.9}},
                       {"method": "lm-refit", "wall_time_s": 0.5, "metrics": {"test/gap_closed": 0.8},
                        "indistinguishable": False, "verdict": "ok"}],
           "noise_floor": {"test/gap_closed": 0.97, "test/predictive_kl": 0.01, "retrain_time_s": 3.0}}
    rows = _task_rows(doc)
    assert rows[NOISE_FLOOR]["test/gap_closed"] == 0.97
    assert rows["lm-refit"]["speedup"] == 8.0 and rows["lm-refit"]["indistinguishable"] == 0.0
    assert NOISE_FLOOR not in _task_rows({**doc, "noise_floor": {}})


def test_report_flags_a_scenario_whose_noise_floor_swamps_the_deletion():
    from bayes_unlearn.analysis.sweep import NOISE_FLOOR, _report

    def cell(method, metric, mean):
        return {"scenario": "s", "method": method, "metric": metric, "mean": mean, "median": mean,
                "ci_low": mean, "ci_high": mean, "n": 5}

    base = {"engine": "serial", "seeds": [0], "scenarios": ["s"], "tasks": {"complete": 1, "failed": [], "pending": []}}
    cells = [cell("lm-refit", "test/gap_closed", 0.1)]
    low = _report({**base, "cells": cells + [cell(NOISE_FLOOR, "test/gap_closed", 0.05)]}, {}, {})
    high = _report({**base, "cells": cells + [cell(NOISE_FLOOR, "test/gap_closed", 0.99)]}, {}, {})
    assert "Not readable" in low and "Not readable" not in high


def test_sweep_pools_the_exchangeability_ranks_into_a_p_value_per_split():
    """<split>/rank of every seed (1 … K + 1) becomes one cell <split>/rank_p, the exact tail of their sum, and
    the report says which methods are told apart from retraining."""
    from bayes_unlearn.analysis.sweep import _rank_cells, _report

    last = {f"{s}/rank": 3.0 for s in SPLITS} | {"rank_n": 3}
    middle = {f"{s}/rank": 2.0 for s in SPLITS} | {"rank_n": 3}
    cells = _rank_cells("region", "none", [last] * 5)
    assert [c["metric"] for c in cells] == [f"{s}/rank_p" for s in SPLITS]
    assert cells[0]["mean"] == pytest.approx(3.0 ** -5) and cells[0]["n"] == 5
    assert _rank_cells("region", "m", [middle] * 4)[0]["mean"] > 0.5
    # seeds without a rank (no ensemble) are left out; no rank at all: no cell
    assert _rank_cells("region", "m", [middle, {"rank_n": 3}])[0]["n"] == 1
    assert _rank_cells("region", "m", [{"test/gap_closed": 0.9}]) == []
    base = {"engine": "serial", "seeds": [0], "scenarios": ["region"],
            "tasks": {"complete": 5, "failed": [], "pending": []}}
    report = _report({**base, "cells": cells + [{"scenario": "region", "method": "none", "metric": "test/gap_closed",
                                                  "mean": 0.0, "median": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 5}]},
                     {}, {})
    assert "pooled rank test" in report and "`none`: 0.00412 / 0.00412 / 0.00412 (5 seeds)" in report
