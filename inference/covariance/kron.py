"""``Kron``: the Kronecker-factored (KFAC) Laplace covariance of a fixed-noise ``BayesianMLP``.

Ritter, Botev & Barber, "A Scalable Laplace Approximation for Neural Networks" (ICLR 2018); Martens & Grosse
(ICML 2015); Immer et al. (AISTATS 2021) and laplace-torch's ``KronDecomposed`` (Daxberger et al., NeurIPS 2021).

θ = (w0, b0, w1, b1, ...), each w_l [in_l, out_l] flattened row-major (coordinate i·out_l + j is W_l[i, j]) and
b_l [out_l]: the layout of ``BayesianMLP``. The precision is block-diagonal over these sites,

    Λ_{w_l} = A_l ⊗ B_l / (N σ²) + τ_l I,        Λ_{b_l} = B_l / σ² + τ_{b,l} I,

with A_l, B_l, N, σ² the factor sums of :mod:`inference.curvature.kfac` (row-major: (A ⊗ B) vec(V) =
vec(A V Bᵀ)) and τ the prior precisions of the sites (1/s_l², s_l = prior_scale or weight_scale/√in_l for a
fan-in prior; 1/bias_scale² for the biases), read off the prior's curvature diagonal. With the
eigendecompositions A = U_A diag(α) U_Aᵀ, B = U_B diag(β) U_Bᵀ the whole precision is Λ = Q diag(λ) Qᵀ for
the orthogonal Q = blockdiag_l(U_A ⊗ U_B, U_B) and

    λ_{w_l}[i, j] = α_i β_j / (N σ²) + τ_l,        λ_{b_l}[j] = β_j / σ² + τ_{b,l},

so Λ⁻¹ = Q diag(1/λ) Qᵀ, Σ^{1/2} z = Q (z / √λ), log det Λ = Σ log λ, and every method is a rotation into the
eigenbasis (V ↦ U_Aᵀ V U_B per weight matrix, b ↦ U_Bᵀ b) and back.

The linearised predictive: a point's Jacobian in layer l is a ⊗ g (a the layer's input, g = ∂f/∂z_l), whose
rotation is (U_Aᵀ a) ⊗ (U_Bᵀ g), so without forming J,

    J Σ Jᵀ = Σ_l Σ_ij (U_Aᵀ a)_i² (U_Bᵀ g)_j² / λ_{w_l}[i, j]  +  Σ_j (U_Bᵀ g)_j² / λ_{b_l}[j]

(:meth:`Kron.jacobian_quadratic_from_signals`; a dense J [N, k] works too, :meth:`Kron.jacobian_quadratic`).

The precision in its curvature form (``curvature_form = "kron"``) is a
:class:`~inference.curvature.kfac.KronPrecision` (factor sums, count, σ², τ's): ``from_curvature`` builds a
``Kron`` from one, ``precision_form`` gives it back. The down-date subtracts the forget set's
:class:`~inference.curvature.kfac.KronFactors` at the same θ (the base class's ``downdate``:
``from_curvature(precision_form() − C)``), which gives the retained data's KFAC exactly,
(A − A_f) ⊗ (B − B_f) / ((N − N_f) σ²), re-eigendecomposed. This is KFAC's own "Λ − C": the retained KFAC,
not the old KFAC minus the forget set's KFAC (which is not a Kronecker product). It is positive definite
(τ > 0) unless the subtracted factors are not a subset of the data's (another θ, other points): a factor
eigenvalue below −10⁻⁹ of the factor's largest raises :class:`~inference.covariance.repair.NotPositiveDefiniteError`
unless ``repair`` is given (they are then set to 0 and the count recorded); smaller negative ones are
rounding and set to 0.

Costs (d parameters, layer widths p = in_l, q = out_l): memory O(Σ_l (p² + q²)) for the factors and
eigenvectors plus O(d) for λ, never d × d; construction O(Σ_l (p³ + q³)) (eigh); one Σ v or Λ v
O(Σ_l pq (p + q)); the linearised variance of N points O(N Σ_l (p² + q² + pq)) from the signals;
``dense`` (and the default ``to_distribution``) only below ``DENSE_MAX`` coordinates; ``draw`` works at
any size. Held in float64.
"""

from __future__ import annotations

import math

import torch

from ..curvature.kfac import KronFactors, KronPrecision, LayerSignals, layer_signals
from ..latent import BoundModel
from .base import Covariance
from .repair import NotPositiveDefiniteError

__all__ = ["Kron", "DENSE_MAX"]

DENSE_MAX = 8192  # dense() refuses above this many coordinates (8192² float64 = 0.5 GB)
ROUNDING = 1e-9   # a factor eigenvalue above −ROUNDING × the factor's largest is rounding (set to 0 silently)


