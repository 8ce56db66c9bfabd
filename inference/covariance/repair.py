"""Positive-definiteness checks of a precision, and their repairs on request (DESIGN.md §3, §4.2).

A Laplace precision Λ (exact Hessian of a non-convex net, Pyro issue #3182) or a down-dated one
Λ_r = Λ − C need not be positive definite. This is never repaired silently: the check reports the
smallest and largest eigenvalue and the count of non-positive ones, and raises
:class:`NotPositiveDefiniteError` unless a repair is asked for:

    repair="clip"   Λ' = V diag(max(λ_i, floor)) Vᵀ        (eigenvalue clipping; Λ = V diag(λ) Vᵀ)
    repair="damp"   Λ' = Λ + δ I,  δ = max(floor, −λ_min + floor)

with ``floor`` = 1e-6 · max|λ_i| unless given. A diagonal precision has its entries as eigenvalues; only
clipping applies to it. Cost: one float64 ``eigvalsh`` (O(k³)) for a dense Λ, O(k) for a diagonal.
"""

from __future__ import annotations

import torch

__all__ = ["NotPositiveDefiniteError", "check_and_repair_precision", "check_and_repair_diagonal"]


class NotPositiveDefiniteError(ValueError):
    """A precision matrix that should be positive definite is not."""


def check_and_repair_diagonal(d: torch.Tensor, repair: str | None = None, floor: float | None = None,
                              what: str = "diagonal precision") -> tuple[torch.Tensor, dict]:
    """The diagonal-precision twin of :func:`check_and_repair_precision` (only 'clip' applies)."""
    facts = {"min_eigenvalue": float(d.min()), "max_eigenvalue": float(d.max()),
             "num_nonpositive": int((d <= 0).sum()), "repair": None}
    if facts["num_nonpositive"] == 0:
        return d, facts
    if repair is None:
        raise NotPositiveDefiniteError(
            f"the {what} has {facts['num_nonpositive']} of {len(d)} entries <= 0 (smallest eigenvalue "
            f"{facts['min_eigenvalue']:.4g}); pass repair='clip' to raise them to a floor, or use curvature='ggn'")
    if repair not in ("clip", "damp"):
        raise ValueError(f"repair must be None, 'clip' or 'damp', got {repair!r}")
    floor = float(floor) if floor is not None else 1e-6 * float(d.abs().max())
    facts["repair"] = {"kind": "clip", "floor": floor, "num_clipped": int((d < floor).sum())}
    return d.clamp_min(floor), facts


def check_and_repair_precision(prec: torch.Tensor, repair: str | None = None, floor: float | None = None,
                               what: str = "precision") -> tuple[torch.Tensor, dict]:
    """Check Λ is positive definite; repair only when asked. Returns (Λ, facts)."""
    if repair not in (None, "clip", "damp"):
        raise ValueError(f"repair must be None, 'clip' or 'damp', got {repair!r}")
    prec = 0.5 * (prec + prec.T)
    ev = torch.linalg.eigvalsh(prec.to(torch.float64))  # eigenvalues only: 2-3x cheaper than eigh
    facts = {"min_eigenvalue": float(ev.min()), "max_eigenvalue": float(ev.max()),
             "num_nonpositive": int((ev <= 0).sum()), "repair": None}
    if facts["num_nonpositive"] == 0 and torch.linalg.cholesky_ex(prec)[1] == 0:
        return prec, facts
    if repair is None:
        raise NotPositiveDefiniteError(
            f"the {what} is not positive definite: smallest eigenvalue {facts['min_eigenvalue']:.4g}, "
            f"{facts['num_nonpositive']} of {len(ev)} eigenvalues <= 0. Pass repair='clip' (raise them to a "
            "floor) or repair='damp' (add δI), or use curvature='ggn', which is PSD by construction")
    floor = float(floor) if floor is not None else 1e-6 * float(ev.abs().max())
    if repair == "clip":
        ev, V = torch.linalg.eigh(prec.to(torch.float64))
        ev_new = ev.clamp_min(floor)
        out = (V * ev_new) @ V.T
        facts["repair"] = {"kind": "clip", "floor": floor, "num_clipped": int((ev < floor).sum())}
    else:
        delta = max(floor, -float(ev.min()) + floor)
        out = prec + delta * torch.eye(len(ev), dtype=prec.dtype)
        facts["repair"] = {"kind": "damp", "delta": delta}
    return 0.5 * (out + out.T), facts
