"""Kronecker-factored (KFAC) generalised Gauss-Newton of a fixed-noise ``BayesianMLP``.

Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature" (ICML 2015);
Ritter, Botev & Barber, "A Scalable Laplace Approximation for Neural Networks" (ICLR 2018); Immer et al.,
"Improving predictions of Bayesian neural nets via local linearization" (AISTATS 2021) and laplace-torch's
``Kron`` (Daxberger et al., "Laplace Redux", NeurIPS 2021).

Layer l of the net computes z_l = a_l W_l + b_l with W_l ∈ ℝ^{in_l × out_l} (the site ``w{l}``), a_l = h_{l-1}
its input and f = z_{L-1}[0] the mean. For a point x_n write a_n = a_l(x_n) and g_n = ∂f(x_n)/∂z_l ∈ ℝ^{out_l}
(backpropagated output gradient). Then ∂f(x_n)/∂W_l[i, j] = a_n,i g_n,j, i.e. the row-major flattening of the
site is J_n = a_n ⊗ g_n, and the exact GGN block of a fixed-noise Gaussian likelihood y_n ~ N(f(x_n), σ²) is

    G_WW = (1/σ²) Σ_n (a_n a_nᵀ) ⊗ (g_n g_nᵀ).

KFAC replaces the mean of the Kronecker products by the Kronecker product of the means:

    G_WW ≈ N · (A/N) ⊗ (B/N) / σ² = A ⊗ B / (N σ²),     A = Σ_n a_n a_nᵀ,   B = Σ_n g_n g_nᵀ.

Normalisation: the factor SUMS A, B are kept with the count N, and the 1/N is applied once (Ritter et al.'s
expectations over the data, E[a aᵀ] = A/N and E[g gᵀ] = B/N, times N points). With this choice the
approximation is exact whenever a_n a_nᵀ or g_n g_nᵀ does not vary with n -- in particular for one data point,
and for the output layer of a scalar-output net (g_n = 1, so A ⊗ N / (Nσ²) = Σ a aᵀ / σ²) -- and the KFAC of the
retained data D_r at the same θ is obtained *exactly* from the full data's sums by subtraction,
(A − A_f) ⊗ (B − B_f) / ((N − N_f) σ²), which is what the Laplace down-date needs (:meth:`KronFactors.minus`).
The bias block is exact, Σ_n g_n g_nᵀ / σ² = B/σ²; cross-layer blocks and weight-bias blocks are dropped
(block-diagonal, as in Ritter et al. and laplace-torch).

With an isotropic Gaussian prior per site (precision τ_l on w_l, τ_{b,l} on b_l) the Laplace precision in this
form is :class:`KronPrecision`,

    Λ_{w_l} = A_l ⊗ B_l / (N σ²) + τ_l I,     Λ_{b_l} = B_l / σ² + τ_{b,l} I,

and "Λ − C" for the forget set's factors C is ``KronPrecision − KronFactors``: the retained data's KFAC plus
the same prior.

Supported setting: a model with ``activations(sites, x)`` (the built-in ``BayesianMLP``) whose latent sites are
exactly w0, b0, w1, b1, ... (real-valued) and whose observation noise σ is a fixed number; learned σ and
heteroscedastic noise are refused with a one-line error (their GGN has a noise block and, for heteroscedastic
noise, a second output: use structure="diag" or "full").

Costs for N points and layer widths (in_l, out_l): one forward and one backward pass, O(N d), and
O(N Σ_l (in_l² + out_l²)) for the sums; memory O(Σ_l (in_l² + out_l²)) plus one chunk of activations -- never
d × d and never a per-example Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..latent import BoundModel
from .autodiff import prior_curvature_diagonal, scale_depends_on_theta

__all__ = ["KronFactors", "KronPrecision", "LayerSignals", "kfac_factors", "kfac_curvature_term", "layer_signals",
           "check_kfac_model"]


@dataclass(frozen=True)
class LayerSignals:
    """Per layer l of the net at θ on N inputs: ``inputs[l]`` a_l [N, in_l] and ``grads[l]`` g_l = ∂f/∂z_l
    [N, out_l]. The mean's Jacobian for the layer's sites is J_n(w_l) = a_n ⊗ g_n (row-major), J_n(b_l) = g_n."""

    inputs: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class KronFactors:
    """The KFAC GGN of a data set at θ, as sums: per layer A_l = Σ_n a_n a_nᵀ [in_l, in_l] and
    B_l = Σ_n g_n g_nᵀ [out_l, out_l], the number of points N (``count``) and the noise variance σ².
    The GGN of layer l's weights is A_l ⊗ B_l / (N σ²), of its biases B_l / σ² (module docstring)."""

    A: tuple[torch.Tensor, ...]
    B: tuple[torch.Tensor, ...]
    count: int
    noise_var: float

    @property
    def widths(self) -> tuple[int, ...]:
        """(in_0, out_0 = in_1, ..., out_{L-1})."""
        return tuple(a.shape[0] for a in self.A) + (self.B[-1].shape[0],)

    def minus(self, other: "KronFactors") -> "KronFactors":
        """The factors of D \\ D_f from those of D (``self``) and of D_f (``other``), both at the same θ:
        A − A_f, B − B_f, N − N_f (exact: the sums are over disjoint sets of points)."""
        if not isinstance(other, KronFactors):
            raise TypeError(f"a KFAC down-date needs the forget set's KronFactors, got {type(other).__name__}")
        if other.widths != self.widths:
            raise ValueError(f"the forget set's factors are for widths {other.widths}, these for {self.widths}")
        if not other.count <= self.count:
            raise ValueError(f"cannot remove {other.count} points from factors of {self.count}")
        if abs(other.noise_var - self.noise_var) > 1e-12 * self.noise_var:
            raise ValueError(f"noise variances differ ({other.noise_var} vs {self.noise_var}): the factors "
                             "belong to different models")
        sym = lambda M: 0.5 * (M + M.T)  # noqa: E731
        return KronFactors(tuple(sym(a - b) for a, b in zip(self.A, other.A)),
                           tuple(sym(a - b) for a, b in zip(self.B, other.B)),
                           self.count - other.count, self.noise_var)


