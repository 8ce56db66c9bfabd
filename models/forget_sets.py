"""Forget sets and deletion scenarios: which training rows a request removes.

Every builder returns a sorted 1-D ``torch.long`` index tensor into the *training* data
(validated by :func:`.validation.check_forget_indices`):

* :func:`forget_region` -- the rows whose input lies in a box (the "forget a region" experiment);
* :func:`forget_random` -- k rows uniformly without replacement; :func:`forget_fraction` -- ⌈f·N⌉ rows;
* :func:`corrupt_targets` -- corrupts the targets of chosen rows (shifted by ``shift``·std(y), or replaced
  by noise), the "forget the corrupted rows" scenario;
* :func:`split_requests` -- cuts a forget set into a sequence of deletion requests, in a seeded order;
* :func:`split` -- partitions training data into the retained part D_r and the forgotten part D_f.
"""

from __future__ import annotations

import math
import numpy as np
import torch

from .validation import (ArrayLike, as_regression_tensors, check_forget_indices, check_fraction, check_int,
                         check_seed, first_nonfinite_row, seeded_generator, sub_seed, to_float_tensor)

__all__ = ["forget_region", "forget_random", "forget_fraction", "corrupt_targets", "CORRUPTION_MODES",
           "split_requests", "split"]


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
    dim = check_int(dim, "dim")
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
    n = check_int(n, "n")
    k = check_int(k, "k")
    seed = check_seed(seed)
    if n < 2:
        raise ValueError(f"n must be at least 2 to forget a proper subset, got {n}")
    if k <= 0:
        raise ValueError(f"empty forget set: k must be positive, got k={k}")
    if k >= n:
        raise ValueError(
            f"k={k} would forget all data: k must be smaller than n={n}"
        )
    perm = torch.randperm(n, generator=seeded_generator(seed))
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
    n = check_int(n, "n")
    fraction = check_fraction(fraction, "fraction", allow_zero=False)
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
    yt = to_float_tensor(y, "y")
    if yt.dim() != 1:
        raise ValueError(f"y must be 1-D [N], got shape {tuple(yt.shape)}")
    row = first_nonfinite_row(yt)
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
        gen = seeded_generator(sub_seed(seed, 1))
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
    idx_t = check_forget_indices(idx, check_int(n, "n"))
    requests = check_int(requests, "requests")
    if not 1 <= requests <= len(idx_t):
        raise ValueError(
            f"requests must be between 1 and the {len(idx_t)} rows of the "
            f"forget set, got {requests}"
        )
    gen = seeded_generator(sub_seed(check_seed(seed), 2))
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
