"""Laplace approximation (MacKay, 1992; Daxberger et al., "Laplace Redux", NeurIPS 2021).

Find the mode of the log joint in unconstrained space and expand to second order there:

    θ* = argmax_θ log p̃(θ, D),    q(θ|D) = N(θ*, Λ⁻¹),    Λ = -∇² log p̃(θ*, D).

The mode is found with Pyro's ``AutoLaplaceApproximation`` (an ``AutoDelta``-like guide trained by
SVI), then polished with L-BFGS in float64 so that the Hessian is taken at a true stationary point.

Curvature choices (``curvature=``, ``structure=``):

    "exact"  Λ = -∇² log p̃(θ*, D)                     dense, O(d) reverse passes (d ≲ a few thousand)
    "ggn"    Λ = -∇² log p̃(θ*) + G(θ*)                PSD likelihood part (see inference.curvature)
             structure "full" | "diag" | "last-layer" (only the output layer is stochastic; the
             other weights stay at θ*, as in last-layer Laplace)

The exact Hessian of a non-convex net can be indefinite at the fitted mode (seen here on a tanh
BNN, and Pyro issue #3182, where ``laplace_approximation()`` fails in Cholesky). This is never
repaired silently: :class:`NotPositiveDefiniteError` reports the smallest eigenvalue and the count
of non-positive ones; ``repair="clip"`` (eigenvalues raised to ``floor``) or ``repair="damp"``
(Λ + δI with the least δ from a doubling sequence that makes it PD) fixes it and records so in
``meta['repair']``.
"""

from __future__ import annotations

import time

import pyro
import torch
from pyro.infer.autoguide import AutoLaplaceApproximation
from pyro.infer.autoguide.initialization import init_to_value

from .curvature import ggn, ggn_diagonal, hessian, prior_curvature, prior_curvature_diagonal
from .latent import BoundModel
from .svi import optimise_elbo

__all__ = ["NotPositiveDefiniteError", "find_map", "find_map_lm", "prior_draw", "laplace_fields",
           "check_and_repair_precision", "check_and_repair_diagonal", "lbfgs_maximise"]


class NotPositiveDefiniteError(ValueError):
    """A precision matrix that should be positive definite is not."""


def find_map(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, num_steps: int = 3000,
             lr: float = 0.01, init_loc: torch.Tensor | None = None, lbfgs_steps: int = 5000,
             progress: bool = True, **options) -> tuple[torch.Tensor, dict]:
    """θ* by SVI on ``AutoLaplaceApproximation`` then float64 L-BFGS; returns (θ* in float64, report).

    L-BFGS runs until the largest gradient entry is below 1e-7 or ``lbfgs_steps`` iterations: the
    Laplace approximation and every down-date assume ∇ log p(θ*, D) = 0. Measured on the default
    1-32-32-1 BNN (n = 300): 200 iterations left ‖∇‖ = 584 (larger than the forget set's own
    gradient, 225), 1000 left 3.3, 3000 reached 2e-4 (10.7 s for the whole fit)."""
    t0 = time.perf_counter()
    options.setdefault("window", 100)
    options.setdefault("max_plateaus", 4)
    with torch.random.fork_rng(devices=[]), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        kw = {}
        if init_loc is not None:
            kw["init_loc_fn"] = init_to_value(values={k: v.detach() for k, v in bound.layout.unpack(init_loc).items()})
        guide = AutoLaplaceApproximation(bound.model, **kw)
        report = optimise_elbo(bound.model, guide, (x, y), num_steps=num_steps, lr=lr, progress=progress,
                               desc="MAP", **options)
        theta = guide.loc.detach().to(torch.float64).clone()
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    if lbfgs_steps > 0:
        theta = lbfgs_maximise(lambda t: bound.log_joint(t, x64, y64), theta, lbfgs_steps)
        if not torch.isfinite(theta).all():
            raise RuntimeError("L-BFGS polishing of the MAP produced non-finite values; try lbfgs_steps=0")
    with torch.enable_grad():
        t = theta.clone().requires_grad_(True)
        grad = torch.autograd.grad(bound.log_joint(t, x64, y64), t)[0]
    report["grad_norm_at_map"] = float(grad.norm())
    report["optimizer"] = "adam-lbfgs"
    report["wall_time_s"] = time.perf_counter() - t0
    return theta, report


