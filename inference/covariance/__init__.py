"""Posterior covariance structures, one class per structure behind one interface (:mod:`.base`).

    Diag        Σ = diag(s²)                 mean-field SVI, diagonal GGN Laplace       (:mod:`.diag`)
    LowRank     Σ = F Fᵀ + diag(c)           low-rank SVI                              (:mod:`.lowrank`)
    Full        Σ = L Lᵀ                     full-rank SVI, moment matching            (:mod:`.full`)
    Precision   Σ = Λ⁻¹ (Cholesky cached)    Laplace (exact Hessian or GGN)            (:mod:`.precision`)
    Empirical   weighted draws θ_s, w_s      NUTS, Pareto-smoothed importance sampling (:mod:`.empirical`)
    Kron        Λ_l = A_l ⊗ B_l + τ_l I      KFAC GGN Laplace of a BayesianMLP, per layer (:mod:`.kron`)

``STRUCTURES`` maps each name (as written to files) to its class, :func:`structure_class` looks one up.
As in laplace-torch (one class per Laplace structure behind ``Laplace(...)``) and Pyro's autoguides (one
class per family, the maths in its docstring), a new structure is one new module: the class registers
itself on definition. The positive-definiteness check and repair of a (down-dated) precision is
:mod:`.repair`.
"""

from __future__ import annotations

from .base import STRUCTURES, Covariance, structure_class
from .diag import Diag
from .empirical import Empirical
from .full import Full
from .kron import Kron
from .lowrank import LowRank
from .precision import Precision
from .repair import NotPositiveDefiniteError, check_and_repair_diagonal, check_and_repair_precision

__all__ = ["Covariance", "STRUCTURES", "structure_class", "Diag", "LowRank", "Full", "Precision", "Empirical", "Kron",
           "NotPositiveDefiniteError", "check_and_repair_precision", "check_and_repair_diagonal"]
