"""Shared machinery of every unlearning method: the result type, the method registry and the
identification of the forget set D_f inside the posterior's training data D.

Exact Bayesian unlearning (the target of every method):

    p(θ | D_r) ∝ p(θ | D) / p(D_f | θ),    D_r = D \\ D_f.

A method receives the old posterior q(θ|D) (which carries the model and D) and the rows
(x_f, y_f) to forget, and returns a new :class:`~inference.posterior.Posterior` whose training
data is D_r, so that requests can be chained and ``retrain`` always knows D_r.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..inference.latent import BoundModel
from ..inference.posterior import Posterior
from ..models.validation import as_regression_tensors

__all__ = ["UnlearningResult", "REGISTRY", "register", "applies_to", "describe_methods", "accepted_options", "ForgetSet",
           "locate_forget_set", "finish", "require_gaussian"]


@dataclass(frozen=True, eq=False)
class UnlearningResult:
    """What an unlearning call returns: the new posterior and a report of how it was obtained."""

    posterior: Posterior
    method: str
    options: dict
    wall_time_s: float
    steps: int | None = None
    final_objective: float | None = None
    warnings: tuple[str, ...] = ()
    diverged: bool = False
    diagnostics: dict = field(default_factory=dict)
    forget_indices: torch.Tensor | None = None
    losses: tuple[float, ...] = ()   # the objective per step, for methods that optimise one
    verdict: dict = field(default_factory=dict)  # {"verdict", "reasons", "numbers"}: unlearning.verdict
    verdict_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the verdict (computed without retraining) is "ok"."""
        return self.verdict.get("verdict") == "ok"

    @property
    def report(self) -> dict:
        """JSON-able report (everything but the posterior)."""
        return {"method": self.method, "options": self.options, "wall_time_s": self.wall_time_s,
                "verdict": self.verdict.get("verdict"), "verdict_reasons": list(self.verdict.get("reasons", [])),
                "verdict_numbers": dict(self.verdict.get("numbers", {})), "verdict_time_s": self.verdict_time_s,
                "steps": self.steps, "final_objective": self.final_objective, "warnings": list(self.warnings),
                "diverged": self.diverged, "diagnostics": self.diagnostics,
                "num_forgotten": None if self.forget_indices is None else len(self.forget_indices)}


@dataclass(frozen=True, eq=False)
class ForgetSet:
    """D_f located inside the posterior's training data D."""

    indices: torch.Tensor       # [k] into the old posterior's x, y
    x_forget: torch.Tensor
    y_forget: torch.Tensor
    x_retain: torch.Tensor
    y_retain: torch.Tensor


# name -> (function(posterior, forget_set, *, seed, progress, **options) -> dict, one-line description)
REGISTRY: dict[str, tuple[Callable[..., dict], str]] = {}
# name -> options a method accepts through ``**options`` (a tuple, or a function of the inference family)
_PASSED_ON: dict[str, Any] = {}
# name -> the inference families a method applies to (None: every family)
_FAMILIES: dict[str, tuple[str, ...] | None] = {}
_MODELS: dict[str, tuple[str, ...] | None] = {}


def applies_to(name: str, family: str, model: str | None = None) -> bool:
    """Whether method ``name`` accepts posteriors of inference family ``family`` and, if given, of a model
    of class name ``model`` (``run all`` skips the rest)."""
    fams, models = _FAMILIES.get(name), _MODELS.get(name)
    return (fams is None or family in fams) and (model is None or models is None or model in models)


def register(name: str, description: str, passes_on: Any = (), families: tuple[str, ...] | None = None,
             models: tuple[str, ...] | None = None) -> Callable:
    """Decorator that adds an unlearning method to the registry under ``name``.

    ``passes_on`` names the options a method accepts through ``**options`` (a tuple of names, or a
    function of the posterior's inference family returning them), so that
    :func:`accepted_options` can check a configuration before anything runs. ``families`` and ``models``
    (model class names) restrict what the method applies to (:func:`applies_to`; None: anything).
    """
    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        REGISTRY[name] = (fn, description)
        _PASSED_ON[name] = passes_on
        _FAMILIES[name] = families
        _MODELS[name] = models
        return fn
    return deco