def prior_draw(bound: BoundModel, x: torch.Tensor, seed: int) -> torch.Tensor:
    """θ drawn from the model's prior (seeded, the global RNG untouched), packed in the layout's order."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        tr = pyro.poutine.trace(pyro.poutine.block(bound.model, hide_types=["param"])).get_trace(x, None)
        return bound.layout.pack({n: tr.nodes[n]["value"] for n in bound.layout.names})


def find_map_lm(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                init_loc: torch.Tensor | None = None, max_iters: int = 200, gtol: float = 1e-3,
                lbfgs_steps: int = 5000, damping: str = "marquardt", solver: str = "auto",
                lbfgs_round: int = 100, lm_block: int = 25, qn_steps: int = 500) -> tuple[torch.Tensor, dict]:
    """θ* to ‖∇ log p̃(θ, D)‖ ≤ ``gtol`` from ``init_loc`` or a prior draw (seeded), in three phases; needs a
    Normal observation (the GGN):

    1. Levenberg–Marquardt (:mod:`inference.gauss_newton`, ``damping``, ``solver``) in blocks of ``lm_block``
       iterations, at most ``max_iters``; a block that does not cut ‖∇‖ ten-fold is Gauss–Newton's linear
       tail and ends the phase;
    2. :func:`~inference.gauss_newton.ggn_lbfgs` (L-BFGS on top of the damped inverse GGN), at most
       ``qn_steps`` iterations;
    3. if still above ``gtol``, plain float64 L-BFGS in rounds of ``lbfgs_round`` (at most ``lbfgs_steps``).

    Why: ``damping="marquardt"`` (D = diag of the GGN + prior) reached ‖∇‖ = 0.07 in 400 iterations on the
    default BNN (N = 300, seed 0, from a prior draw) where D = I stalled at 8.5; but Gauss–Newton ignores
    the residual curvature Σ rᵢ∇²mᵢ/σ², which nearly cancels the prior's curvature in the directions the
    data leave free, so its tail is linear (see ``ggn_lbfgs``). Phase 2 learns that curvature from gradient
    differences while the GGN handles the stiff, data-determined directions (N = 300, seed 0: 4.5 s of LM
    + 8 s of phase 2 to ‖∇‖ = 6e-4, against 22 s with plain L-BFGS as the tail). Far from a fit the
    residuals are large and the GGN a poor model: at N = 10k, from a prior draw, 100 LM iterations
    (200 s) reached a loss L-BFGS reaches in 500 iterations (15 s); see benchmarks/lm_map.py."""
    from .gauss_newton import NegLogJoint, ggn_lbfgs, levenberg_marquardt

    t0 = time.perf_counter()
    if init_loc is None:
        init_loc = prior_draw(bound, x, seed)
    problem = NegLogJoint(bound, x, y)
    theta, mu, its, stop, losses = init_loc.to(torch.float64), None, 0, "max_iters", []
    gnorm = float("inf")
    while its < max_iters:
        # blocks of ``lm_block`` iterations; a block that does not cut ‖∇‖ ten-fold is the linear tail
        theta, rep = levenberg_marquardt(problem, theta, max_iters=min(lm_block, max_iters - its), rtol=0.0,
                                         gtol=gtol, damping=damping, solver=solver, mu0=mu)
        its += rep["iterations"]
        losses += rep["losses"] if not losses else rep["losses"][1:]
        mu = rep["damping"][-1] if rep["damping"] else mu
        gnorm, stop = rep["grad_norm"], rep["stop"]
        if rep["converged"] or stop != "max_iters":
            break
        if rep["grad_norm"] > 0.1 * rep["grad_norm_start"]:
            stop = "linear tail (handed to L-BFGS)"
            break
    t_lm = time.perf_counter() - t0
    lm_gnorm = gnorm
    qn = {"iterations": 0, "stop": None}
    if gnorm > gtol and qn_steps > 0:
        # the tail: L-BFGS on top of the (damped) inverse GGN, which learns the residual curvature GN ignores
        cand, qn = ggn_lbfgs(problem, theta, max_iters=qn_steps, gtol=gtol, solver=solver)
        if qn["grad_norm"] < gnorm and torch.isfinite(cand).all():
            theta, gnorm = cand, qn["grad_norm"]
            losses.append(qn["loss"])
    done = 0
    if lbfgs_steps > 0 and gnorm > gtol:  # last resort, plain float64 L-BFGS in rounds
        before = gnorm
        theta, gnorm, done = lbfgs_rounds(lambda t: bound.log_joint(t, problem.x, problem.y),
                                          lambda t: float(problem.grad(t).norm()), theta, lbfgs_steps,
                                          round_steps=lbfgs_round, gtol=gtol, g0=gnorm)
        if gnorm < before:
            losses.append(problem.value(theta))
    report = {"steps": its + qn["iterations"] + done, "converged": gnorm <= gtol, "grad_norm_at_map": gnorm,
              "losses": losses, "elbo": None, "batch_size": None, "optimizer": "lm",
              "lm": {"iterations": its, "stop": stop, "solver": rep["solver"], "damping": damping,
                     "grad_norm": lm_gnorm, "time_s": t_lm, "ggn_lbfgs_iterations": qn["iterations"],
                     "ggn_lbfgs_stop": qn["stop"], "lbfgs_iterations": done},
              "wall_time_s": time.perf_counter() - t0}
    return theta, report


def lbfgs_rounds(objective, grad_norm, theta: torch.Tensor, max_steps: int, *, round_steps: int = 50,
                 gtol: float = 0.0, g0: float | None = None,
                 time_budget_s: float | None = None) -> tuple[torch.Tensor, float, int]:
    """argmax of ``objective`` by float64 L-BFGS in rounds of ``round_steps`` iterations, each continuing
    from where the last stopped, until ``grad_norm`` ≤ ``gtol``, ``max_steps`` or the time budget. L-BFGS's
    gradient norm is not monotone, so the iterate with the smallest one is kept: (θ, ‖∇‖, iterations)."""
    t0 = time.perf_counter()
    best, best_g = theta, (grad_norm(theta) if g0 is None else g0)
    current, done = theta, 0
    while done < max_steps and best_g > gtol:
        k = min(round_steps, max_steps - done)
        current = lbfgs_maximise(objective, current, k)
        done += k
        if not torch.isfinite(current).all():
            break
        g = grad_norm(current)
        if g < best_g:
            best, best_g = current, g
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
    return best, best_g, done


def lbfgs_maximise(objective, theta: torch.Tensor, max_iter: int = 200) -> torch.Tensor:
    """argmax of a scalar objective by float64 L-BFGS with strong-Wolfe line search, from θ."""
    theta = theta.detach().to(torch.float64).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -objective(theta)
        loss.backward()
        return loss
    opt.step(closure)
    return theta.detach()


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


def laplace_fields(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, *,
                   curvature: str = "exact", structure: str = "full", subset: list[str] | None = None,
                   repair: str | None = None, floor: float | None = None) -> tuple[dict, dict]:
    """Posterior fields of N(θ*, Λ⁻¹) for the chosen curvature/structure, plus facts for ``meta``."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    if curvature not in ("exact", "ggn"):
        raise ValueError(f"curvature must be 'exact' or 'ggn', got {curvature!r}")
    if structure not in ("full", "diag", "last-layer"):
        raise ValueError(f"structure must be 'full', 'diag' or 'last-layer', got {structure!r}")
    if curvature == "exact" and structure != "full":
        raise ValueError("curvature='exact' supports structure='full' only; use curvature='ggn' for "
                         "'diag' or 'last-layer'")
    t0 = time.perf_counter()
    facts: dict = {"curvature": curvature, "structure": structure}
    if structure == "diag":
        d = prior_curvature_diagonal(bound, x64, theta) + ggn_diagonal(bound, x64, theta)
        d, pd = check_and_repair_diagonal(d, repair, floor)
        facts.update(pd)
        facts["curvature_time_s"] = time.perf_counter() - t0
        return {"loc": theta, "scale": d.rsqrt()}, facts
    index = None
    if structure == "last-layer":
        names = subset or list(getattr(bound.model, "last_layer_sites", ()) or ())
        if not names:
            raise ValueError("structure='last-layer' needs subset=[site names] for a model without "
                             "a last_layer_sites attribute")
        unknown = set(names) - set(bound.layout.names)
        if unknown:
            raise ValueError(f"subset names {sorted(unknown)} are not latent sites of the model "
                             f"({bound.layout.names})")
        sl = bound.layout.slices()
        index = torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in names])
        facts["subset"] = list(names)
    if curvature == "exact":
        prec = -hessian(lambda t: bound.log_joint(t, x64, y64), theta)
    else:
        prec = prior_curvature(bound, x64, theta, index) + ggn(bound, x64, theta, index)
    prec, pd = check_and_repair_precision(prec, repair, floor)
    facts.update(pd)
    facts["curvature_time_s"] = time.perf_counter() - t0
    fields = {"loc": theta, "precision": prec}
    if index is not None:
        fields["active"] = index
    return fields, facts