@dataclass(frozen=True)
class KronPrecision:
    """A Laplace precision in KFAC form (module docstring): the data's factor sums and, per layer, the prior
    precision τ_l of the weights and τ_{b,l} of the biases."""

    factors: KronFactors
    tau_w: tuple[float, ...]
    tau_b: tuple[float, ...]

    @classmethod
    def from_prior(cls, factors: KronFactors, prior_precision: torch.Tensor) -> "KronPrecision":
        """The factors plus the prior read off its curvature diagonal [d] (``prior_curvature_diagonal``), which
        must be constant over each site (an isotropic Gaussian prior per weight matrix and per bias vector, as
        the built-in MLP's: τ_l = 1/s_l², s_l = prior_scale or weight_scale/√in_l; τ_{b,l} = 1/bias_scale²)."""
        if not isinstance(factors, KronFactors):
            raise TypeError(f"factors must be KronFactors (kfac_factors), got {type(factors).__name__}")
        w = factors.widths
        prior_precision = torch.as_tensor(prior_precision, dtype=torch.float64).flatten()
        d = sum(p * q + q for p, q in zip(w[:-1], w[1:]))
        if len(prior_precision) != d:
            raise ValueError(f"prior_precision has {len(prior_precision)} entries; the MLP has {d} coordinates")
        tau_w, tau_b, start = [], [], 0
        for l, (p, q) in enumerate(zip(w[:-1], w[1:])):
            for name, part, out in ((f"w{l}", prior_precision[start:start + p * q], tau_w),
                                    (f"b{l}", prior_precision[start + p * q:start + p * q + q], tau_b)):
                if not torch.allclose(part, part[:1].expand_as(part), rtol=1e-10, atol=0.0):
                    raise ValueError(f"KFAC needs one prior precision per site; {name}'s ranges over "
                                     f"[{float(part.min()):.4g}, {float(part.max()):.4g}]")
                if not float(part[0]) > 0:
                    raise ValueError(f"KFAC needs a positive prior precision; {name}'s is {float(part[0]):.4g}")
                out.append(float(part[0]))
            start += p * q + q
        return cls(factors, tuple(tau_w), tuple(tau_b))

    def __sub__(self, term: KronFactors) -> "KronPrecision":
        """Λ − C for the forget set's factors C: the retained data's KFAC (:meth:`KronFactors.minus`), same prior."""
        if not isinstance(term, KronFactors):
            return NotImplemented
        return KronPrecision(self.factors.minus(term), self.tau_w, self.tau_b)


