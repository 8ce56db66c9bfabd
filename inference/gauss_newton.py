"""Levenberg–Marquardt (damped Gauss–Newton) minimisation of a negative log joint.

For a model with a Normal observation y_i ~ N(m_i(θ), s_i(θ)²) the objective

    L(θ) = −log p̃(θ) − Σ_i log p(y_i | x_i, θ)

has the generalised Gauss–Newton (GGN) curvature B(θ) = P(θ) + Aᵀ A, with A's rows ∇m_i / s_i (and
√2 ∇s_i / s_i when the scale depends on θ; see :mod:`inference.curvature`) and P the prior's
curvature (its diagonal, clamped at 0: exact for the element-wise priors of every built-in model).
Each iteration solves (Levenberg 1944; Marquardt 1963; Madsen, Nielsen & Tingleff 2004, §3.2)

    (B + μ I) Δ = −∇L(θ)

and accepts the step when the gain ratio ρ = (L(θ) − L(θ + Δ)) / (−∇Lᵀ Δ − ½ Δᵀ B Δ) > 0; μ follows
Nielsen's rule: after an accepted step μ ← μ · max(1/3, 1 − (2ρ − 1)³), after a rejected one
μ ← μ ν, ν ← 2ν. The gradient is exact (reverse-mode AD of L), so wherever it stops, ‖∇L‖ says how
far from a stationary point it is.

Solvers (``solver=``), chosen by ``"auto"`` from the number of rows M of A and d = dim θ:

    "dual"    M < d:  Woodbury with D = P + μI,
              (AᵀA + D)⁻¹ g = D⁻¹g − D⁻¹Aᵀ (I + A D⁻¹ Aᵀ)⁻¹ A D⁻¹ g     (an M × M solve)
    "primal"  M ≥ d ≤ ``max_dense``: B accumulated as Σ_chunks AᵀA (A never held whole), Cholesky
    "cg"      matrix-free: conjugate gradients on v ↦ Pv + Jᵀ W J v + μv with forward- and reverse-mode
              products over chunks of the data (memory O(chunk · d)), for d too large for a d × d matrix.

Per-example Jacobians come from ``torch.func.vmap(torch.func.grad(·))`` in chunks (O(N d)), so memory
stays bounded by the chunk size on the primal and CG paths.

Used by ``fit(..., method="laplace", optimizer="lm")`` (MAP from a cold start) and by the unlearning
method ``lm-refit`` (warm start at the old mode, on the retained data; DESIGN.md §4.5), where the first
iteration may reuse the down-dated precision the old posterior already holds (``first_curvature``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .curvature import _obs_params, prior_curvature_diagonal, scale_depends_on_theta, whitened_jacobian
from .latent import BoundModel

__all__ = ["NegLogJoint", "levenberg_marquardt", "LM_DEFAULTS"]

LM_DEFAULTS = {"max_iters": 200, "rtol": 1e-4, "gtol": 1e-6, "time_budget_s": None, "solver": "auto",
               "mu0": None, "tau": 1e-3, "chunk": 1024}


@dataclass
class NegLogJoint:
    """L(θ) = −log p̃(θ, D) on data (x, y) in float64, with the pieces LM needs."""

    bound: BoundModel
    x: torch.Tensor
    y: torch.Tensor
    chunk: int = 1024
    with_scale: bool | None = field(default=None)

    def __post_init__(self):
        self.x = self.x.to(torch.float64)
        self.y = self.y.to(torch.float64)
        self._grad = torch.func.grad(self._loss)
        self._prior_first: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prior_const: torch.Tensor | None = None

    def _loss(self, theta: torch.Tensor) -> torch.Tensor:
        return -self.bound.log_joint(theta, self.x, self.y)

    def value(self, theta: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self._loss(theta))

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        return self._grad(theta.detach().to(torch.float64))

    def prior_diag(self, theta: torch.Tensor) -> torch.Tensor:
        """diag of the prior's curvature, clamped at 0. Computed at the first two points asked for;
        when they agree (a Gaussian prior's curvature is constant) it is reused from then on."""
        if self._prior_const is not None:
            return self._prior_const
        p = prior_curvature_diagonal(self.bound, self.x[:1], theta).clamp_min(0.0)
        if self._prior_first is None:
            self._prior_first = (theta.clone(), p)
        elif not torch.equal(self._prior_first[0], theta):
            if torch.allclose(p, self._prior_first[1], rtol=1e-12, atol=0.0):
                self._prior_const = p
        return p

    def rows(self, theta: torch.Tensor) -> int:
        if self.with_scale is None:
            self.with_scale = scale_depends_on_theta(self.bound, self.x, theta)
        return len(self.x) * (2 if self.with_scale else 1)

    def jacobian(self, theta: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The whitened Jacobian A (G = AᵀA) of the points start:stop."""
        self.rows(theta)
        return whitened_jacobian(self.bound, self.x[start:stop], theta, None, self.with_scale, self.chunk)

    def ggn_matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """Σ_chunks AᵀA, [d, d], without holding all of A."""
        G = theta.new_zeros(len(theta), len(theta))
        for a in range(0, len(self.x), self.chunk):
            A = self.jacobian(theta, a, a + self.chunk)
            G += A.T @ A
        return 0.5 * (G + G.T)

    def ggn_vp(self, theta: torch.Tensor):
        """v ↦ G(θ) v by a forward-mode and a reverse-mode product per chunk (no Jacobian held)."""
        self.rows(theta)
        fns = [(_obs_params(self.bound, self.x[a:a + self.chunk])) for a in range(0, len(self.x), self.chunk)]

        def gvp(v: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(v)
            for fn in fns:
                (m, s), (dm, ds) = torch.func.jvp(fn, (theta,), (v,))
                _, vjp = torch.func.vjp(fn, theta)
                out += vjp((dm / s**2, (2.0 * ds / s**2) if self.with_scale else torch.zeros_like(ds)))[0]
            return out
        return gvp


def _cg(matvec, b: torch.Tensor, tol: float = 1e-8, max_iter: int = 500) -> tuple[torch.Tensor, int]:
    """Conjugate gradients for a symmetric positive definite operator."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    stop = tol**2 * rs
    for k in range(max_iter):
        if rs <= stop:
            return x, k
        Ap = matvec(p)
        alpha = rs / float(p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, max_iter


class _System:
    """(B + μI)Δ = −g at one θ, for any μ, with the products needed for the gain ratio."""

    def __init__(self, problem: NegLogJoint, theta: torch.Tensor, g: torch.Tensor, solver: str,
                 given: torch.Tensor | None = None):
        self.g, self.solver = g, solver
        if given is not None:
            self.solver, self.B = "given", given
            self.diag = torch.diagonal(given)
            return
        self.p = problem.prior_diag(theta)
        if solver == "dual":
            self.A = problem.jacobian(theta)
            self.diag = self.p + self.A.pow(2).sum(0)
        elif solver == "primal":
            self.B = problem.ggn_matrix(theta) + torch.diag(self.p)
            self.diag = torch.diagonal(self.B)
        else:
            self.gvp = problem.ggn_vp(theta)
            self.diag = self.p + 1.0  # only its scale is used (for μ0)

    def solve(self, mu: float) -> torch.Tensor:
        g = self.g
        if self.solver in ("primal", "given"):
            M = self.B + mu * torch.eye(len(g), dtype=g.dtype)
            L, info = torch.linalg.cholesky_ex(M)
            if int(info):
                return torch.full_like(g, float("nan"))
            return -torch.cholesky_solve(g[:, None], L)[:, 0]
        if self.solver == "dual":
            Dinv = 1.0 / (self.p + mu)
            A = self.A
            K = (A * Dinv) @ A.T
            K.diagonal().add_(1.0)
            u = Dinv * g
            w = torch.linalg.solve(K, A @ u)
            return -(u - Dinv * (A.T @ w))
        step, _ = _cg(lambda v: self.gvp(v) + (self.p + mu) * v, -g)
        return step

    def quad(self, step: torch.Tensor) -> float:
        """Δᵀ B Δ (without the damping)."""
        if self.solver in ("primal", "given"):
            return float(step @ (self.B @ step))
        if self.solver == "dual":
            return float((self.A @ step).pow(2).sum() + (self.p * step**2).sum())
        return float(step @ self.gvp(step) + (self.p * step**2).sum())


def choose_solver(solver: str, rows: int, d: int, max_dense: int = 6000) -> str:
    if solver not in ("auto", "dual", "primal", "cg"):
        raise ValueError(f"solver must be 'auto', 'dual', 'primal' or 'cg', got {solver!r}")
    if solver != "auto":
        return solver
    if rows < d and rows <= 8192:
        return "dual"
    return "primal" if d <= max_dense else "cg"


def levenberg_marquardt(problem: NegLogJoint, theta0: torch.Tensor, *, max_iters: int = 200, rtol: float = 1e-4,
                        gtol: float = 1e-6, time_budget_s: float | None = None, solver: str = "auto",
                        mu0: float | None = None, tau: float = 1e-3, chunk: int | None = None,
                        first_curvature: torch.Tensor | None = None, grad_scale: float | None = None) -> tuple[torch.Tensor, dict]:
    """Minimise ``problem`` from θ₀ by Levenberg–Marquardt; returns (θ, report).

    Stops when ‖∇L‖ ≤ max(gtol, rtol · grad_scale) (``grad_scale`` defaults to ‖∇L(θ₀)‖), after
    ``max_iters`` iterations, when ``time_budget_s`` is spent, or when no damping gives a decrease.
    ``first_curvature`` (a dense B at θ₀) replaces the first iteration's Jacobian. The initial damping
    is ``mu0``, or ``tau`` · max diag(B) (Nielsen's rule: τ ≈ 1e-3 from a cold start, smaller when θ₀ is
    believed good).
    The report holds the losses, gradient norms, gain ratios and damping of every iteration.
    """
    if max_iters < 0 or rtol < 0 or gtol < 0:
        raise ValueError(f"need max_iters, rtol, gtol >= 0 (got {max_iters}, {rtol}, {gtol})")
    if chunk is not None:
        problem.chunk = int(chunk)
    t0 = time.perf_counter()
    theta = theta0.detach().to(torch.float64).clone()
    L = problem.value(theta)
    if not math.isfinite(L):
        raise ValueError(f"the objective is {L} at the starting point; check the model and data")
    g = problem.grad(theta)
    g0 = float(g.norm())
    scale = g0 if grad_scale is None else float(grad_scale)
    target = max(gtol, rtol * scale)
    kind = choose_solver(solver, problem.rows(theta), len(theta))
    mu, nu = mu0, 2.0
    losses, gnorms, gains, mus = [L], [g0], [], []
    stop, jac_evals, value_evals = "max_iters", 0, 1
    for it in range(max_iters):
        if float(g.norm()) <= target:
            stop = "converged"
            break
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            stop = "time_budget"
            break
        given = first_curvature if (it == 0 and first_curvature is not None) else None
        system = _System(problem, theta, g, kind, given)
        jac_evals += given is None
        if mu is None:
            mu = tau * float(system.diag.max())
        accepted = False
        for _ in range(40):
            step = system.solve(mu)
            if torch.isfinite(step).all():
                pred = -float(g @ step) - 0.5 * system.quad(step)
                L_new = problem.value(theta + step)
                value_evals += 1
                rho = (L - L_new) / pred if pred > 0 else -1.0
                if math.isfinite(L_new) and rho > 0:
                    accepted = True
                    break
            mu *= nu
            nu *= 2.0
        if not accepted:
            stop = "no_decrease"
            break
        theta = theta + step
        L = L_new
        mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        nu = 2.0
        g = problem.grad(theta)
        losses.append(L)
        gnorms.append(float(g.norm()))
        gains.append(rho)
        mus.append(mu)
    else:
        if float(g.norm()) <= target:
            stop = "converged"
    report = {"iterations": len(gains), "stop": stop, "converged": stop == "converged", "losses": losses,
              "grad_norms": gnorms, "gain_ratios": gains, "damping": mus, "solver": kind,
              "grad_norm": float(g.norm()), "grad_norm_start": g0, "grad_target": target,
              "jacobian_evals": jac_evals, "value_evals": value_evals, "wall_time_s": time.perf_counter() - t0}
    return theta, report