def accepted_options(name: str, family: str) -> frozenset[str]:
    """The option names ``unlearn(..., method=name, **options)`` accepts for a posterior of ``family``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown unlearning method {name!r}; registered methods: {sorted(REGISTRY)}")
    params = inspect.signature(REGISTRY[name][0]).parameters.values()
    named = {p.name for p in params if p.kind == p.KEYWORD_ONLY} - {"seed", "progress"}
    extra = _PASSED_ON[name]
    return frozenset(named | set(extra(family) if callable(extra) else extra))


def describe_methods() -> dict[str, str]:
    """{method name: one-line description} for every registered method."""
    return {name: desc for name, (_, desc) in REGISTRY.items()}


def locate_forget_set(posterior: Posterior, x_forget: Any, y_forget: Any) -> ForgetSet:
    """Find each forget row (x_f, y_f) in the posterior's training data; raise on anything odd.

    Rows are matched exactly (the training data were stored at fit time). A row that occurs m
    times in D may be forgotten at most m times; asking for more ("forgetting a point twice"),
    a row that is not in D, an empty forget set, or all of D raises ``ValueError``.
    """
    if posterior.x is None or posterior.y is None:
        raise ValueError("the posterior carries no training data, so D_f cannot be located; load it from a "
                         "file written with include_data=True or fit it with inference.fit")
    try:
        xf, yf = as_regression_tensors(x_forget, y_forget)
    except ValueError as e:
        if "empty" in str(e).lower() or "no rows" in str(e).lower():
            raise ValueError("the forget set is empty: there is nothing to unlearn") from e
        raise ValueError(f"bad forget set: {e}") from e
    if yf is None:
        raise ValueError("y_forget is required: the likelihood of the forgotten points needs their targets")
    X, Y = posterior.x, posterior.y
    if xf.shape[1] != X.shape[1]:
        raise ValueError(f"x_forget has {xf.shape[1]} features but the training data has {X.shape[1]}")
    frows = torch.cat([xf.to(X.dtype), yf.to(Y.dtype)[:, None]], 1)
    # one vectorised pass over D's first feature finds the few rows whose value occurs in D_f; only
    # those candidates are compared in full (O(N) with a small constant, not O(N·|D_f|))
    cand = torch.nonzero(torch.isin(X[:, 0], frows[:, 0])).flatten()
    idx, bad, missing = match_rows(torch.cat([X[cand], Y[cand, None]], 1), frows)
    idx = cand[idx]
    if bad is not None:
        r = frows[bad]
        if not missing:
            raise ValueError(f"forget row {bad} is listed more often than it occurs in the training data "
                             "(forgetting a point twice)")
        raise ValueError(f"forget row {bad} (x={r[:-1].tolist()}, y={float(r[-1]):.6g}) is not in the posterior's "
                         "training data: it was never learned, or it was already forgotten")
    if len(idx) == len(X):
        raise ValueError("the forget set is the whole training data: there would be nothing left; refit from "
                         "the prior instead")
    idx = torch.sort(idx).values
    return ForgetSet(indices=idx, x_forget=X[idx], y_forget=Y[idx], x_retain=_drop_rows(X, idx),
                     y_retain=_drop_rows(Y, idx))


def _drop_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t without the rows ``idx`` (sorted, distinct), order kept: the slices between them, copied once."""
    if len(idx) > 64:
        keep = torch.ones(len(t), dtype=torch.bool)
        keep[idx] = False
        return t[keep]
    bounds = [-1, *idx.tolist(), len(t)]
    return torch.cat([t[a + 1:b] for a, b in zip(bounds[:-1], bounds[1:])])


