"""Reference methods present in every comparison (DESIGN.md §4.4).

    none          q_u(θ) = q(θ | D)                    (do nothing: the lower reference)
    retrain       q_u = fit(model, D_r, same family)   (exact retraining: the gold standard)
    retrain-warm  the same, started from q(θ | D)      (usually faster, same target)
    retrain-lm    the same Laplace fit on D_r with the Levenberg–Marquardt MAP optimiser, from a prior draw:
                  the fastest retraining the library offers, and the cold start of the optimiser ``lm-refit``
                  runs warm -- a speed-up against it is the gain of the warm start alone
"""

from __future__ import annotations

from ..inference.fit import ADAM_ONLY_OPTIONS, ALLOWED_OPTIONS, fit
from ..inference.posterior import Posterior

from .base import ForgetSet, register


def _refit(old: Posterior, fs: ForgetSet, seed: int, progress: bool, warm: bool, options: dict,
           optimizer: str | None = None) -> dict:
    info = old.meta.get("fit")
    if not info:
        raise ValueError("the posterior does not record how it was fitted (meta['fit']); retraining needs it")
    allowed = ALLOWED_OPTIONS[info["method"]]
    bad = set(options) - allowed
    if bad:
        raise TypeError(f"unknown option(s) {sorted(bad)} for retraining a {info['method']!r} posterior; "
                        f"allowed: {sorted(allowed)}")
    opts = dict(info.get("options", {}))
    resolved = (old.meta.get("report") or {}).get("optimizer")
    if opts.get("optimizer", "auto") == "auto" and resolved in ("adam-lbfgs", "lm"):
        opts["optimizer"] = resolved  # the MAP search the fit ran ("auto" resolved by the original N)
    if optimizer is not None and opts.get("optimizer", "adam-lbfgs") != optimizer:
        opts = {k: v for k, v in opts.items() if k not in ADAM_ONLY_OPTIONS}  # the original MAP search's own
        opts["optimizer"] = optimizer
    opts.update(options)
    post = fit(old.model, fs.x_retain, fs.y_retain, info["method"], seed=seed, progress=progress,
               init=old if warm else None, **opts)
    rep = post.meta.get("report", {})
    return {"posterior": post, "steps": rep.get("steps"), "warnings": post.meta.get("warnings", []),
            "final_objective": post.meta["losses"][-1] if post.meta.get("losses") else None}


@register("none", "do nothing: keep q(θ|D) (the lower reference)")
def none(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False) -> dict:
    return {"posterior": old}


def _fit_options(family: str) -> set[str]:
    return ALLOWED_OPTIONS.get(family, set())


@register("retrain", "exact retraining: the same inference from scratch on D_r (the gold standard)",
          passes_on=_fit_options)
def retrain(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, **options) -> dict:
    return _refit(old, fs, seed, progress, warm=False, options=options)


@register("retrain-warm", "the same inference on D_r, warm-started from q(θ|D)", passes_on=_fit_options)
def retrain_warm(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, **options) -> dict:
    return _refit(old, fs, seed, progress, warm=True, options=options)


@register("retrain-lm", "retraining with the Levenberg–Marquardt MAP optimiser from a prior draw (Laplace): the "
          "fastest cold retrain, the reference for lm-refit's warm-start gain", passes_on=_fit_options,
          families=("laplace",))
def retrain_lm(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, **options) -> dict:
    return _refit(old, fs, seed, progress, warm=False, options=options, optimizer="lm")
