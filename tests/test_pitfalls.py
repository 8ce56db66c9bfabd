"""benchmarks.pitfalls (the pitfalls study, run from the repository root): the quick mode runs end to end and
writes its JSON and figures."""

from __future__ import annotations

import json

import matplotlib.image as mpimg

from benchmarks import pitfalls


def test_quick_study_writes_json_and_figures(tmp_path, capsys):
    assert pitfalls.main(["--out", str(tmp_path / "out"), "--quick"]) == 0
    out = tmp_path / "out"
    res = json.loads((out / "pitfalls.json").read_text())
    assert {"config", "lambda_sweep", "downdate_pd", "region_vs_random", "deletion_fraction", "timings",
            "figures"} <= set(res)
    assert res["config"]["quick"] is True
    pts = res["lambda_sweep"]["points"]
    assert len(pts) == 2 and all({"eubo-adjusted", "rkl"} <= set(p) for p in pts)
    assert pts[0]["value"] == 0.0 and pts[0]["kind"] == "lam"
    assert "forget/predictive_kl" in res["lambda_sweep"]["none"]
    summ = res["downdate_pd"]["summary"]
    assert set(summ) == {"exact", "ggn"}
    assert summ["ggn"]["downdate_failures"] == 0  # GGN: Λ − G_f = prior + G_r is PD by construction
    assert {r["method"] for r in res["region_vs_random"]["region"]} >= {"none", "laplace-downdate", "rkl"}
    assert res["region_vs_random"]["random"][0]["method"] == "none"
    assert [e["fraction"] for e in res["deletion_fraction"]["entries"]] == [0.05, 0.2]
    for name in res["figures"].values():
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100
    assert set(res["figures"]) >= {"lambda_sweep", "spectra", "region_vs_random", "deletion_fraction", "bands"}
    assert "total" in capsys.readouterr().out



def test_parse_variant():
    assert pitfalls.parse_variant("eubo-adjusted:quantile=0.5,lr=0.01") == ("eubo-adjusted", {"quantile": 0.5, "lr": 0.01})
    assert pitfalls.parse_variant("laplace-downdate:mean=keep") == ("laplace-downdate", {"mean": "keep"})
    assert pitfalls.parse_variant("none") == ("none", {})