def check_kfac_model(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor) -> int:
    """The number of layers L of a model KFAC supports (module docstring); a one-line ``ValueError`` otherwise."""
    model = bound.model
    if not hasattr(model, "activations"):
        raise ValueError(f"KFAC needs an MLP with activations(sites, x) (the built-in BayesianMLP), got "
                         f"{type(model).__name__}: use structure='diag' or 'full'")
    if scale_depends_on_theta(bound, x[:1], theta):
        raise ValueError("KFAC supports a BayesianMLP with fixed noise (noise=<σ>) only; this model's noise scale "
                         "depends on θ (noise='learned' or 'heteroscedastic'): use structure='diag' or 'full'")
    names = bound.layout.names
    L = len(names) // 2
    expected = [n for l in range(L) for n in (f"w{l}", f"b{l}")]
    if names != expected:
        raise ValueError(f"KFAC needs latent sites exactly {expected or ['w0', 'b0']} in this order, got {names}")
    for s in bound.layout.sites:
        if s.shape != s.unconstrained_shape:
            raise ValueError(f"KFAC needs real-valued layer sites; {s.name!r} is constrained ({s.support})")
    shapes = {s.name: s.shape for s in bound.layout.sites}
    for l in range(L):
        w, b = shapes[f"w{l}"], shapes[f"b{l}"]
        if len(w) != 2 or b != (w[1],) or (l > 0 and w[0] != shapes[f"w{l - 1}"][1]):
            raise ValueError(f"KFAC needs w{l} [in, out] and b{l} [out] chaining layer to layer, got {w} and {b}")
    if shapes[f"w{L - 1}"][1] != 1:
        raise ValueError(f"KFAC supports a scalar output, got {shapes[f'w{L - 1}'][1]} outputs")
    return L


def layer_signals(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor) -> LayerSignals:
    """a_l and g_l = ∂f/∂z_l for every layer at θ on inputs x (float64): one forward pass
    (``model.activations``) and one backward pass of Σ_n f(x_n) to the pre-activations (rows are independent,
    so its gradient with respect to z_l[n] is ∂f(x_n)/∂z_l). Memory O(N Σ_l (in_l + out_l))."""
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    check_kfac_model(bound, x, theta)
    sites = {k: v.detach().requires_grad_(True) for k, v in bound.layout.unpack(theta).items()}
    with torch.enable_grad():
        acts = bound.model.activations(sites, x)
        grads = torch.autograd.grad(acts.output[:, 0].sum(), acts.preactivations)
    return LayerSignals(tuple(a.detach() for a in acts.inputs), tuple(g.detach() for g in grads))


def kfac_factors(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, chunk: int = 4096) -> KronFactors:
    """The KFAC factor sums of the data x at θ (module docstring), ``chunk`` points at a time: float64,
    memory O(Σ_l (in_l² + out_l²) + chunk · Σ_l (in_l + out_l)). The targets are not needed (a GGN)."""
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    theta = theta.detach().to(torch.float64)
    x = x.to(torch.float64)
    if len(x) == 0:
        raise ValueError("kfac_factors needs at least one data point")
    L = check_kfac_model(bound, x, theta)
    widths = [bound.layout.sites[2 * l].shape[0] for l in range(L)] + [1]
    A = [theta.new_zeros(p, p) for p in widths[:-1]]
    B = [theta.new_zeros(q, q) for q in widths[1:]]
    for start in range(0, len(x), chunk):
        s = layer_signals(bound, x[start:start + chunk], theta)
        for l in range(L):
            A[l] += s.inputs[l].T @ s.inputs[l]
            B[l] += s.grads[l].T @ s.grads[l]
    noise_var = float(bound.predictive_moments(theta, x[:1])[1][0])
    return KronFactors(tuple(0.5 * (a + a.T) for a in A), tuple(0.5 * (b + b.T) for b in B), len(x), noise_var)


def kfac_curvature_term(bound: BoundModel, x: torch.Tensor, theta: torch.Tensor, *, curvature: str = "ggn",
                        index: torch.Tensor | None = None, prior: bool = False) -> KronFactors | KronPrecision:
    """The curvature of the data x at θ in the "kron" form: the Laplace precision (``prior=True``: a
    :class:`KronPrecision`, the factors plus the prior read off ``prior_curvature_diagonal``) or a down-date's
    term (``prior=False``: the forget set's :class:`KronFactors`). KFAC is a GGN over every coordinate:
    ``curvature`` must be "ggn" and ``index`` None."""
    if curvature != "ggn":
        raise ValueError(f"structure='kron' is a Kronecker-factored GGN: use curvature='ggn', got {curvature!r}")
    if index is not None:
        raise ValueError("structure='kron' covers every coordinate of the MLP; it takes no active subset")
    theta, x = theta.detach().to(torch.float64), x.to(torch.float64)
    factors = kfac_factors(bound, x, theta)
    return KronPrecision.from_prior(factors, prior_curvature_diagonal(bound, x, theta)) if prior else factors
