"""``auto``: the method to call first — the cheapest update whose verdict is "ok".

Escalation ladder (each rung's result is checked by :func:`unlearning.verdict.compute_verdict`, which
needs no retraining):

    1. cheap, D_f only:  ``laplace-downdate``  Λ_r = Λ − H_f, μ_r = θ* − Λ_r⁻¹ g_f  (any Gaussian posterior)
    2. warm re-fit:      ``lm-refit`` (Laplace) or ``elbo-refit`` (SVI guides) on the retained objective
    3. last resort:      ``retrain`` (the same inference from scratch on D_r)

The first rung whose verdict is "ok" is returned. If none is, the retrain is returned when it ran
and did not fail (the reference by definition); with ``allow_retrain=False`` the first "uncertain"
result, or the last one ("failed"). When the forget set held most of the old posterior's information
along some direction (an emptied region, :func:`unlearning.verdict.forget_share`: κ > ½), no update
started from the old posterior can be "ok", so with ``allow_retrain=True`` the warm rungs are skipped
(``diagnostics["skipped"]`` says which and why) and ``auto`` retrains at once. Empirical (NUTS)
posteriors go straight to ``retrain``. The report's
``diagnostics["path"]`` lists every rung tried with its verdict, reasons and time.
"""

from __future__ import annotations

import time

from ..inference.posterior import Posterior
from ..inference.svi import GUIDES

from .base import REGISTRY, ForgetSet, register
from .verdict import VERDICT_RULES, compute_verdict, forget_share, share_reason

__all__ = ["auto_ladder"]


def auto_ladder(old: Posterior, cheap: tuple[str, ...] = ("laplace-downdate",), allow_retrain: bool = True) -> list[str]:
    """The methods ``auto`` tries for this posterior, in order."""
    if not old.cov.gaussian:  # draws (NUTS): no cheap update applies
        return ["retrain"] if allow_retrain else []
    ladder = [c for c in cheap]
    if old.family == "laplace":
        ladder.append("lm-refit")
    elif old.family in GUIDES:
        ladder.append("elbo-refit")
    if allow_retrain:
        ladder.append("retrain")
    return ladder


@register("auto", "the cheapest update whose verdict is 'ok': laplace-downdate, then lm-refit (Laplace) or "
          "elbo-refit (SVI), then retrain")
def auto(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False,
         cheap: tuple[str, ...] | list[str] = ("laplace-downdate",), allow_retrain: bool = True,
         refit_options: dict | None = None) -> dict:
    cheap = tuple(cheap)
    unknown = [c for c in cheap if c not in REGISTRY or c in ("auto", "retrain", "none")]
    if unknown:
        raise ValueError(f"cheap must name registered D_f-only methods, got {unknown}")
    ladder = auto_ladder(old, cheap, allow_retrain)
    if not ladder:
        raise ValueError("auto has nothing to try for an empirical posterior with allow_retrain=False")
    share = forget_share(old, fs.x_forget, fs.y_forget, seed=seed, x_retain=fs.x_retain, y_retain=fs.y_retain)
    skipped = None
    if allow_retrain and share.get("forget_share", 0.0) > VERDICT_RULES["share_uncertain"]:
        skipped = {"methods": [m for m in ladder if m != "retrain"], "reason": share_reason(share)}
        ladder = ["retrain"]
    path, best, last, best_name, last_name = [], None, None, None, None
    for name in ladder:
        t0 = time.perf_counter()
        opts = dict(refit_options or {}) if name in ("lm-refit", "elbo-refit") else {}
        try:
            out = REGISTRY[name][0](old, fs, seed=seed, progress=progress, **opts)
        except (ValueError, RuntimeError, NotImplementedError) as e:  # refused or broke: escalate
            path.append({"method": name, "verdict": "failed", "reasons": [f"{type(e).__name__}: {e}"],
                         "time_s": time.perf_counter() - t0})
            continue
        t_method = time.perf_counter() - t0
        post = out["posterior"].replace(x=fs.x_retain, y=fs.y_retain, model=old.model)
        v = compute_verdict(name, old, post, fs.x_forget, fs.y_forget, out, seed=seed, share=share)
        path.append({"method": name, "verdict": v["verdict"], "reasons": v["reasons"], "time_s": t_method,
                     "verdict_time_s": time.perf_counter() - t0 - t_method})
        out = {**out, "verdict": v}
        last, last_name = out, name
        if v["verdict"] == "ok":
            best, best_name = out, name
            break
        if v["verdict"] == "uncertain" and best is None:
            best, best_name = out, name
    chosen, taken = (best, best_name) if best is not None else (last, last_name)
    if last_name == "retrain" and last["verdict"]["verdict"] != "failed":
        chosen, taken = last, last_name   # paid for the reference: it is the answer by definition
    if chosen is None:
        raise RuntimeError("auto: every method it tried failed to run: " +
                           "; ".join(f"{p['method']}: {p['reasons'][0]}" for p in path))
    diagnostics = {"path": path, "chosen": taken, **({"skipped": skipped} if skipped else {}),
                   **{f"{taken}/{k}": v for k, v in (chosen.get("diagnostics") or {}).items()
                      if isinstance(v, (int, float, str, bool, type(None)))}}
    warnings = list(chosen.get("warnings", []))
    if chosen["verdict"]["verdict"] != "ok":
        warnings.append(f"auto: no method reached an 'ok' verdict; returning {taken} "
                        f"({chosen['verdict']['verdict']}): {'; '.join(chosen['verdict']['reasons'])}")
    return {**chosen, "diagnostics": diagnostics, "warnings": warnings}
