"""``unlearn`` and ``unlearn_sequential``: the entry points that dispatch to registered methods.

Every method approximates p(θ | D_r) ∝ q(θ | D) / p(D_f | θ) from the old posterior and D_f;
``retrain`` re-runs the original inference on D_r (the reference). See each method's module.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..inference.posterior import Posterior

from ..inference.fit import check_option_types
from ..models.validation import check_seed

from .base import REGISTRY, UnlearningResult, accepted_options, finish, locate_forget_set

__all__ = ["unlearn", "unlearn_sequential", "UnlearningFailedError"]


def unlearn(posterior: Posterior, x_forget: Any, y_forget: Any, method: str = "eubo", *, seed: int = 0,
            progress: bool = False, **options: Any) -> UnlearningResult:
    """Remove the rows (x_forget, y_forget) from ``posterior``.

    Parameters
    ----------
    posterior : the posterior q(θ | D) returned by :func:`inference.fit` (or by an earlier unlearning).
    x_forget, y_forget : the rows of D to forget (matched exactly against the posterior's data).
    method : a registered name, see :func:`unlearning.describe_methods` (``bayes-unlearn methods``).
    seed : every random choice of the method derives from it.
    **options : method options (unknown options raise ``TypeError``).

    Returns
    -------
    UnlearningResult with the new posterior (whose training data is D_r) and a report. Neither the
    posterior nor the forget set passed in is modified, also when the call fails.
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be an inference.Posterior, got {type(posterior).__name__}")
    if method not in REGISTRY:
        raise ValueError(f"unknown unlearning method {method!r}; registered methods: {sorted(REGISTRY)}")
    fn, _ = REGISTRY[method]
    seed = check_seed(seed)
    unknown = set(options) - accepted_options(method, posterior.family)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for {method!r} on a {posterior.family!r} posterior; "
                        f"accepted: {sorted(accepted_options(method, posterior.family))}")
    check_option_types(options)
    fs = locate_forget_set(posterior, x_forget, y_forget)
    t0 = time.perf_counter()
    out = fn(posterior, fs, seed=seed, progress=progress, **options)
    return finish(method, posterior, fs, dict(options), t0, out)


class UnlearningFailedError(RuntimeError):
    """A deletion request's result has the verdict "failed": it must not be built upon."""

    def __init__(self, message: str, results: list[UnlearningResult]):
        super().__init__(message)
        self.results = results


def unlearn_sequential(posterior: Posterior, requests: Sequence[tuple[Any, Any]], method: str = "eubo", *,
                       seed: int = 0, progress: bool = False, on_failure: str = "raise",
                       **options: Any) -> list[UnlearningResult]:
    """Apply deletion requests [(x_f1, y_f1), (x_f2, y_f2), ...] one after another.

    Request j is removed from the posterior produced by request j-1, so the j-th result
    approximates p(θ | D minus the first j forget sets); its posterior's data is what is left.
    A request whose verdict is "failed" stops the chain with :class:`UnlearningFailedError`
    (naming the request and the reasons; ``.results`` holds what was done so far, the failed one
    last), unless ``on_failure="continue"``.
    """
    if on_failure not in ("raise", "continue"):
        raise ValueError(f"on_failure must be 'raise' or 'continue', got {on_failure!r}")
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise TypeError(f"requests must be a list of (x_forget, y_forget) pairs, got {type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError("no deletion requests given")
    for j, req in enumerate(requests):
        if not (isinstance(req, (tuple, list)) and len(req) == 2):
            raise ValueError(f"deletion request {j} must be a pair (x_forget, y_forget), got {type(req).__name__}"
                             + (f" of length {len(req)}" if hasattr(req, "__len__") else "")
                             + "; pass requests=[(x_f1, y_f1), (x_f2, y_f2), ...]")
    results, current = [], posterior
    for j, (xf, yf) in enumerate(requests):
        try:
            res = unlearn(current, xf, yf, method, seed=seed + j, progress=progress, **options)
        except ValueError as e:
            raise ValueError(f"deletion request {j}: {e}") from e
        results.append(res)
        if on_failure == "raise" and res.verdict.get("verdict") == "failed":
            raise UnlearningFailedError(
                f"deletion request {j} ({method}) failed: {'; '.join(res.verdict.get('reasons', []))}. Use "
                "method='auto' (it escalates to a re-fit or retrain), or pass on_failure='continue' to keep going",
                results)
        current = res.posterior
    return results
