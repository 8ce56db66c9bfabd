"""Shared machinery of every unlearning method: the result type, the method registry and the
identification of the forget set D_f inside the posterior's training data D.

Exact Bayesian unlearning (the target of every method):

    p(θ | D_r) ∝ p(θ | D) / p(D_f | θ),    D_r = D \\ D_f.

A method receives the old posterior q(θ|D) (which carries the model and D) and the rows
(x_f, y_f) to forget, and returns a new :class:`~inference.posterior.Posterior` whose training
data is D_r, so that requests can be chained and ``retrain`` always knows D_r.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from inference.posterior import Posterior
from models.datasets import as_regression_tensors

__all__ = ["UnlearningResult", "REGISTRY", "register", "describe_methods", "ForgetSet", "locate_forget_set",
           "finish"]


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

    @property
    def report(self) -> dict:
        """JSON-able report (everything but the posterior)."""
        return {"method": self.method, "options": self.options, "wall_time_s": self.wall_time_s,
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


# name -> (function(posterior, forget_set, bound, seed, progress, **options) -> dict, one-line description)
REGISTRY: dict[str, tuple[Callable[..., dict], str]] = {}


def register(name: str, description: str) -> Callable:
    """Decorator that adds an unlearning method to the registry under ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        REGISTRY[name] = (fn, description)
        return fn
    return deco


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
    rows = torch.cat([X, Y[:, None]], 1)
    frows = torch.cat([xf.to(X.dtype), yf.to(Y.dtype)[:, None]], 1)
    used = torch.zeros(len(X), dtype=torch.bool)
    idx = []
    for i, r in enumerate(frows):
        hits = torch.nonzero((rows == r).all(1) & ~used).flatten()
        if len(hits) == 0:
            again = bool((rows == r).all(1).any())
            if again:
                raise ValueError(f"forget row {i} is listed more often than it occurs in the training data "
                                 "(forgetting a point twice)")
            raise ValueError(f"forget row {i} (x={r[:-1].tolist()}, y={float(r[-1]):.6g}) is not in the posterior's "
                             "training data: it was never learned, or it was already forgotten")
        used[hits[0]] = True
        idx.append(int(hits[0]))
    if int(used.sum()) == len(X):
        raise ValueError("the forget set is the whole training data: there would be nothing left; refit from "
                         "the prior instead")
    keep = ~used
    return ForgetSet(indices=torch.tensor(sorted(idx)), x_forget=X[used], y_forget=Y[used],
                     x_retain=X[keep], y_retain=Y[keep])


def finish(name: str, old: Posterior, fs: ForgetSet, options: dict, t0: float, out: dict) -> UnlearningResult:
    """Wrap a method's output dict into an :class:`UnlearningResult` with the posterior's data set to D_r."""
    post: Posterior = out["posterior"]
    history = list(old.meta.get("unlearning", [])) + [{"method": name, "num_forgotten": len(fs.indices)}]
    meta = dict(post.meta)
    meta["unlearning"] = history
    post = post.replace(x=fs.x_retain, y=fs.y_retain, model=old.model, meta=meta)
    return UnlearningResult(posterior=post, method=name, options=options,
                            wall_time_s=time.perf_counter() - t0, steps=out.get("steps"),
                            final_objective=out.get("final_objective"),
                            warnings=tuple(out.get("warnings", ())), diverged=bool(out.get("diverged", False)),
                            diagnostics=out.get("diagnostics", {}), forget_indices=fs.indices)
