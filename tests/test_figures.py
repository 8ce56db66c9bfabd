"""analysis.figures: each figure writes a readable PNG, copes with NaN/huge values, rejects bad shapes."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from bayes_unlearn.analysis.figures import (plot_gap_closed, plot_gap_closed_sweep, plot_kl_sweep, plot_loss_curves,
                                            plot_predictive_bands, plot_spectra)


def _check_png(path):
    assert path.exists() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


@pytest.fixture
def band_data():
    x = np.linspace(-4, 6, 50)
    rng = np.random.default_rng(0)
    xr, xf = rng.uniform(-3, 1, 30), rng.uniform(1.6, 3.4, 10)
    return {"x": x, "xr": xr, "yr": np.sin(xr), "xf": torch.tensor(xf), "yf": torch.tensor(np.sin(xf)),
            "ref": (np.sin(x), 0.1 + 0 * x), "full": (torch.tensor(np.sin(x) + 0.1), torch.full((50,), 0.1))}


def _bands(d, path, bands, **kw):
    return plot_predictive_bands(path, d["x"], bands, x_retain=d["xr"], y_retain=d["yr"], x_forget=d["xf"],
                                 y_forget=d["yf"], **kw)


def test_predictive_bands_writes_png_with_nan_and_huge(tmp_path, band_data):
    d, x = band_data, band_data["x"]
    bands = {"none": d["full"], "retrain": d["ref"], "good": d["ref"],
             "exploding": (np.sin(x) + 1e12 * (x > 2), 1e6 + 0 * x),
             "nan": (np.where(x > 3, np.nan, np.cos(x)), np.full(50, np.inf)),
             "torch": (torch.tensor(np.cos(x))[:, None], torch.full((50, 1), 0.3)),
             "five": d["ref"]}
    out = _bands(d, tmp_path / "sub" / "dir" / "bands.png", bands, region=(1.5, 3.5), max_cols=3)
    assert out == tmp_path / "sub" / "dir" / "bands.png"
    _check_png(out)


def test_predictive_bands_references_only(tmp_path, band_data):
    d = band_data
    _check_png(_bands(d, tmp_path / "refs.png", {"none": d["full"], "retrain": d["ref"]}))
    # custom reference labels and no references at all
    _check_png(_bands(d, tmp_path / "noref.png", {"a": d["ref"], "b": d["full"]}, full="x", retrain="y"))


def test_predictive_bands_rejects_mismatched_lengths(tmp_path, band_data):
    d = band_data
    with pytest.raises(ValueError, match="mean of 'bad' has 49 values but x_grid has 50"):
        _bands(d, tmp_path / "a.png", {"retrain": d["ref"], "bad": (np.zeros(49), np.ones(50))})
    with pytest.raises(ValueError, match="std of 'bad'"):
        _bands(d, tmp_path / "a.png", {"bad": (np.zeros(50), np.ones(3))})
    with pytest.raises(ValueError, match="x_forget has 10 values but y_forget has 9"):
        plot_predictive_bands(tmp_path / "a.png", d["x"], {"r": d["ref"]}, x_retain=d["xr"], y_retain=d["yr"],
                              x_forget=d["xf"], y_forget=d["yf"][:9])
    with pytest.raises(ValueError, match="empty"):
        _bands(d, tmp_path / "a.png", {})
    assert not (tmp_path / "a.png").exists()


def test_gap_closed(tmp_path):
    rows = [{"method": m, "split": s, "gap_closed": v}
            for m, vals in {"eubo": (0.5, 0.3, 0.4), "eubo-adjusted": (0.9, -60.0, 1.1),
                            "rkl": (math.nan, 0.2, None), "laplace-downdate": (-3.2, float("inf"), 2.5)}.items()
            for s, v in zip(("forget", "retain", "test"), vals)]
    _check_png(plot_gap_closed(tmp_path / "g" / "gap.png", rows))
    _check_png(plot_gap_closed(tmp_path / "one.png", [{"method": "a", "split": "test", "gap_closed": np.float32(0.7)}]))
    with pytest.raises(ValueError, match="lacks key"):
        plot_gap_closed(tmp_path / "bad.png", [{"method": "a", "split": "test"}])
    with pytest.raises(ValueError, match="empty"):
        plot_gap_closed(tmp_path / "bad.png", [])


def test_kl_sweep(tmp_path):
    # eubo: not run at the 2nd setting (None), failed at the 3rd (NaN); rkl: flagged at the 4th, one value huge
    kl = {"eubo": {"forget": [0.8, None, math.nan, 0.5], "retain": [0.5, None, math.nan, 0.4],
                   "test": [0.2, None, math.nan, 0.3]},
          "rkl": {s: torch.tensor([24.5, 3.0, 1e12, 1.0]) for s in ("forget", "retain", "test")}}
    out = plot_kl_sweep(tmp_path / "k" / "kl.png", ["0\nplain", "1e-29\n99%", "1e-3\n0%", "1"], kl,
                        reference={"forget": 1.7, "retain": 0.15, "test": 0.1},
                        flagged={"rkl": [False, False, False, True]})
    assert out == tmp_path / "k" / "kl.png"
    _check_png(out)
    _check_png(plot_kl_sweep(tmp_path / "one.png", ["a"], {"m": {"test": [1.0]}}))
    with pytest.raises(ValueError, match=r"kl\['m'\]\['test'\] has 2 values but there are 1 settings"):
        plot_kl_sweep(tmp_path / "bad.png", ["a"], {"m": {"test": [1.0, 2.0]}})
    with pytest.raises(ValueError, match="flagged names method 'x'"):
        plot_kl_sweep(tmp_path / "bad.png", ["a"], {"m": {"test": [1.0]}}, flagged={"x": [True]})
    with pytest.raises(ValueError, match="empty"):
        plot_kl_sweep(tmp_path / "bad.png", [], {"m": {"test": []}})
    assert not (tmp_path / "bad.png").exists()


def test_gap_closed_sweep(tmp_path):
    gaps = {"laplace-downdate": {"forget": [0.4, -23.7, 0.9], "retain": [-4.1e3, 0.2, None], "test": [0.5, 0.6, 0.7]},
            "rkl": {"forget": [-13.1, 2.5, float("inf")], "retain": [0.1, 0.2, 0.3], "test": [1.0, 1.0, 1.0]},
            "never": {"forget": [None, None, None], "test": [math.nan] * 3}}  # no value at all: left out
    out = plot_gap_closed_sweep(tmp_path / "g" / "sweep.png", [1.0, 5.0, 30.0], gaps, log_x=True,
                                xticklabels=["1%", "5%", "30%"], xlabel="fraction deleted")
    assert out == tmp_path / "g" / "sweep.png"
    _check_png(out)
    _check_png(plot_gap_closed_sweep(tmp_path / "lin.png", np.array([-1.0, 0.0]), {"m": {"test": [0.1, 0.2]}}))
    with pytest.raises(ValueError, match="log_x needs positive settings"):
        plot_gap_closed_sweep(tmp_path / "bad.png", [-1.0, 0.0], {"m": {"test": [0.1, 0.2]}}, log_x=True)
    with pytest.raises(ValueError, match="xticklabels has 1 labels but x has 2 values"):
        plot_gap_closed_sweep(tmp_path / "bad.png", [1.0, 2.0], {"m": {"test": [0.1, 0.2]}}, xticklabels=["a"])
    with pytest.raises(ValueError, match=r"gaps\['m'\]\['test'\] has 1 values but there are 2 settings"):
        plot_gap_closed_sweep(tmp_path / "bad.png", [1.0, 2.0], {"m": {"test": [0.1]}})
    with pytest.raises(ValueError, match="gaps is empty"):
        plot_gap_closed_sweep(tmp_path / "bad.png", [1.0], {})
    assert not (tmp_path / "bad.png").exists()


def test_spectra(tmp_path):
    rng = np.random.default_rng(1)
    before = np.exp(rng.normal(2, 3, 120))
    after = before - np.exp(rng.normal(1, 3, 120))
    after[0] = np.nan
    _check_png(plot_spectra(tmp_path / "spec.png", {"before": before, "after": torch.tensor(after),
                                                    "huge": np.array([1e300, -1e300, 0.0])}))
    _check_png(plot_spectra(tmp_path / "pos.png", {"pd": np.array([1.0, 2.0, 3.0])}))
    with pytest.raises(ValueError, match="one-dimensional"):
        plot_spectra(tmp_path / "bad.png", {"m": np.eye(3)})
    with pytest.raises(ValueError, match="empty"):
        plot_spectra(tmp_path / "bad.png", {"m": []})


def test_loss_curves(tmp_path):
    t = np.arange(1000)
    c = 1e5 * np.exp(-t / 100) + 10.0
    c[5] = np.nan
    _check_png(plot_loss_curves(tmp_path / "l" / "loss.png", {"long": c, "short": [3.0, 2.0, float("inf"), 1.0],
                                                               "neg": torch.linspace(100, -50, 300)}))
    _check_png(plot_loss_curves(tmp_path / "lin.png", {"flat": [1.0, 1.1, 0.9, 1.0]}))
    _check_png(plot_loss_curves(tmp_path / "allnan.png", {"nan": [math.nan, math.nan]}))
    with pytest.raises(ValueError, match="empty"):
        plot_loss_curves(tmp_path / "bad.png", {"a": []})
