"""Tests for ``models.datasets``: data sources, forget-set builders, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayes_unlearn.models.data import RegressionData, Standardizer, diabetes, load_csv, standardize_data, synthetic_1d, synthetic_1d_mean

from bayes_unlearn.models.validation import as_regression_tensors, check_forget_indices

from bayes_unlearn.models.forget_sets import forget_fraction, forget_random, forget_region, split

# Standardised columns are computed in float32.  Each value carries a relative
# rounding error of ~6e-8 (2^-24); averaging a few hundred of them keeps the
# error of the mean and of the standard deviation well below 1e-6, so 1e-5 is
# tight enough to catch a wrong formula (e.g. statistics fitted on the full
# data instead of the training part, or the N-1 divisor: 1 - sqrt(353/354)
# ~ 1.4e-3) while being robust to float32 rounding.
STD_TOL = 1e-5


# --------------------------------------------------------------------------
# synthetic_1d
# --------------------------------------------------------------------------
def test_synthetic_is_deterministic_under_a_seed():
    a, b = synthetic_1d(seed=3), synthetic_1d(seed=3)
    for field in ("x", "y", "x_test", "y_test", "x_grid"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_synthetic_different_seeds_differ():
    a, b = synthetic_1d(seed=0), synthetic_1d(seed=1)
    assert not torch.allclose(a.x, b.x)
    assert not torch.allclose(a.x_test, b.x_test)


def test_synthetic_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    synthetic_1d(n=50, n_test=10)
    assert torch.equal(torch.rand(3), expected)


def test_synthetic_shapes_dtypes_and_metadata():
    d = synthetic_1d(n=300, n_test=70, seed=0)
    assert d.x.shape == (300, 1) and d.y.shape == (300,)
    assert d.x_test.shape == (70, 1) and d.y_test.shape == (70,)
    assert d.n == 300 and d.dim == 1 and d.n_test == 70
    for t in (d.x, d.y, d.x_test, d.y_test, d.x_grid):
        assert t.dtype == torch.float32
    assert d.region == (1.5, 3.5)
    assert d.standardizer is None
    assert torch.equal(d.x_grid, torch.linspace(-5, 5, 200)[:, None])
    assert d.x.min() >= -4 and d.x.max() <= 4


def test_synthetic_test_set_is_a_separate_stream():
    a = synthetic_1d(n=100, seed=0)
    b = synthetic_1d(n=400, seed=0)
    # The test set does not depend on the training-set size ...
    assert torch.equal(a.x_test, b.x_test)
    # ... and is not a replay of the training stream.
    c = synthetic_1d(n=200, n_test=200, seed=0)
    assert not torch.allclose(c.x, c.x_test)


def test_synthetic_targets_follow_the_function_and_noise():
    d = synthetic_1d(n=2000, noise=0.1, seed=0)
    resid = d.y - synthetic_1d_mean(d.x[:, 0])
    assert abs(float(resid.mean())) < 0.02
    assert abs(float(resid.std()) - 0.1) < 0.01
    noiseless = synthetic_1d(n=50, noise=0.0, seed=0)
    assert torch.allclose(noiseless.y, synthetic_1d_mean(noiseless.x[:, 0]))


def test_synthetic_region_holds_a_cluster():
    d = synthetic_1d(seed=0)
    idx = forget_region(d.x, *d.region)
    # roughly a third of the data (most of the right-hand cluster)
    assert 0.2 * d.n < idx.numel() < 0.4 * d.n


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 1}, "n must be at least 2"),
        ({"n_test": 0}, "n_test must be at least 1"),
        ({"noise": -0.1}, "noise must be a finite non-negative"),
        ({"noise": float("nan")}, "noise must be a finite non-negative"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"n": 10.5}, "n must be an integer"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_1d(**kwargs)


# --------------------------------------------------------------------------
# forget_region
# --------------------------------------------------------------------------
def test_forget_region_selects_exactly_the_points_in_region():
    x = torch.tensor([[0.0], [1.5], [2.0], [3.5], [3.6], [1.49], [-1.0]])
    idx = forget_region(x, 1.5, 3.5)
    assert idx.dtype == torch.long
    assert idx.tolist() == [1, 2, 3]  # closed interval, sorted


def test_forget_region_matches_mask_on_synthetic_data():
    d = synthetic_1d(seed=2)
    low, high = d.region
    idx = forget_region(d.x, low, high)
    mask = (d.x[:, 0] >= low) & (d.x[:, 0] <= high)
    assert idx.tolist() == torch.nonzero(mask).flatten().tolist()
    assert torch.all(idx[1:] > idx[:-1])


def test_forget_region_other_dim_and_1d_input():
    x = torch.tensor([[0.0, 5.0], [1.0, -5.0], [2.0, 5.5]])
    assert forget_region(x, 4.0, 6.0, dim=1).tolist() == [0, 2]
    assert forget_region([0.0, 1.0, 2.0], 0.5, 1.5).tolist() == [1]


@pytest.mark.parametrize(
    "low, high, dim, match",
    [
        (2.0, 1.0, 0, "low must be smaller than high"),
        (1.0, 1.0, 0, "low must be smaller than high"),
        (0.0, 1.0, 1, "dim 1 out of range"),
        (0.0, 1.0, -1, "dim -1 out of range"),
        (10.0, 11.0, 0, "empty forget set"),
        (-10.0, 10.0, 0, "would forget all data"),
        (float("nan"), 1.0, 0, "must be finite"),
    ],
)
def test_forget_region_bad_input(low, high, dim, match):
    x = torch.tensor([[0.0], [1.0], [2.0]])
    with pytest.raises(ValueError, match=match):
        forget_region(x, low, high, dim=dim)


# --------------------------------------------------------------------------
# forget_random / forget_fraction
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(10, 1), (10, 9), (600, 60), (2, 1)])
def test_forget_random_distinct_in_range_and_sorted(n, k):
    idx = forget_random(n, k, seed=4)
    assert idx.dtype == torch.long and idx.dim() == 1
    assert idx.numel() == k
    assert len(set(idx.tolist())) == k
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    assert torch.all(idx[1:] > idx[:-1])


def test_forget_random_seeding():
    a = forget_random(100, 10, seed=5)
    assert torch.equal(a, forget_random(100, 10, seed=5))
    assert not torch.equal(a, forget_random(100, 10, seed=6))


@pytest.mark.parametrize(
    "n, k, match",
    [
        (10, 0, "empty forget set"),
        (10, -3, "empty forget set"),
        (10, 10, "would forget all data"),
        (10, 11, "would forget all data"),
        (1, 1, "n must be at least 2"),
        (10, 2.0, "k must be an integer"),
    ],
)
def test_forget_random_bad_input(n, k, match):
    with pytest.raises(ValueError, match=match):
        forget_random(n, k)


def test_forget_fraction_count():
    assert forget_fraction(600, 0.1).numel() == 60
    assert forget_fraction(7, 0.5).numel() == round(3.5)  # ties to even: 4
    idx = forget_fraction(50, 0.3, seed=1)
    assert len(set(idx.tolist())) == 15 and int(idx.max()) < 50


@pytest.mark.parametrize(
    "n, fraction, match",
    [
        (10, 0.0, r"fraction must be in \(0, 1\)"),
        (10, 1.0, r"fraction must be in \(0, 1\)"),
        (10, -0.2, r"fraction must be in \(0, 1\)"),
        (10, float("nan"), r"fraction must be in \(0, 1\)"),
        (10, 0.01, "rounds to 0 points"),
        (10, 0.99, "would forget all data"),
    ],
)
def test_forget_fraction_bad_input(n, fraction, match):
    with pytest.raises(ValueError, match=match):
        forget_fraction(n, fraction)


# --------------------------------------------------------------------------
# check_forget_indices
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "idx",
    [[7, 2, 5], (7, 2, 5), np.array([7, 2, 5]), torch.tensor([7, 2, 5]),
     torch.tensor([7, 2, 5], dtype=torch.int32), np.array([7, 2, 5], dtype=np.uint8)],
)
def test_check_forget_indices_accepts_and_sorts(idx):
    out = check_forget_indices(idx, 10)
    assert out.dtype == torch.long
    assert out.tolist() == [2, 5, 7]


def test_check_forget_indices_does_not_mutate_input():
    idx = torch.tensor([3, 1, 2])
    check_forget_indices(idx, 5)
    assert idx.tolist() == [3, 1, 2]


@pytest.mark.parametrize(
    "idx, match",
    [
        ([3, 7, 3, 1, 7], r"duplicate indices \[3, 7\]"),
        ([1, 12], "index 12 out of range for 10 training points"),
        ([-1, 2], "index -1 out of range for 10 training points"),
        ([], "empty forget set"),
        (torch.tensor([], dtype=torch.long), "empty forget set"),
        (list(range(10)), "would forget all data"),
        ([1.0, 2.0], "must be integers"),
        (torch.tensor([1.0, 2.0]), "must be integers"),
        (torch.tensor([True, False]), "must be integers"),
        ([[1, 2], [3, 4]], "must be a 1-D sequence"),
        (np.int64(3), "must be a 1-D sequence"),
    ],
)
def test_check_forget_indices_bad_input(idx, match):
    with pytest.raises(ValueError, match=match):
        check_forget_indices(idx, 10)


# --------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------
def test_split_partitions_exactly_and_does_not_mutate():
    d = synthetic_1d(n=200, seed=0)
    x, y = d.x.clone(), d.y.clone()
    idx = forget_region(x, *d.region)
    x_r, y_r, x_f, y_f = split(x, y, idx)

    assert len(x_r) + len(x_f) == len(x) and len(y_r) + len(y_f) == len(y)
    assert x_r.shape[1] == x_f.shape[1] == 1
    # inputs unchanged
    assert torch.equal(x, d.x) and torch.equal(y, d.y)
    # the forgotten part is exactly the indexed rows, the rest is retained
    assert torch.equal(x_f, d.x[idx]) and torch.equal(y_f, d.y[idx])
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(x_r, d.x[keep]) and torch.equal(y_r, d.y[keep])
    # union of (x, y) pairs equals the original multiset
    pairs = lambda a, b: sorted(zip(a[:, 0].tolist(), b.tolist()))  # noqa: E731
    assert pairs(torch.cat([x_r, x_f]), torch.cat([y_r, y_f])) == pairs(x, y)
    # region points all forgotten, none retained
    low, high = d.region
    assert bool(((x_f >= low) & (x_f <= high)).all())
    assert not bool(((x_r >= low) & (x_r <= high)).any())


def test_split_outputs_do_not_alias_inputs():
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    y = torch.tensor([0.0, 1.0, 2.0])
    x_r, y_r, _, _ = split(x, y, [1])
    x_r.zero_()
    y_r.zero_()
    assert x[0, 1] == 1.0 and y[2] == 2.0


def test_split_bad_input():
    x, y = torch.zeros(5, 2), torch.zeros(5)
    with pytest.raises(ValueError, match="duplicate indices"):
        split(x, y, [1, 1])
    with pytest.raises(ValueError, match="index 5 out of range for 5 training points"):
        split(x, y, [5])
    with pytest.raises(ValueError, match="x has 5 rows but y has 4"):
        split(x, y[:4], [0])


# --------------------------------------------------------------------------
# Standardizer / standardize_data
# --------------------------------------------------------------------------
def test_standardizer_round_trip_and_constant_columns():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    y = torch.tensor([2.0, 4.0, 9.0])
    s = Standardizer.fit(x, y)
    assert s.x_std[1] == 1.0  # zero std replaced by 1
    assert torch.allclose(s.transform_x(x)[:, 1], torch.zeros(3))
    assert torch.allclose(s.inverse_x(s.transform_x(x)), x)
    assert torch.allclose(s.inverse_y(s.transform_y(y)), y)
    assert torch.allclose(s.inverse_y_std(torch.tensor([1.0])), torch.tensor([s.y_std]))
    assert Standardizer.fit(x, torch.ones(3)).y_std == 1.0


def test_standardize_data_transforms_region_and_grid():
    d = synthetic_1d(n=200, seed=0)
    s = standardize_data(d)
    assert s.standardizer is not None
    idx_raw = forget_region(d.x, *d.region)
    idx_std = forget_region(s.x, *s.region)
    assert torch.equal(idx_raw, idx_std)
    assert torch.allclose(s.standardizer.inverse_x(s.x_grid), d.x_grid, atol=1e-5)
    with pytest.raises(ValueError, match="already standardised"):
        standardize_data(s)


def test_regression_data_validates_shapes():
    with pytest.raises(ValueError, match="y must be a 1-D tensor with 3 entries"):
        RegressionData(torch.zeros(3, 1), torch.zeros(2), torch.zeros(1, 1),
                       torch.zeros(1), "bad")
    with pytest.raises(ValueError, match="low < high"):
        RegressionData(torch.zeros(3, 1), torch.zeros(3), torch.zeros(1, 1),
                       torch.zeros(1), "bad", region=(2.0, 1.0))


# --------------------------------------------------------------------------
# diabetes
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diabetes_data():
    return diabetes(test_fraction=0.2, seed=0)


def test_diabetes_shapes(diabetes_data):
    d = diabetes_data
    assert d.dim == 10
    assert d.n + d.n_test == 442
    assert d.n_test == round(0.2 * 442)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.float32
    assert d.feature_names is not None and len(d.feature_names) == 10


def test_diabetes_training_part_is_standardised(diabetes_data):
    d = diabetes_data
    # See STD_TOL: float32 rounding only; population std (divisor N).
    assert torch.allclose(d.x.mean(0), torch.zeros(10), atol=STD_TOL)
    assert torch.allclose(d.x.std(0, correction=0), torch.ones(10), atol=STD_TOL)
    assert abs(float(d.y.mean())) < STD_TOL
    assert abs(float(d.y.std(correction=0)) - 1.0) < STD_TOL
    # statistics come from the training part only: the test part is not
    # exactly standardised.
    assert float(d.x_test.mean(0).abs().max()) > 1e-3


def test_diabetes_inverse_recovers_raw_targets(diabetes_data):
    raw = diabetes(standardize=False, seed=0)
    s = diabetes_data.standardizer
    assert raw.standardizer is None
    assert torch.allclose(s.inverse_y(diabetes_data.y), raw.y, rtol=1e-5, atol=1e-3)
    assert torch.allclose(s.inverse_x(diabetes_data.x_test), raw.x_test,
                          rtol=1e-5, atol=1e-3)


def test_diabetes_split_is_seeded(diabetes_data):
    again = diabetes(seed=0)
    other = diabetes(seed=1)
    assert torch.equal(again.x, diabetes_data.x)
    assert not torch.equal(other.y_test, diabetes_data.y_test)


# --------------------------------------------------------------------------
# load_csv
# --------------------------------------------------------------------------
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    y = x @ np.array([1.5, -2.0]) + 0.25
    lines = ["id,a,b,target"] + [
        f"row{i},{float(x[i, 0])!r},{float(x[i, 1])!r},{float(y[i])!r}"
        for i in range(20)
    ]
    path = _write(tmp_path / "toy.csv", "\n".join(lines) + "\n\n")
    d = load_csv(path, target="target", features=["a", "b"], test_fraction=0.25,
                 seed=0, standardize=False)
    assert d.name == "toy" and d.feature_names == ("a", "b")
    assert d.n == 15 and d.n_test == 5 and d.dim == 2
    xs = torch.cat([d.x, d.x_test]).double()
    ys = torch.cat([d.y, d.y_test]).double()
    got = sorted(zip(xs[:, 0].tolist(), xs[:, 1].tolist(), ys.tolist()))
    want = sorted(zip(x[:, 0].tolist(), x[:, 1].tolist(), y.tolist()))
    assert np.allclose(np.array(got), np.array(want), atol=1e-5)

    s = load_csv(path, target="target", features=["a", "b"], name="named")
    assert s.name == "named" and s.standardizer is not None
    assert torch.allclose(s.x.mean(0), torch.zeros(2), atol=STD_TOL)


def test_load_csv_default_features(tmp_path):
    path = _write(tmp_path / "d.csv", "y,u,v\n1,2,3\n4,5,6\n7,8,9\n")
    d = load_csv(path, target="y", test_fraction=0.0, standardize=False)
    assert d.feature_names == ("u", "v")
    assert d.x.tolist() == [[2.0, 3.0], [5.0, 6.0], [8.0, 9.0]]
    assert d.y.tolist() == [1.0, 4.0, 7.0]
    assert d.n_test == 0 and d.x_test.shape == (0, 2)


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        ("a,b\n1,2\n3,4\n", {"target": "y"}, "target column 'y' not found"),
        ("a,y\n1,2\n3,4\n", {"target": "y", "features": ["c"]},
         r"feature column\(s\) \['c'\] not found"),
        ("a,y\n1,2\nfoo,4\n", {"target": "y"},
         "non-numeric value 'foo' in column 'a' at data row 2"),
        ("a,y\n1,2\n3,\n", {"target": "y"},
         "non-numeric value '' in column 'y' at data row 2"),
        ("a,y\n1,nan\n3,4\n", {"target": "y"},
         "NaN or inf value 'nan' in column 'y' at data row 1"),
        ("a,y\n1,2\ninf,4\n", {"target": "y"},
         "NaN or inf value 'inf' in column 'a' at data row 2"),
        ("a,y\n1,2\n", {"target": "y"}, "need at least 2 data rows, found 1"),
        ("a,y\n", {"target": "y"}, "need at least 2 data rows, found 0"),
        ("", {"target": "y"}, "no header row"),
        ("a,y\n1,2\n3,4,5\n", {"target": "y"}, "data row 2 .* has 3 fields"),
        ("a,a,y\n1,2,3\n4,5,6\n", {"target": "y"}, "duplicate column names"),
        ("a,y\n1,2\n3,4\n", {"target": "y", "features": ["a", "y"]},
         "also listed as a feature"),
        ("y\n1\n2\n", {"target": "y"}, "no feature columns"),
        ("a,y\n1,2\n3,4\n5,6\n", {"target": "y", "test_fraction": 1.0},
         r"test_fraction must be in \[0, 1\)"),
    ],
)
def test_load_csv_errors(tmp_path, text, kwargs, match):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=match):
        load_csv(path, **kwargs)


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "nope.csv", target="y")


# --------------------------------------------------------------------------
# as_regression_tensors
# --------------------------------------------------------------------------
def test_as_regression_tensors_conversions():
    x, y = as_regression_tensors([1, 2, 3], np.array([[1.0], [2.0], [3.0]]))
    assert x.shape == (3, 1) and x.dtype == torch.float32
    assert y.shape == (3,) and y.dtype == torch.float32
    x2, none = as_regression_tensors(np.zeros((4, 2), dtype=np.float64))
    assert x2.shape == (4, 2) and x2.dtype == torch.float32 and none is None


def test_as_regression_tensors_copies():
    src = torch.zeros(3, 2)
    x, _ = as_regression_tensors(src)
    x += 1
    assert float(src.sum()) == 0.0


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([[0.0], [math.nan], [1.0]], None, "x contains NaN or inf at row 1"),
        (torch.tensor([0.0, 1.0, math.inf]), None, "x contains NaN or inf at row 2"),
        ([0.0, 1.0], [1.0, math.nan], "y contains NaN or inf at row 1"),
        (np.zeros((2, 2, 2)), None, "x must be 1-D or 2-D"),
        (5.0, None, "x must be 1-D or 2-D"),
        (np.zeros((3, 1)), np.zeros((3, 2)), "y must be 1-D"),
        (np.zeros((10, 1)), np.zeros(9), "x has 10 rows but y has 9"),
        ([], None, "empty data"),
        (np.zeros((0, 3)), None, "empty data"),
        (np.zeros((3, 0)), None, "empty data"),
        ([["a"], ["b"]], None, "x could not be converted"),
        ([[1.0, 2.0], [3.0]], None, "x could not be converted"),
    ],
)
def test_as_regression_tensors_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        as_regression_tensors(x, y)
