"""``bayes-unlearn run`` says where it stands (issue 12, item 7): status.json, Ctrl-C, failures, atomic files."""

from __future__ import annotations

import json

import pytest

import bayes_unlearn.analysis.experiment as experiment
from bayes_unlearn.analysis.cli import main
from bayes_unlearn.analysis.files import atomic_path, read_status, write_text_atomic

TINY = ("[data]\nn = 40\n[model]\nname = 'linear'\n[inference]\nmethod = 'laplace'\n"
        "[forget]\nkind = 'random'\nfraction = 0.2\n[methods]\nrun = ['laplace-downdate']\n"
        "[analysis]\nfigures = false\nnetcdf = false\npredictive_samples = 20\npsis_samples = 50\nreferences = {refs}\n")


def _config(tmp_path, refs: int = 1):
    p = tmp_path / "c.toml"
    p.write_text(TINY.format(refs=refs))
    return str(p)


def test_a_finished_run_says_complete(tmp_path):
    out = tmp_path / "res"
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 0
    status = read_status(out)
    assert status["status"] == "complete" and status["ended"] >= status["started"]
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_ctrl_c_gives_exit_130_one_line_and_an_interrupted_status(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "unlearn", interrupted)
    out = tmp_path / "res"
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and str(out) in err[0]
    assert read_status(out)["status"] == "interrupted"
    assert not (out / "metrics.json").exists()  # nothing that looks like a finished run


def test_a_failing_fit_gives_exit_1_one_line_and_a_failed_status_with_the_message(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the optimiser met a wall")

    monkeypatch.setattr(experiment, "fit", broken)
    out = tmp_path / "res"
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: the optimiser met a wall" in err[0] and "Traceback" not in err[0]
    status = read_status(out)
    assert status["status"] == "failed" and status["error"] == "RuntimeError: the optimiser met a wall"


def test_a_failing_ensemble_retrain_keeps_the_other_results(tmp_path, monkeypatch):
    """One of the extra retrains (seed + 3) raises: the run completes, scored against the retrains that
    worked, and the reference says what was lost."""
    real = experiment.unlearn

    def flaky(post, xf, yf, method, *, seed, **kw):
        if method == "retrain" and seed == 3:
            raise RuntimeError("retrain diverged")
        return real(post, xf, yf, method, seed=seed, **kw)

    monkeypatch.setattr(experiment, "unlearn", flaky)
    from bayes_unlearn.analysis.config import load_config

    cfg = load_config(_config(tmp_path, refs=3), seed=0)
    doc = experiment.run_experiment(cfg, tmp_path / "res", progress=False)
    ref = doc["reference"]
    assert ref["retrains"] == 2 and ref["seeds"] == [1, 2]
    assert "retrain seed 3: RuntimeError: retrain diverged" in ref["error"]
    row = {r["method"]: r for r in doc["results"]}["laplace-downdate"]
    assert row["metrics"]["test/gap_closed"] == pytest.approx(1.0, abs=1e-3)  # exact on the conjugate model
    assert "retain/within_noise_floor" in row["metrics"]  # the floor from the two that worked
    assert read_status(tmp_path / "res")["status"] == "complete"
    assert "Reference incomplete" in (tmp_path / "res" / "report.md").read_text()


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, json.dumps({"v": 1}))
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "half')  # killed half-way through the new version
        raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the temporary file is gone
