"""Input validation shared by every layer: regression tensors, seeds, counts, fractions, index sets.

* :func:`as_regression_tensors` -- validates and converts array-likes into an ``x`` of shape ``[N, D]``
  and a ``y`` of shape ``[N]`` (float32 copies), with error messages that name the problem (NaN/inf
  with the row, mismatched lengths, bad shapes).
* :func:`check_forget_indices` -- a forget set as a sorted, duplicate-free 1-D ``torch.long`` index
  tensor into N training rows.
* :func:`check_seed`, :func:`check_int`, :func:`check_fraction` -- scalar options, refusing bools,
  non-integral floats and strings rather than converting them.
* :func:`seeded_generator`, :func:`sub_seed` -- all randomness goes through explicitly seeded
  :class:`torch.Generator` objects (independent numbered sub-streams via numpy's ``SeedSequence``);
  the global torch / numpy random states are never touched.

Invalid input raises :class:`ValueError` with one line that says what is wrong.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

__all__ = ["ArrayLike", "as_regression_tensors", "check_forget_indices", "check_seed", "check_int", "check_fraction",
           "seeded_generator", "sub_seed", "list_preview", "to_float_tensor", "first_nonfinite_row"]


#: Anything :func:`as_regression_tensors` accepts: a tensor, an ndarray or a
#: (nested) sequence of numbers.
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]


MAX_LISTED = 10  # how many offending indices an error message lists


def check_int(value: Any, name: str) -> int:
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
    seed = check_int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def seeded_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (global RNG untouched)."""
    return torch.Generator().manual_seed(check_seed(seed))


def sub_seed(seed: int, stream: int) -> int:
    """Derive an independent seed for a numbered sub-stream of ``seed``."""
    seq = np.random.SeedSequence([check_seed(seed), stream])
    return int(seq.generate_state(1, dtype=np.uint64)[0]) >> 1  # fits in int64


def check_fraction(value: Any, name: str, *, allow_zero: bool) -> float:
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


def list_preview(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) <= MAX_LISTED:
        return str(values)
    head = ", ".join(str(v) for v in values[:MAX_LISTED])
    return f"[{head}, ...] ({len(values)} in total)"


def first_nonfinite_row(t: torch.Tensor) -> int | None:
    bad = ~torch.isfinite(t)
    if t.dim() > 1:
        bad = bad.any(dim=1)
    rows = torch.nonzero(bad).flatten()
    return int(rows[0]) if rows.numel() else None


def to_float_tensor(value: Any, name: str) -> torch.Tensor:
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
    xt = to_float_tensor(x, "x")
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
    row = first_nonfinite_row(xt)
    if row is not None:
        raise ValueError(f"x contains NaN or inf at row {row}")
    if y is None:
        return xt, None

    yt = to_float_tensor(y, "y")
    if yt.dim() == 2 and yt.shape[1] == 1:
        yt = yt.squeeze(1)
    if yt.dim() != 1:
        raise ValueError(
            f"y must be 1-D (or a column [N, 1]), got shape {tuple(yt.shape)}"
        )
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(f"x has {xt.shape[0]} rows but y has {yt.shape[0]}")
    row = first_nonfinite_row(yt)
    if row is not None:
        raise ValueError(f"y contains NaN or inf at row {row}")
    return xt, yt


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
    n = check_int(n, "n")
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
        raise ValueError(f"duplicate indices {list_preview(dups)}")
    if t.numel() == n:
        raise ValueError(
            f"forget set contains all {n} training points: would forget all data"
        )
    return t
