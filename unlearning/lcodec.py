"""L-CODEC unlearning (Mehta, Pal, Singh & Ravi, CVPR 2022): a Newton step on a selected parameter subset.

1. Perturb each forget input with Gaussian noise (``num_perturb`` copies, default 100, but at most
   ``max_samples`` = 1000 perturbed inputs in all, at least 2 per point; std ``perturb_scale`` = 0.1
   times the per-feature std of the training inputs), and record for each perturbed input its loss
   −ℓ(θ*; x̃, y_f) and the activations of every neuron of the BayesianMLP (hidden units after φ,
   and the output units: ``BayesianMLP.activations(sites, x).units``).
2. Select neurons by greedy FOCI (Azadkia & Chatterjee, 2021) of the loss on the activations: the
   neuron maximising the CODEC coefficient T_n(loss, a_j | a_S) is added to S until that maximum
   is ≤ 0. ``scope="global"`` (default) runs one FOCI over all neurons of all layers, so a neuron
   is kept only if it carries information about the loss beyond the neurons already selected;
   for scalar regression the loss is a function of the output unit (for one forget point), so it
   often selects the output layer only. ``scope="layer"`` runs FOCI per layer.
3. Map each selected neuron j of layer l to its incoming weights w_l[:, j] and its bias b_l[j].
4. Take the Newton step of Sekhari et al. (2021) on that subset P only,
   Δ_P = −H_PP⁻¹ g_P, with g = ∇L_r(θ*) and H_PP the exact Hessian of the retained loss L_r
   restricted to P (a correct sub-Hessian, not the authors' rank-1 finite difference); the
   other coordinates are unchanged. A non-positive-definite H_PP is repaired by eigenvalue clipping
   (warned). With ``epsilon`` given, Gaussian noise N(0, σ² I_P) is added to the selected
   coordinates, σ = s · √(2 ln(1.25/δ)) / ε, s = ``sensitivity`` or by default the Newton
   residual bound M̂ ‖Δ_P‖² / (2 λ_min(H_PP)) (the quadratic-convergence bound that the Sekhari et
   al. calibration rests on, with M̂ the Hessian-Lipschitz estimate of :mod:`.cubic`); this is only
   a heuristic (ε, δ) calibration for non-convex nets.

The covariance follows the Laplace down-date as in :mod:`.newton`.
"""

from __future__ import annotations

import math

import torch

from ..inference.posterior import Posterior

from .base import ForgetSet, register
from .cubic import estimate_hessian_lipschitz
from .newton import point_update_result, retained_loss

__all__ = ["codec", "foci"]


def _ranks_le(y: torch.Tensor) -> torch.Tensor:
    """R_i = #{j : y_j ≤ y_i}."""
    return (y[None, :] <= y[:, None]).sum(1).to(torch.float64)


