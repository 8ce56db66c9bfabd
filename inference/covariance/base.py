"""``Covariance``: the interface every posterior covariance structure implements (one class per structure).

A Gaussian posterior q(θ) = N(μ, Σ) over θ ∈ ℝ^d holds its Σ as one ``Covariance`` object. Σ may be
restricted to an *active* subset of coordinates (``active``: a sorted long tensor of k indices; the other
d − k coordinates are point masses at μ, as in last-layer Laplace). Every method below works on the k
active coordinates; ``Posterior`` scatters back into ℝ^d. What the inference and unlearning methods need:

    sample(n, generator)        draws ε ~ N(0, Σ)                       [n, k]
    log_prob(δ)                 log N(δ; 0, Σ) for δ = θ_active − μ_active
    matvec(v)                   Σ v                                     v: [k] or [k, m]
    variance()                  diag Σ                                  [k]
    jacobian_quadratic(J)       diag(J Σ Jᵀ) (the linearised predictive) J: [N, k]
    precision_matvec(v)         Λ v = Σ⁻¹ v  (Mahalanobis distances, Newton steps)
    downdate(term)              the structure after Λ_r = Λ − C for a PSD curvature term C in this
                                structure's own form (``curvature_form``): the Laplace down-date
    dense()                     Σ as a [k, k] matrix (small problems, tests, moment matching)
    fields() / from_fields()    the tensors written to files (safetensors) and read back

Structures (``STRUCTURES`` maps each ``name`` to its class; :func:`structure_class` looks one up):
"diag", "lowrank", "full", "precision", "empirical" and, for ``BayesianMLP``, "kron" (KFAC).
The mapping is filled by each class's ``__init_subclass__``, so adding a structure is one new module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch

__all__ = ["Covariance", "STRUCTURES", "structure_class"]

STRUCTURES: dict[str, type["Covariance"]] = {}


def structure_class(name: str) -> type["Covariance"]:
    """The class of a structure name; one-line ``ValueError`` naming the known ones otherwise."""
    try:
        return STRUCTURES[name]
    except KeyError:
        raise ValueError(f"unknown covariance structure {name!r}; known: {sorted(STRUCTURES)}") from None


class Covariance(ABC):
    """Σ over the active coordinates of θ (all of them when ``active`` is None). Immutable."""

    #: the structure's name, as written to files and reports
    name: ClassVar[str]
    #: names of the tensors ``fields()`` returns (without ``active``)
    tensor_fields: ClassVar[tuple[str, ...]]
    #: the form a curvature term must take for ``downdate``: "dense" ([k, k]), "diag" ([k]) or the
    #: structure's own (e.g. "kron": per-layer Kronecker factors); None when it cannot be down-dated
    curvature_form: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            STRUCTURES[cls.name] = cls

    def __init__(self, active: torch.Tensor | None = None):
        self.active = active

    # -- what the methods need ---------------------------------------------------------------------
    @property
    @abstractmethod
    def size(self) -> int:
        """k, the number of active coordinates."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @abstractmethod
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """ε ~ N(0, Σ): [num_samples, k]."""

    @abstractmethod
    def log_prob(self, delta: torch.Tensor) -> torch.Tensor:
        """log N(δ; 0, Σ) for δ [..., k]."""

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Σ v for v [k] or [k, m]."""

    @abstractmethod
    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Σ⁻¹ v for v [k] or [k, m]."""

    @abstractmethod
    def variance(self) -> torch.Tensor:
        """diag Σ: [k]."""

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """diag(J Σ Jᵀ) for J [N, k]: [N]. Default: row-wise Jᵢ·(Σ Jᵢ); structures override it when
        they can do better."""
        return (J * self.matvec(J.T).T).sum(-1)

    def downdate(self, term: Any) -> "Covariance":
        """The structure with precision Λ − C, for a PSD term C in ``curvature_form``."""
        raise NotImplementedError(f"a {self.name!r} covariance cannot be down-dated")

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """Σ as a dense [k, k] matrix."""

    @abstractmethod
    def fields(self) -> dict[str, torch.Tensor]:
        """The tensors that define Σ (named as in ``tensor_fields``), for files."""

    @classmethod
    def from_fields(cls, fields: Mapping[str, torch.Tensor], active: torch.Tensor | None = None) -> "Covariance":
        """Rebuild from ``fields()`` (and ``active``)."""
        return cls(**{k: fields[k] for k in cls.tensor_fields if k in fields}, active=active)

    def __repr__(self) -> str:
        k = self.size
        return f"{type(self).__name__}(k={k}{'' if self.active is None else ', active'})"