def example_gradient_norms(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor,
                           chunk: int = 1024) -> torch.Tensor:
    """‖∇_θ log p(y_i | x_i, θ)‖ per training point [N], the scale against which a MAP's leftover gradient is
    judged: forgetting k points moves the gradient by about k × the typical norm (aligned points) or √k × it
    (random ones), so a MAP with ‖∇ log p(θ, D)‖ of that size is as far from a mode as the deletion itself.

    For a Normal observation with θ-free scale, ∇ℓ_i = (y_i − m_i) / s_i² ∇m_i from per-example Jacobians;
    otherwise per-example gradients by ``vmap(grad)``. Either way ``chunk`` points at a time: O(N d) time,
    O(chunk · d) memory."""
    from .curvature import per_example_jacobians

    theta, x, y = theta.detach().double(), x.double(), y.double()

    def one(t: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return bound.log_likelihood(t, xi[None], yi[None]).sum()

    def norms(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        try:
            J, Js, m, s = per_example_jacobians(bound, xs, theta)
            if Js is None:
                return ((ys - m) / s**2).abs() * J.norm(dim=1)
        except NotImplementedError:  # not a Normal observation
            pass
        return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(theta, xs, ys).norm(dim=1)

    return torch.cat([norms(x[a:a + chunk], y[a:a + chunk]) for a in range(0, len(x), chunk)])


def median_example_gradient_norm(bound: BoundModel, x: torch.Tensor, y: torch.Tensor,
                                 theta: torch.Tensor) -> float | None:
    """The median of :func:`example_gradient_norms`, or None for a model whose per-example gradients
    cannot be batched (the scale is then simply not reported)."""
    try:
        return float(example_gradient_norms(bound, x, y, theta).median())
    except Exception:  # noqa: BLE001
        return None
