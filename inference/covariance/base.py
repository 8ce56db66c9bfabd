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
    downdate(term, repair=...)  (the structure after Λ_r = Λ − C, facts of its positive-definiteness
                                check) for a PSD curvature term C in this structure's own form
                                (``curvature_form``): the Laplace down-date (DESIGN.md §4.2); the result
                                is held in ``downdated_class()`` (full, low-rank: a dense precision)
    dense()                     Σ as a [k, k] matrix (small problems, tests, moment matching)
    fields() / from_fields()    the tensors written to files (safetensors) and read back

``sample`` and ``log_prob`` have defaults too (from ``scale_factor`` and ``to_distribution``). And, with
defaults here that a structure overrides when it can do better:

    to_distribution(μ_active)   the torch ``Distribution`` N(μ, Σ) over the active coordinates
    draw(μ_active, n)           n draws of θ_active from the global RNG (``Posterior.sample`` seeds it)
    precision_form()            Λ in ``curvature_form`` (float64), the term a down-date subtracts from
    from_curvature(Λ, ...)      (the structure of a precision given in its curvature form, facts): the
                                Laplace fit and the down-date share this one positive-definiteness check
    from_moments(Σ)             this structure's moment-matched Gaussian of a dense Σ (reverse-KL reweighting)
    from_precision(Λ)           N(·, Λ⁻¹) written in this structure (an SVI guide's structure after a re-fit)
    scale_factor()              A with Σ = A Aᵀ (a vector for a diagonal A, else lower triangular), or None
    shifted(δ)                  the covariance of θ + δ (a Gaussian's is unchanged; draws move)
    num_moments(k)              the number of moments a Gaussian of this structure matches (importance-
                                sampling error, ``unlearning.verdict.ess_kl``)
    to(dtype)                   the same covariance in another floating dtype

Capabilities are class attributes, never string compares in the callers: ``gaussian`` (False for weighted
draws, which have no density), ``curvature_form`` (None: cannot be down-dated), ``recorded_curvature``.

Structures (``STRUCTURES`` maps each ``name`` to its class; :func:`structure_class` looks one up):
"diag", "lowrank", "full", "precision", "empirical" and, for ``BayesianMLP``, "kron" (KFAC).
The mapping is filled by each class's ``__init_subclass__``, so adding a structure is one new module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch
from torch.distributions import Distribution, MultivariateNormal

__all__ = ["Covariance", "STRUCTURES", "structure_class", "as_columns"]

STRUCTURES: dict[str, type["Covariance"]] = {}


def structure_class(name: str) -> type["Covariance"]:
    """The class of a structure name; one-line ``ValueError`` naming the known ones otherwise."""
    try:
        return STRUCTURES[name]
    except KeyError:
        raise ValueError(f"unknown covariance structure {name!r}; known: {sorted(STRUCTURES)}") from None


def as_columns(d: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """diag(d) v for v [k] or [k, m] (element-wise, broadcast over the columns)."""
    return d[:, None] * v if v.dim() == 2 else d * v


class Covariance(ABC):
    """Σ over the active coordinates of θ (all of them when ``active`` is None). Immutable."""

    #: the structure's name, as written to files and reports
    name: ClassVar[str]
    #: names of the tensors ``fields()`` returns (without ``active``)
    tensor_fields: ClassVar[tuple[str, ...]]
    #: those of ``tensor_fields`` that may be absent
    optional_fields: ClassVar[tuple[str, ...]] = ()
    #: the form a curvature term must take for ``downdate``: "dense" ([k, k]), "diag" ([k]) or the
    #: structure's own (e.g. "kron": per-layer Kronecker factors); None when it cannot be down-dated
    curvature_form: ClassVar[str | None] = None
    #: False for a structure of weighted draws (``samples``, ``weights()``; no density, no precision): methods
    #: that need a Gaussian refuse it
    gaussian: ClassVar[bool] = True
    #: whether Λ = Σ⁻¹ is a curvature whose kind (exact Hessian or GGN) the posterior's
    #: ``meta['curvature']['curvature']`` records (Laplace fits write it), so that a down-date subtracts the
    #: same kind; False for structures only SVI produces, whose Σ⁻¹ is matched by the exact Hessian
    recorded_curvature: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            STRUCTURES[cls.name] = cls

    def __init__(self, active: torch.Tensor | None = None):
        if active is not None:
            active = torch.as_tensor(active)
            if active.dim() != 1 or active.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"active must be a 1-D integer tensor of coordinates, got {active.dtype} of shape "
                                 f"{tuple(active.shape)}")
        self.active = active

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` for a non-finite tensor or an ``active`` of the wrong length
        (every structure calls this at the end of its constructor)."""
        for name, t in self.fields().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"covariance {name} contains NaN or inf")
        if self.active is not None and len(self.active) != self.size:
            raise ValueError(f"active lists {len(self.active)} coordinates, but the {self.name!r} covariance is over "
                             f"{self.size}")

    # -- what the methods need ---------------------------------------------------------------------
    @property
    @abstractmethod
    def size(self) -> int:
        """k, the number of active coordinates."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """ε ~ N(0, Σ): [num_samples, k]. Default: ε = A z, z ~ N(0, I), with A = ``scale_factor()``."""
        A = self.scale_factor()
        if A is None:
            raise NotImplementedError(f"a {self.name!r} covariance must implement sample()")
        z = torch.randn(num_samples, self.size, generator=generator, dtype=self.dtype)
        return z * A if A.dim() == 1 else z @ A.T

    def log_prob(self, delta: torch.Tensor) -> torch.Tensor:
        """log N(δ; 0, Σ) for δ [..., k]. Default: ``to_distribution(0).log_prob(δ)``."""
        return self.to_distribution(torch.zeros(self.size, dtype=self.dtype)).log_prob(delta)

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

    def linearised_variance(self, bound: Any, x: torch.Tensor, theta: torch.Tensor, *,
                            chunk: int = 1024) -> torch.Tensor:
        """diag(J Σ Jᵀ) [N] for the mean's Jacobian J = ∂m(x, θ)/∂θ at θ: the epistemic variance of the
        linearised predictive. Default: J in chunks of ``chunk`` rows (memory O(chunk · d)), restricted to the
        active coordinates, then :meth:`jacobian_quadratic`. Structures that never need J (KFAC) override it."""
        from ..curvature import mean_jacobian

        parts = []
        for a in range(0, len(x), chunk):
            J = mean_jacobian(bound, x[a:a + chunk], theta).detach()
            parts.append(self.jacobian_quadratic(J if self.active is None else J[:, self.active]))
        return torch.cat(parts)

    def downdate(self, term: Any, *, repair: str | None = None, floor: float | None = None,
                 what: str = "down-dated") -> tuple["Covariance", dict]:
        """(the structure with precision Λ − C, facts of the positive-definiteness check) for a PSD term C in
        ``curvature_form``. Λ − C need not be positive definite: its smallest eigenvalue and the count of
        non-positive ones are reported in the facts, and it is repaired (``repair='clip'|'damp'``, ``floor``)
        only on request -- otherwise :class:`~inference.covariance.repair.NotPositiveDefiniteError`.
        Default: :meth:`from_curvature` of ``precision_form() − C``."""
        if self.curvature_form is None:
            raise NotImplementedError(f"a {self.name!r} covariance cannot be down-dated")
        return self.downdated_class().from_curvature(self.precision_form() - term, active=self.active,
                                                     repair=repair, floor=floor, what=what)

    @classmethod
    def downdated_class(cls) -> type["Covariance"]:
        """The structure that holds this one's down-dated precision (default: this one)."""
        return cls

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """Σ as a dense [k, k] matrix."""

    @abstractmethod
    def fields(self) -> dict[str, torch.Tensor]:
        """The tensors that define Σ (named as in ``tensor_fields``), for files."""

    @classmethod
    def from_fields(cls, fields: Mapping[str, torch.Tensor], active: torch.Tensor | None = None) -> "Covariance":
        """Rebuild from ``fields()`` (and ``active``); a one-line ``ValueError`` naming a missing tensor."""
        required = [k for k in cls.tensor_fields if k not in cls.optional_fields]
        missing = [k for k in required if fields.get(k) is None]
        if missing:
            raise ValueError(f"a {cls.name!r} covariance needs {missing[0]!r}")
        return cls(**{k: fields[k] for k in cls.tensor_fields if fields.get(k) is not None}, active=active)

    # -- with defaults -----------------------------------------------------------------------------
    def to_distribution(self, loc: torch.Tensor) -> Distribution:
        """N(loc, Σ) as a torch ``Distribution`` over the active coordinates (default: from ``dense()``)."""
        return MultivariateNormal(loc, covariance_matrix=self.dense())

    def draw(self, loc: torch.Tensor, num_samples: int) -> torch.Tensor:
        """θ_active draws [num_samples, k] around ``loc`` from the global RNG (the caller seeds it)."""
        return self.to_distribution(loc).sample((num_samples,))

    def precision_form(self) -> Any:
        """Λ = Σ⁻¹ in ``curvature_form`` (float64). Default: the dense inverse of ``dense()`` by its Cholesky
        factor, O(k³) (structures whose form is not "dense" override it)."""
        if self.curvature_form is None:
            raise NotImplementedError(f"a {self.name!r} covariance has no precision in a curvature form")
        return torch.cholesky_inverse(torch.linalg.cholesky(self.dense().to(torch.float64)))

    @classmethod
    def from_curvature(cls, precision: Any, *, active: torch.Tensor | None = None, repair: str | None = None,
                       floor: float | None = None, what: str = "") -> tuple["Covariance", dict]:
        """(this structure with precision Λ given in ``curvature_form``, facts of the positive-definiteness
        check; repaired only on request). ``what`` prefixes the name of the matrix in error messages."""
        raise NotImplementedError(f"a {cls.name!r} covariance cannot be built from a curvature")

    @classmethod
    def from_moments(cls, cov: torch.Tensor, *, active: torch.Tensor | None = None,
                     rank: int | None = None) -> "Covariance":
        """This structure's Gaussian with the moments of the dense [k, k] covariance ``cov`` (exactly, or the
        structure's moment-matching projection; ``rank`` for low-rank structures)."""
        raise NotImplementedError(f"a {cls.name!r} covariance cannot be built from moments, which methods that "
                                  "moment-match draws (rkl) need; fit with structure 'full' or 'diag' to use them")

    @classmethod
    def from_precision(cls, precision: torch.Tensor, *, active: torch.Tensor | None = None,
                       rank: int | None = None) -> "Covariance":
        """N(·, Λ⁻¹) for a dense [k, k] precision written in this structure. Default: ``from_moments(Λ⁻¹)``."""
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        return cls.from_moments(cov, active=active, rank=rank)

    def scale_factor(self) -> torch.Tensor | None:
        """A with Σ = A Aᵀ: a vector [k] (A diagonal) or a lower-triangular [k, k]; None where the structure
        keeps no such factor (whitening needs one)."""
        return None

    def shifted(self, delta: torch.Tensor) -> "Covariance":
        """The covariance of θ + δ for a fixed δ [k]: a Gaussian's is unchanged (structures of draws move them)."""
        return self

    @classmethod
    def num_moments(cls, k: int) -> int:
        """Moments a Gaussian of this structure over k coordinates matches: k means + k(k+1)/2 covariances."""
        return k + k * (k + 1) // 2

    def to(self, dtype: torch.dtype) -> "Covariance":
        """The same covariance with its floating tensors in ``dtype`` (self when they already are)."""
        if self.dtype == dtype:
            return self
        return type(self).from_fields({k: v.to(dtype) if v.is_floating_point() else v
                                       for k, v in self.fields().items()}, active=self.active)

    def __repr__(self) -> str:
        k = self.size
        return f"{type(self).__name__}(k={k}{'' if self.active is None else ', active'})"