def _psd_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(eigenvalues clamped at 0, eigenvectors, count below −ROUNDING × the largest) of a symmetric PSD factor."""
    ev, U = torch.linalg.eigh(0.5 * (M + M.T))
    bad = int((ev < -ROUNDING * float(ev.abs().max().clamp_min(1e-300))).sum())
    return ev.clamp_min(0.0), U, bad


class Kron(Covariance):
    """Σ = Λ⁻¹ with Λ the KFAC GGN plus an isotropic prior per site (module docstring). Immutable.

    Build it with :meth:`from_curvature` (or :meth:`from_factors`); the constructor takes the packed
    ``fields()``: ``A`` (every A_l flattened, concatenated), ``B`` (likewise), ``widths`` [L + 1], ``count`` [1],
    ``noise_var`` [1], ``tau_w`` [L], ``tau_b`` [L]."""

    name = "kron"
    tensor_fields = ("A", "B", "widths", "count", "noise_var", "tau_w", "tau_b")
    curvature_form = "kron"

    def __init__(self, A: torch.Tensor, B: torch.Tensor, widths: torch.Tensor, count: torch.Tensor,
                 noise_var: torch.Tensor, tau_w: torch.Tensor, tau_b: torch.Tensor,
                 active: torch.Tensor | None = None):
        if active is not None:
            raise ValueError("a 'kron' covariance covers every coordinate of the MLP; it takes no active subset")
        super().__init__(None)
        w = [int(v) for v in torch.as_tensor(widths).flatten()]
        L = len(w) - 1
        if L < 1 or min(w) < 1:
            raise ValueError(f"widths must list at least two positive layer widths, got {w}")
        A, B = A.detach().to(torch.float64).flatten(), B.detach().to(torch.float64).flatten()
        if A.numel() != sum(p * p for p in w[:-1]) or B.numel() != sum(q * q for q in w[1:]):
            raise ValueError(f"A has {A.numel()} and B {B.numel()} entries; widths {w} need "
                             f"{sum(p * p for p in w[:-1])} and {sum(q * q for q in w[1:])}")
        tau_w = torch.as_tensor(tau_w, dtype=torch.float64).flatten()
        tau_b = torch.as_tensor(tau_b, dtype=torch.float64).flatten()
        if len(tau_w) != L or len(tau_b) != L or not (tau_w > 0).all() or not (tau_b > 0).all():
            raise ValueError(f"tau_w and tau_b need {L} positive prior precisions each, got {tau_w} and {tau_b}")
        self.widths = tuple(w)
        self.count = int(round(float(torch.as_tensor(count).flatten()[0])))
        self.noise_var = float(torch.as_tensor(noise_var).flatten()[0])
        if self.count < 0 or not self.noise_var > 0:
            raise ValueError(f"count must be >= 0 and noise_var > 0, got {self.count} and {self.noise_var}")
        self.tau_w, self.tau_b = tau_w, tau_b
        As, Bs, a0, b0 = [], [], 0, 0
        for p, q in zip(w[:-1], w[1:]):
            As.append(A[a0:a0 + p * p].reshape(p, p))
            Bs.append(B[b0:b0 + q * q].reshape(q, q))
            a0, b0 = a0 + p * p, b0 + q * q
        self._A, self._B = tuple(As), tuple(Bs)
        c = 1.0 / (self.count * self.noise_var) if self.count > 0 else 0.0  # no data: the prior alone
        self._UA, self._UB, self._lam_w, self._lam_b, self._slices = [], [], [], [], []
        #: factor eigenvalues below −ROUNDING × the factor's largest, set to 0 (see the module docstring)
        self.num_negative_factor_eigenvalues = 0
        start = 0
        for l, (p, q) in enumerate(zip(w[:-1], w[1:])):
            alpha, UA, bad_a = _psd_eigh(As[l])
            beta, UB, bad_b = _psd_eigh(Bs[l])
            if self.count > 0:  # with no data left the factors are rounding residue, and unused (c = 0)
                self.num_negative_factor_eigenvalues += bad_a + bad_b
            self._UA.append(UA)
            self._UB.append(UB)
            self._lam_w.append(c * alpha[:, None] * beta[None, :] + tau_w[l])     # [p, q]
            self._lam_b.append(beta / self.noise_var + tau_b[l])                 # [q]
            self._slices.append((slice(start, start + p * q), slice(start + p * q, start + p * q + q)))
            start += p * q + q
        self._k = start
        self.validate()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_curvature(cls, precision: KronPrecision, *, active: torch.Tensor | None = None,
                       repair: str | None = None, floor: float | None = None,
                       what: str = "") -> tuple["Kron", dict]:
        """(Kron with precision Λ given as a :class:`KronPrecision`, facts): Λ's smallest and largest eigenvalue,
        its non-positive count (0: τ > 0) and the factors' eigenvalues that were negative beyond rounding, which
        raise :class:`NotPositiveDefiniteError` unless ``repair`` ('clip' or 'damp': both set them to 0) is given.
        ``floor`` is not used (the prior keeps every eigenvalue ≥ τ)."""
        if not isinstance(precision, KronPrecision):
            raise TypeError(f"a 'kron' covariance is built from a KronPrecision (inference.curvature.kfac), "
                            f"got {type(precision).__name__}")
        if repair not in (None, "clip", "damp"):
            raise ValueError(f"repair must be None, 'clip' or 'damp', got {repair!r}")
        f = precision.factors
        cov = cls(torch.cat([a.flatten() for a in f.A]), torch.cat([b.flatten() for b in f.B]), torch.tensor(f.widths),
                  torch.tensor([float(f.count)], dtype=torch.float64), torch.tensor([f.noise_var], dtype=torch.float64),
                  torch.tensor(precision.tau_w, dtype=torch.float64), torch.tensor(precision.tau_b, dtype=torch.float64),
                  active=active)
        lam = cov._eigenvalues()
        bad = cov.num_negative_factor_eigenvalues
        facts = {"min_eigenvalue": float(lam.min()), "max_eigenvalue": float(lam.max()),
                 "num_nonpositive": int((lam <= 0).sum()), "repair": None}
        if bad:
            label = f"{what} KFAC precision" if what else "KFAC precision"
            if repair is None:
                raise NotPositiveDefiniteError(
                    f"the {label} has {bad} Kronecker-factor eigenvalues below 0 beyond rounding: the subtracted "
                    "factors are not those of a subset of the data at this θ; pass repair='clip' to set them to 0")
            facts["repair"] = {"kind": "clip", "floor": 0.0, "num_clipped": bad}
        return cov, facts

    @classmethod
    def from_factors(cls, factors: KronFactors, prior_precision: torch.Tensor) -> "Kron":
        """The KFAC Laplace covariance from the data's factor sums and the prior's curvature diagonal [d]
        (:meth:`KronPrecision.from_prior <inference.curvature.kfac.KronPrecision.from_prior>`; checked)."""
        return cls.from_curvature(KronPrecision.from_prior(factors, prior_precision))[0]

    @property
    def factors(self) -> KronFactors:
        """The data's factor sums this covariance was built from."""
        return KronFactors(self._A, self._B, self.count, self.noise_var)

    def precision_form(self) -> KronPrecision:
        """Λ as a :class:`KronPrecision` (what a down-date subtracts the forget set's ``KronFactors`` from)."""
        return KronPrecision(self.factors, tuple(float(t) for t in self.tau_w), tuple(float(t) for t in self.tau_b))

    def layer_slices(self) -> list[tuple[slice, slice]]:
        """Per layer l, the coordinates of θ that hold w_l (row-major [in_l, out_l]) and b_l [out_l]."""
        return list(self._slices)

    # -- the eigenbasis ----------------------------------------------------------------------------
    def _rows(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() not in (1, 2) or v.shape[0] != self._k:
            raise ValueError(f"expected a vector [{self._k}] or a matrix [{self._k}, m], got {tuple(v.shape)}")
        v = v.to(torch.float64)
        return v[None] if v.dim() == 1 else v.T

    @staticmethod
    def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return rows[0] if like.dim() == 1 else rows.T

    def _rotate(self, rows: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Qᵀ r (into the eigenbasis) for each row r [m, k], or Q r with ``inverse``."""
        out = torch.empty_like(rows)
        m = rows.shape[0]
        for (sw, sb), UA, UB, (p, q) in zip(self._slices, self._UA, self._UB, zip(self.widths[:-1], self.widths[1:])):
            V = rows[:, sw].reshape(m, p, q)
            out[:, sw] = (UA @ V @ UB.T if inverse else UA.T @ V @ UB).reshape(m, p * q)
            out[:, sb] = rows[:, sb] @ (UB.T if inverse else UB)
        return out

    def _eigenvalues(self) -> torch.Tensor:
        """λ [k], the precision's eigenvalues in θ's block order (the eigenbasis of :meth:`_rotate`)."""
        return torch.cat([t for lw, lb in zip(self._lam_w, self._lam_b) for t in (lw.flatten(), lb)])

    # -- the Covariance interface ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._k

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(num_samples, self._k, generator=generator, dtype=torch.float64)
        return self._rotate(z * self._eigenvalues().rsqrt(), inverse=True)

    def log_prob(self, delta: torch.Tensor) -> torch.Tensor:
        delta = delta.to(torch.float64)
        if delta.shape[-1] != self._k:
            raise ValueError(f"delta must have last dimension {self._k}, got {tuple(delta.shape)}")
        lam = self._eigenvalues()
        flat = delta.reshape(-1, self._k)
        maha = (self._rotate(flat) ** 2 * lam).sum(-1)
        out = -0.5 * (maha + self._k * math.log(2 * math.pi)) + 0.5 * lam.log().sum()
        return out.reshape(delta.shape[:-1])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._unrows(self._rotate(self._rotate(self._rows(v)) / self._eigenvalues(), inverse=True), v)

    def precision_matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._unrows(self._rotate(self._rotate(self._rows(v)) * self._eigenvalues(), inverse=True), v)

    def variance(self) -> torch.Tensor:
        """diag Σ: Σ_ab U_A[i, a]² U_B[j, b]² / λ_w[a, b] per weight, Σ_b U_B[j, b]² / λ_b[b] per bias."""
        parts = []
        for UA, UB, lw, lb in zip(self._UA, self._UB, self._lam_w, self._lam_b):
            parts += [((UA**2) @ (1.0 / lw) @ (UB**2).T).flatten(), (UB**2) @ (1.0 / lb)]
        return torch.cat(parts)

    def jacobian_quadratic(self, J: torch.Tensor) -> torch.Tensor:
        """diag(J Σ Jᵀ) for a dense J [N, k]: Σ (Qᵀ J_n)² / λ, O(N Σ_l pq(p + q))."""
        if J.dim() != 2 or J.shape[1] != self._k:
            raise ValueError(f"J must be [N, {self._k}], got {tuple(J.shape)}")
        return (self._rotate(J.to(torch.float64)) ** 2 / self._eigenvalues()).sum(-1)

    def jacobian_quadratic_from_signals(self, signals: LayerSignals) -> torch.Tensor:
        """diag(J Σ Jᵀ) [N] from each layer's inputs a and output gradients g (``inference.curvature.layer_signals``)
        without forming J: Σ_l ((a U_A)² (1/λ_w) ⊙ (g U_B)²) 1 + (g U_B)² (1/λ_b), O(N Σ_l (p² + q² + pq))."""
        if len(signals.inputs) != len(self._UA) or len(signals.grads) != len(self._UA):
            raise ValueError(f"signals for {len(signals.inputs)} layers; this covariance has {len(self._UA)}")
        out = 0.0
        for a, g, UA, UB, lw, lb in zip(signals.inputs, signals.grads, self._UA, self._UB, self._lam_w, self._lam_b):
            if a.shape[1] != UA.shape[0] or g.shape[1] != UB.shape[0]:
                raise ValueError(f"signals of widths ({a.shape[1]}, {g.shape[1]}) for a layer of "
                                 f"({UA.shape[0]}, {UB.shape[0]})")
            P, G = (a.to(torch.float64) @ UA) ** 2, (g.to(torch.float64) @ UB) ** 2
            out = out + ((P @ (1.0 / lw)) * G).sum(-1) + G @ (1.0 / lb)
        return out

    def dense(self) -> torch.Tensor:
        if self._k > DENSE_MAX:
            raise ValueError(f"dense() of a 'kron' covariance over {self._k} coordinates would need "
                             f"{self._k ** 2 * 8 / 2**30:.1f} GiB (limit {DENSE_MAX} coordinates); use matvec/variance")
        S = self.matvec(torch.eye(self._k, dtype=torch.float64))
        return 0.5 * (S + S.T)

    def fields(self) -> dict[str, torch.Tensor]:
        return {"A": torch.cat([a.flatten() for a in self._A]), "B": torch.cat([b.flatten() for b in self._B]),
                "widths": torch.tensor(self.widths), "count": torch.tensor([float(self.count)], dtype=torch.float64),
                "noise_var": torch.tensor([self.noise_var], dtype=torch.float64),
                "tau_w": self.tau_w.clone(), "tau_b": self.tau_b.clone()}

    def linearised_variance(self, bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, *,
                            chunk: int = 1024) -> torch.Tensor:
        """diag(J Σ Jᵀ) [N] of the mean's Jacobian at θ on inputs x, from the layer signals of ``chunk`` rows at a
        time (J never formed: memory O(chunk · max width) instead of O(chunk · d))."""
        return torch.cat([self.jacobian_quadratic_from_signals(layer_signals(bound, x[a:a + chunk], theta))
                          for a in range(0, len(x), chunk)])

    def draw(self, loc: torch.Tensor, num_samples: int) -> torch.Tensor:
        """loc + Σ^{1/2} z from the global RNG, at any size (no dense Σ)."""
        return loc + self.sample(num_samples).to(loc.dtype)

    def to(self, dtype: torch.dtype) -> "Kron":
        """Itself: a KFAC covariance is held in float64 (its products return float64)."""
        return self