def match_rows(rows: torch.Tensor, frows: torch.Tensor) -> tuple[torch.Tensor, int | None, bool]:
    """Match each query row to a distinct, exactly equal row of ``rows``; O(N) plus work on candidates.

    The j-th query of a given value takes that value's j-th occurrence in ``rows`` (in index order),
    so a value may be asked for at most as often as it occurs. Returns (indices [k] into ``rows``,
    the first query row that cannot be matched or None, whether that row is missing altogether).

    Rows are pre-filtered by one vectorised pass (their first and last columns must occur among the
    queries, :func:`_isin`); only those candidates are compared in full (``torch.unique`` over
    candidates + queries), so the cost is linear in N with a small constant rather than O(N·k).
    """
    rows, frows = rows + 0.0, frows + 0.0  # -0.0 -> +0.0: equal values, equal bits for unique()
    cand = _isin(rows[:, 0], frows[:, 0]) & _isin(rows[:, -1], frows[:, -1])
    cidx = torch.nonzero(cand).flatten()
    n, k = len(cidx), len(frows)
    _, inv = torch.unique(torch.cat([rows[cidx], frows]), dim=0, return_inverse=True)
    inv_d, inv_f = inv[:n], inv[n:]
    groups = int(inv.max()) + 1
    count_d = torch.bincount(inv_d, minlength=groups)
    order_d = torch.argsort(inv_d, stable=True)                   # candidates grouped, index order kept
    start_d = torch.cumsum(count_d, 0) - count_d
    order_f = torch.argsort(inv_f, stable=True)
    count_f = torch.bincount(inv_f, minlength=groups)
    start_f = torch.cumsum(count_f, 0) - count_f
    rank = torch.empty(k, dtype=torch.long)
    rank[order_f] = torch.arange(k) - start_f[inv_f[order_f]]    # j-th request of its value
    ok = rank < count_d[inv_f]
    if not bool(ok.all()):
        bad = int(torch.nonzero(~ok).flatten()[0])
        return cidx.new_zeros(0), bad, bool(count_d[inv_f[bad]] == 0)
    return cidx[order_d[start_d[inv_f] + rank]], None, False


def _isin(values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """values[i] ∈ queries: a broadcast comparison for a few queries, else a binary search, O(N log k)."""
    if len(queries) <= 16:
        return (values[:, None] == queries[None, :]).any(1)
    s = torch.sort(queries).values
    pos = torch.searchsorted(s, values.contiguous()).clamp_max(len(s) - 1)
    return s[pos] == values


def forget_bound(posterior: Posterior, fs: ForgetSet) -> BoundModel:
    """The posterior's model bound to D_f only (its layout does not depend on N), so that methods
    that need log p(D_f | θ) never trace the model on all of D; falls back to the full data if the
    layouts differ."""
    bound = BoundModel(posterior.model, fs.x_forget, fs.y_forget)
    same = [(s.name, s.shape, s.unconstrained_shape) for s in bound.layout.sites] == \
        [(s.name, s.shape, s.unconstrained_shape) for s in posterior.layout.sites]
    return bound if same else posterior.bound_model()


def require_gaussian(old: Posterior, name: str, remedy: str | None = None) -> None:
    """One-line ``ValueError`` when ``old`` is a posterior of weighted draws (NUTS, psis), which method ``name``
    cannot update; ``remedy`` says what to use instead."""
    if not old.cov.gaussian:
        raise ValueError(f"{name} needs a Gaussian posterior; this one is {old.structure} ({old.family} draws)"
                         + (f": {remedy}" if remedy else ""))


def finish(name: str, old: Posterior, fs: ForgetSet, options: dict, t0: float, out: dict,
           verdict: bool = True) -> UnlearningResult:
    """Wrap a method's output dict into an :class:`UnlearningResult` with the posterior's data set to D_r,
    and attach the verdict (:mod:`unlearning.verdict`; its cost is reported apart from the method's)."""
    from .verdict import compute_verdict

    wall = time.perf_counter() - t0
    post: Posterior = out["posterior"]
    post = post.replace(x=fs.x_retain, y=fs.y_retain, model=old.model)
    t1 = time.perf_counter()
    v = out.get("verdict") or (compute_verdict(name, old, post, fs.x_forget, fs.y_forget, out) if verdict else {})
    vt = time.perf_counter() - t1
    history = list(old.meta.get("unlearning", [])) + [{"method": name, "num_forgotten": len(fs.indices),
                                                       "verdict": v.get("verdict"),
                                                       "diverged": bool(out.get("diverged", False))}]
    meta = dict(post.meta)
    meta["unlearning"] = history
    post = post.replace(meta=meta)
    return UnlearningResult(posterior=post, method=name, options=options,
                            wall_time_s=wall, steps=out.get("steps"),
                            final_objective=out.get("final_objective"),
                            warnings=tuple(out.get("warnings", ())), diverged=bool(out.get("diverged", False)),
                            diagnostics=out.get("diagnostics", {}), forget_indices=fs.indices,
                            losses=tuple(out.get("losses", ())), verdict=v, verdict_time_s=vt)