def _nearest(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Index of each row's nearest neighbour among the other rows (ties broken at random)."""
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    dmin = d.min(1, keepdim=True).values
    ties = (d <= dmin).to(torch.float64)
    r = torch.rand(d.shape, generator=gen, dtype=torch.float64) * ties
    return r.argmax(1)


def _as2d(z: torch.Tensor) -> torch.Tensor:
    z = torch.as_tensor(z, dtype=torch.float64)
    return z[:, None] if z.dim() == 1 else z


def codec(y, z, x=None, seed: int = 0) -> float:
    """The Azadkia-Chatterjee coefficient T_n(Y, Z) or, with ``x``, T_n(Y, Z | X).

    Unconditional: T_n = Σ_i (n min(R_i, R_M(i)) − L_i²) / Σ_i L_i (n − L_i), with R_i = #{j: Y_j ≤ Y_i},
    L_i = #{j: Y_j ≥ Y_i} and M(i) the nearest neighbour of Z_i. Conditional:
    T_n = Σ_i (min(R_i, R_M(i)) − min(R_i, R_N(i))) / Σ_i (R_i − min(R_i, R_N(i))), with N(i) the
    nearest neighbour of X_i and M(i) that of (X_i, Z_i). Tends to 0 iff Y ⟂ Z (| X) and to 1 iff Y
    is a measurable function of Z (and X). Ties between neighbours are broken at random (``seed``).
    """
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    z = _as2d(z)
    n = len(y)
    if n < 2 or len(z) != n:
        raise ValueError(f"codec needs at least 2 paired observations, got y {tuple(y.shape)}, z {tuple(z.shape)}")
    gen = torch.Generator().manual_seed(seed)
    R = _ranks_le(y)
    if x is None:
        L = (y[None, :] >= y[:, None]).sum(1).to(torch.float64)
        M = _nearest(z, gen)
        den = float((L * (n - L)).sum())
        if den == 0:
            return 0.0  # constant Y
        return float((n * torch.minimum(R, R[M]) - L**2).sum()) / den
    x = _as2d(x)
    N = _nearest(x, gen)
    M = _nearest(torch.cat([x, z], 1), gen)
    den = float((R - torch.minimum(R, R[N])).sum())
    if den == 0:
        return 0.0  # Y is already a function of X
    return float((torch.minimum(R, R[M]) - torch.minimum(R, R[N])).sum()) / den


def _standardise(X: torch.Tensor) -> torch.Tensor:
    s = X.std(0, unbiased=False)
    return (X - X.mean(0)) / torch.where(s > 0, s, torch.ones_like(s))


def foci(y, X, seed: int = 0, max_features: int | None = None) -> list[int]:
    """Greedy FOCI (Azadkia & Chatterjee 2021): column indices of X in the order selected.

    Adds the column j maximising T_n(Y, X_j | X_S) (T_n(Y, X_j) for the first) and stops when that
    maximum is ≤ 0 (no remaining column adds information about Y), or at ``max_features``.
    Columns are standardised first (nearest neighbours are Euclidean).
    """
    X = _standardise(_as2d(X))
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    p = X.shape[1]
    limit = p if max_features is None else min(p, int(max_features))
    chosen: list[int] = []
    while len(chosen) < limit:
        cond = X[:, chosen] if chosen else None
        best, best_j = -math.inf, None
        for j in range(p):
            if j in chosen:
                continue
            t = codec(y, X[:, j], cond, seed=seed + j)
            if t > best:
                best, best_j = t, j
        if best_j is None or best <= 0:
            break
        chosen.append(best_j)
    return chosen


@register("lcodec", "L-CODEC (Mehta et al. 2022): FOCI/CODEC neuron selection under input perturbation, then "
          "the Newton step with the exact sub-Hessian on the selected weights only (optional (ε,δ) noise)",
          models=("BayesianMLP",))
def lcodec(old: Posterior, fs: ForgetSet, *, seed: int = 0, progress: bool = False, num_perturb: int = 100,
           perturb_scale: float = 0.1, max_samples: int = 1000, scope: str = "global",
           epsilon: float | None = None, delta: float = 1e-5,
           sensitivity: float | None = None, max_dim: int = 5000) -> dict:
    model = old.model
    if not hasattr(model, "activations"):
        raise ValueError("lcodec needs per-neuron activations (model.activations(sites, x)) and supports the built-in "
                         f"BayesianMLP only, got {type(model).__name__}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if int(num_perturb) < 2 or not perturb_scale > 0:
        raise ValueError("num_perturb must be >= 2 and perturb_scale > 0")
    if epsilon is not None and not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon!r}, {delta!r}")
    theta = old.loc.detach().to(torch.float64)
    if len(theta) > max_dim:
        raise ValueError(f"the model has {len(theta)} coordinates, more than max_dim={max_dim}")
    bound = old.bound_model()
    sites = bound.layout.unpack(theta)
    slices = bound.layout.slices()
    gen = torch.Generator().manual_seed(seed)
    # 1. perturbed forget inputs, their losses and activations
    xf, yf = fs.x_forget.to(torch.float64), fs.y_forget.to(torch.float64)
    xall = old.x.to(torch.float64)
    sd = xall.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    # FOCI costs O(n²) per CODEC evaluation: cap the total number of perturbed inputs
    k = max(2, min(int(num_perturb), int(max_samples) // len(xf)))
    xp = xf.repeat_interleave(k, 0)
    yp = yf.repeat_interleave(k, 0)
    xp = xp + perturb_scale * sd * torch.randn(xp.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        loss = -bound.log_likelihood(theta, xp, yp)
        acts = model.activations(sites, xp).units
    # 2. FOCI neuron selection
    neurons = [(l, j) for l, a in enumerate(acts) for j in range(a.shape[1])]
    selected: list[tuple[int, int]] = []
    if scope == "global":
        A = torch.cat(acts, 1)
        selected = [neurons[i] for i in foci(loss, A, seed=seed)]
    else:
        for l, a in enumerate(acts):
            selected += [(l, j) for j in foci(loss, a, seed=seed)]
    # 3. neurons -> coordinates of θ (incoming weight column and bias)
    mask = torch.zeros(len(theta), dtype=torch.bool)
    counts: dict[str, int] = {}
    for l, j in sorted(selected):
        for name, part in ((f"w{l}", (slice(None), j)), (f"b{l}", (j,))):
            sl = slices[name]
            block = torch.zeros(sites[name].shape, dtype=torch.bool)
            block[part] = True
            mask[sl] |= block.flatten()
    for name, sl in slices.items():
        c = int(mask[sl].sum())
        if c:
            counts[name] = c
    P = torch.nonzero(mask).flatten()
    warnings: list[str] = []
    f = retained_loss(old, fs)
    g = torch.func.grad(f)(theta)
    facts: dict = {"selected_neurons": [{"layer": l, "unit": j} for l, j in sorted(selected)],
                   "selected_counts": counts, "num_selected": len(P), "scope": scope,
                   "num_perturbed_inputs": len(xp)}
    if len(P) == 0:
        warnings.append("FOCI selected no neuron: no parameter is updated")
        return point_update_result(old, fs, f, theta, g, torch.zeros_like(theta), facts, warnings)

    # 4. Newton step on P with the exact sub-Hessian of L_r
    def f_sub(sub: torch.Tensor) -> torch.Tensor:
        return f(theta.index_put((P,), sub))
    from ..inference.curvature import hessian
    H = hessian(f_sub, theta[P])
    ev, V = torch.linalg.eigh(H)
    facts["sub_hessian_lambda_min"] = float(ev[0])
    if ev[0] <= 0:
        floor = 1e-6 * float(ev.abs().max())
        warnings.append(f"the sub-Hessian H_PP is not positive definite (λ_min = {float(ev[0]):.4g}); its "
                        f"eigenvalues were clipped at {floor:.3g}")
        ev = ev.clamp_min(floor)
    sub_step = -V @ ((V.T @ g[P]) / ev)
    step = torch.zeros_like(theta)
    step[P] = sub_step
    if epsilon is not None:
        if sensitivity is None:
            Mh = estimate_hessian_lipschitz(f, theta, g, hessian(f, theta)) if len(theta) <= max_dim else 0.0
            sensitivity = Mh * float(sub_step.norm()) ** 2 / (2.0 * float(ev[0]))
        sigma = float(sensitivity) * math.sqrt(2.0 * math.log(1.25 / delta)) / float(epsilon)
        step[P] += sigma * torch.randn(len(P), generator=gen, dtype=torch.float64)
        facts.update({"noise_sigma": sigma, "sensitivity": float(sensitivity), "epsilon": float(epsilon),
                      "delta": float(delta)})
    return point_update_result(old, fs, f, theta, g, step, facts, warnings)
