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

One place computes curvature, :func:`curvature_term`: "the curvature of this data at θ in this
structure's form" (dense [k, k] or diagonal [k], :data:`CURVATURE_FORMS`), with the prior for the
Laplace precision Λ (:func:`laplace_covariance`) and without it for the forget set's H_f of the
Laplace down-date (``unlearning.laplace``). The covariance class the ``structure=`` option names
(:data:`LAPLACE_STRUCTURES`) builds itself from Λ with ``from_curvature``.

The exact Hessian of a non-convex net can be indefinite at the fitted mode (seen here on a tanh
BNN, and Pyro issue #3182, where ``laplace_approximation()`` fails in Cholesky). This is never
repaired silently: :class:`NotPositiveDefiniteError` reports the smallest eigenvalue and the count
of non-positive ones; ``repair="clip"`` (eigenvalues raised to ``floor``) or ``repair="damp"``
(Λ + δI) fixes it and records so in ``meta['curvature']['repair']``
(:mod:`inference.covariance.repair`, re-exported here).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pyro
import torch
from pyro.infer.autoguide import AutoLaplaceApproximation
from pyro.infer.autoguide.initialization import init_to_value

from .covariance import (Covariance, Diag, NotPositiveDefiniteError, Precision, check_and_repair_diagonal,
                         check_and_repair_precision)
from .covariance.kron import Kron
from .curvature import (ggn, ggn_diagonal, hessian, hessian_diagonal, kfac_curvature_term, prior_curvature,
                        prior_curvature_diagonal)
from ..models.validation import seeded_generator, sub_seed
from .latent import BoundModel
from .svi import optimise_elbo

__all__ = ["NotPositiveDefiniteError", "find_map", "find_map_lm", "continuation_sizes", "prior_draw", "laplace_covariance", "curvature_term",
           "CURVATURE_FORMS", "LAPLACE_STRUCTURES", "check_and_repair_precision", "check_and_repair_diagonal",
           "lbfgs_maximise", "lbfgs_rounds", "example_gradient_norms", "median_example_gradient_norm"]


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


def continuation_sizes(n: int, start: int | None, factor: float = 2.0) -> list[int]:
    """The nested subsample sizes of :func:`find_map_lm`'s data continuation: ``start``, ``start · factor``, …,
    ``n`` (a stage that would be within 1.25× of ``n`` is dropped); ``[n]`` (no continuation) when ``start``
    is None or 0 or ``n < 2 · start``."""
    if not start or n < 2 * start:
        return [n]
    if not factor > 1.0:
        raise ValueError(f"continuation_factor must be > 1, got {factor!r}")
    sizes, k = [], float(start)
    while k * 1.25 < n:
        sizes.append(int(k))
        k *= factor
    return sizes + [n]


def _lm_blocks(problem, theta: torch.Tensor, *, max_iters: int, gtol: float, damping: str, solver: str,
               lm_block: int) -> tuple[torch.Tensor, dict]:
    """Levenberg–Marquardt in blocks of ``lm_block`` iterations until ‖∇‖ ≤ ``gtol``, at most ``max_iters``; a
    block that does not cut ‖∇‖ ten-fold is Gauss–Newton's linear tail and ends the phase."""
    from .gauss_newton import levenberg_marquardt

    its, mu, losses, g0, rep = 0, None, [], None, None
    stop, gnorm = "max_iters", float("inf")
    while its < max_iters:
        theta, rep = levenberg_marquardt(problem, theta, max_iters=min(lm_block, max_iters - its), rtol=0.0,
                                         gtol=gtol, damping=damping, solver=solver, mu0=mu)
        if g0 is None:
            g0 = rep["grad_norm_start"]
        its += rep["iterations"]
        losses += rep["losses"] if not losses else rep["losses"][1:]
        mu = rep["damping"][-1] if rep["damping"] else mu
        gnorm, stop = rep["grad_norm"], rep["stop"]
        if stop != "max_iters":
            break
        if rep["grad_norm"] > 0.1 * rep["grad_norm_start"]:
            stop = "linear tail (handed to L-BFGS)"
            break
    return theta, {"iterations": its, "stop": stop, "grad_norm": gnorm, "grad_norm_start": g0, "losses": losses,
                   "solver": rep["solver"] if rep else None}


def find_map_lm(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                init_loc: torch.Tensor | None = None, max_iters: int = 200, gtol: float = 1e-3,
                lbfgs_steps: int = 5000, damping: str = "marquardt", solver: str = "auto",
                lbfgs_round: int = 100, lm_block: int = 25, qn_steps: int = 500,
                continuation: int | None = 512, continuation_factor: float = 2.0,
                stage_gtol: float = 1.0, stage_qn_steps: int = 200, rounds: int = 4) -> tuple[torch.Tensor, dict]:
    """θ* to ‖∇ log p̃(θ, D)‖ ≤ ``gtol`` from ``init_loc`` or a prior draw (seeded); needs a Normal
    observation (the GGN).

    0. **Data continuation** (from a prior draw only, when N ≥ 2 · ``continuation``): the same search on
       nested random subsamples of ``continuation``, ``continuation · continuation_factor``, … points
       (seeded), each stage warm-started at the last one's result and run through phases 1–2 below (two
       rounds, at most ``stage_qn_steps`` ``ggn_lbfgs`` iterations) to ‖∇‖ ≤ ``stage_gtol``; then phases 1–3
       on all the data. The sample-size schedule of Byrd, Chin, Nocedal & Wu (Math. Program. 2012) in its
       simplest, deterministic form: the mode of k points is a warm start for 2k points, so the expensive
       passes over all N points start inside the basin. Measured on the default BNN (seeds 0–4, one thread,
       machine loaded; benchmarks/lm_map.py): N = 10k, ‖∇‖ = 8.7e-4 [4.7e-4, 9.7e-4] in 122 s [74, 264];
       N = 50k, 6.9e-4 [3.4e-4, 9.5e-4] in 746 s [432, 1044]; without continuation, from the prior draw, the
       phases stalled at ‖∇‖ = 37 at N = 10k (102 s, one run) and Adam + L-BFGS at 47 (168 s, one run).
    1. Levenberg–Marquardt (:mod:`inference.gauss_newton`, ``damping``, ``solver``) in blocks of ``lm_block``
       iterations, at most ``max_iters``; a block that does not cut ‖∇‖ ten-fold is Gauss–Newton's linear
       tail and ends the phase;
    2. :func:`~inference.gauss_newton.ggn_lbfgs` (L-BFGS on top of the damped inverse GGN), at most
       ``qn_steps`` iterations;
       Phases 1 and 2 are repeated (up to ``rounds`` times, on the stages twice) while ``ggn_lbfgs`` lowers
       the loss without reaching ``gtol`` (see ``_phases``: LM can stop where the Hessian is indefinite);
    3. if still above ``gtol``, plain float64 L-BFGS in rounds of ``lbfgs_round`` (at most ``lbfgs_steps``).

    Why: ``damping="marquardt"`` (D = diag of the GGN + prior) reached ‖∇‖ = 0.07 in 400 iterations on the
    default BNN (N = 300, seed 0, from a prior draw) where D = I stalled at 8.5; but Gauss–Newton ignores
    the residual curvature Σ rᵢ∇²mᵢ/σ², which nearly cancels the prior's curvature in the directions the
    data leave free, so its tail is linear (see ``ggn_lbfgs``). Phase 2 learns that curvature from gradient
    differences while the GGN handles the stiff, data-determined directions (N = 300, seed 0: 4.5 s of LM
    + 8 s of phase 2 to ‖∇‖ = 6e-4, against 22 s with plain L-BFGS as the tail). Far from a fit the
    residuals are large and the GGN a poor model: at N = 10k, from a prior draw without continuation,
    100 LM iterations (200 s) reached a loss L-BFGS reaches in 500 iterations (15 s), and the three phases
    ended in a region of negative curvature (λ_min(∇²L) = −63) at ‖∇‖ = 37."""
    from .gauss_newton import NegLogJoint

    t0 = time.perf_counter()
    n = len(x)
    stages = []
    if init_loc is None:
        init_loc = prior_draw(bound, x, seed)
        sizes = continuation_sizes(n, continuation, continuation_factor)
    else:
        sizes = [n]
    theta = init_loc.to(torch.float64)
    phase_opts = dict(max_iters=max_iters, damping=damping, solver=solver, lm_block=lm_block, lbfgs_round=lbfgs_round)
    if len(sizes) > 1:
        perm = torch.randperm(n, generator=seeded_generator(sub_seed(seed, 1)))
        for k in sizes[:-1]:
            ts = time.perf_counter()
            sub = NegLogJoint(bound, x[perm[:k]], y[perm[:k]])
            theta, st = _phases(sub, theta, gtol=max(gtol, stage_gtol), qn_steps=stage_qn_steps, lbfgs_steps=0,
                                rounds=2, **phase_opts)
            stages.append({"n": k, "lm_iterations": st["lm"]["iterations"], "lm_stop": st["lm"]["stop"],
                           "ggn_lbfgs_iterations": st["ggn_lbfgs_iterations"], "grad_norm": st["grad_norm"],
                           "grad_norm_start": st["lm"]["grad_norm_start"], "time_s": time.perf_counter() - ts})
    t_stages = time.perf_counter() - t0
    problem = NegLogJoint(bound, x, y)
    theta, ph = _phases(problem, theta, gtol=gtol, qn_steps=qn_steps, lbfgs_steps=lbfgs_steps, rounds=rounds,
                        **phase_opts)
    lm, gnorm = ph["lm"], ph["grad_norm"]
    stage_its = sum(s["lm_iterations"] + s["ggn_lbfgs_iterations"] for s in stages)
    report = {"steps": stage_its + lm["iterations"] + ph["ggn_lbfgs_iterations"] + ph["lbfgs_iterations"],
              "converged": gnorm <= gtol, "grad_norm_at_map": gnorm, "losses": ph["losses"], "elbo": None,
              "batch_size": None, "optimizer": "lm",
              "lm": {"iterations": lm["iterations"], "stop": lm["stop"], "solver": lm["solver"], "damping": damping,
                     "grad_norm": lm["grad_norm"], "time_s": ph["lm_time_s"],
                     "ggn_lbfgs_iterations": ph["ggn_lbfgs_iterations"], "ggn_lbfgs_stop": ph["ggn_lbfgs_stop"],
                     "lbfgs_iterations": ph["lbfgs_iterations"], "rounds": ph["rounds"], "continuation": stages,
                     "continuation_time_s": t_stages},
              "wall_time_s": time.perf_counter() - t0}
    return theta, report


def _phases(problem, theta: torch.Tensor, *, gtol: float, max_iters: int, damping: str, solver: str,
            lm_block: int, qn_steps: int, lbfgs_steps: int, lbfgs_round: int,
            rounds: int = 1) -> tuple[torch.Tensor, dict]:
    """Phases 1–3 of :func:`find_map_lm` on one data set, phases 1–2 repeated up to ``rounds`` times while
    the loss falls: (θ, report).

    Why rounds: LM converges to wherever the GGN model has a stationary point, which can be a point where
    the Hessian is indefinite (the GGN does not see negative curvature). ``ggn_lbfgs`` then moves away along
    the valley, its loss falling while ‖∇‖ grows, and a new LM phase from there re-enters the fast regime.
    Default BNN, N = 10k, seed 2: LM ended at ‖∇‖ = 0.19, loss −9362.68; one ``ggn_lbfgs`` phase stopped at
    ‖∇‖ = 66 (loss −9363.07), plain L-BFGS from LM's point reached 0.0104 in 5000 iterations; alternating
    LM and ``ggn_lbfgs`` reached ‖∇‖ = 8e-4 at loss −9363.74 in three rounds."""
    from .gauss_newton import ggn_lbfgs

    losses: list[float] = []
    lm, qn_its, qn_stop, t_lm, gnorm = None, 0, None, 0.0, float("inf")
    for r in range(max(1, rounds)):
        ts = time.perf_counter()
        theta, lm_r = _lm_blocks(problem, theta, max_iters=max_iters, gtol=gtol, damping=damping, solver=solver,
                                 lm_block=lm_block)
        t_lm += time.perf_counter() - ts
        lm = lm_r if lm is None else {**lm_r, "iterations": lm["iterations"] + lm_r["iterations"],
                                      "grad_norm_start": lm["grad_norm_start"]}
        gnorm = lm_r["grad_norm"]
        losses += lm_r["losses"] if not losses else lm_r["losses"][1:]
        if gnorm <= gtol or qn_steps <= 0:
            break
        # the tail: L-BFGS on top of the (damped) inverse GGN, which learns the residual curvature GN ignores
        cand, qn = ggn_lbfgs(problem, theta, max_iters=qn_steps, gtol=gtol, solver=solver)
        qn_its, qn_stop = qn_its + qn["iterations"], qn["stop"]
        if not torch.isfinite(cand).all():
            break
        better_loss = qn["loss"] < losses[-1] - 1e-9 * abs(losses[-1])
        if qn["grad_norm"] < gnorm or better_loss:
            theta, gnorm = cand, qn["grad_norm"]
            losses.append(qn["loss"])
        if qn["converged"] or not better_loss:
            break
    done = 0
    if lbfgs_steps > 0 and gnorm > gtol:  # last resort, plain float64 L-BFGS in rounds
        before = gnorm
        theta, gnorm, done = lbfgs_rounds(lambda t: -problem.loss(t), lambda t: float(problem.grad(t).norm()),
                                          theta, lbfgs_steps, round_steps=lbfgs_round, gtol=gtol, g0=gnorm)
        if gnorm < before:
            losses.append(problem.value(theta))
    return theta, {"lm": lm, "lm_time_s": t_lm, "grad_norm": gnorm, "losses": losses, "rounds": r + 1,
                   "ggn_lbfgs_iterations": qn_its, "ggn_lbfgs_stop": qn_stop, "lbfgs_iterations": done}


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


#: the Laplace fit's ``structure=`` option -> the covariance class that holds its Λ (the class's
#: ``curvature_form`` says in which form :func:`curvature_term` computes it); "last-layer" is a dense Λ over
#: the last layer's coordinates only; "kron" the Kronecker-factored GGN of a BayesianMLP (KFAC)
LAPLACE_STRUCTURES: dict[str, type[Covariance]] = {"full": Precision, "diag": Diag, "last-layer": Precision,
                                                   "kron": Kron}


def _dense_curvature(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, curvature: str,
                     index: torch.Tensor | None, prior: bool) -> torch.Tensor:
    """[k, k]: −∇² of the log likelihood (+ log prior) by autodiff, or the GGN (+ the prior's curvature)."""
    if curvature == "exact":
        f = (lambda t: bound.log_joint(t, x, y)) if prior else (lambda t: bound.log_likelihood(t, x, y).sum())
        H = -hessian(f, theta)
        return H if index is None else H[index][:, index]
    G = ggn(bound, x, theta, index)
    return prior_curvature(bound, x, theta, index) + G if prior else G


def _diagonal_curvature(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, curvature: str,
                        index: torch.Tensor | None, prior: bool) -> torch.Tensor:
    """[k]: the diagonal, never the d × d matrix -- the streamed GGN diagonal (+ the prior's), or the exact
    Hessian diagonal from blocked Hessian-vector products."""
    if curvature == "exact":
        f = (lambda t: bound.log_joint(t, x, y)) if prior else (lambda t: bound.log_likelihood(t, x, y).sum())
        d = -hessian_diagonal(f, theta)
    else:
        d = ggn_diagonal(bound, x, theta)
        if prior:
            d = prior_curvature_diagonal(bound, x, theta) + d
    return d if index is None else d[index]


#: curvature form (a covariance class's ``curvature_form``) -> how :func:`curvature_term` computes it
CURVATURE_FORMS: dict[str, Callable] = {
    "dense": _dense_curvature, "diag": _diagonal_curvature,
    "kron": lambda bound, x, y, theta, curvature, index, prior: kfac_curvature_term(
        bound, x, theta, curvature=curvature, index=index, prior=prior)}


def curvature_term(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, *, form: str,
                   curvature: str = "ggn", index: torch.Tensor | None = None, prior: bool = False) -> Any:
    """The curvature of the data (x, y) at θ in a covariance structure's form: the one place that builds
    both the Laplace precision (``prior=True``: Λ = −∇² log p̃(θ, D), or −∇² log p̃(θ) + G(θ)) and the
    forget set's term of a down-date (``prior=False``: H_f = −∇² log p(D_f | θ), or G_f(θ)).

    ``curvature``: "exact" (autodiff Hessian) or "ggn" (generalised Gauss-Newton, PSD; :mod:`inference.curvature`).
    ``form``: "dense" ([k, k]) or "diag" ([k]), as in :data:`CURVATURE_FORMS` (a new structure adds its form
    there). ``index``: the active coordinates (None: all). Computed in float64."""
    try:
        build = CURVATURE_FORMS[form]
    except KeyError:
        raise ValueError(f"no curvature in form {form!r}; known forms: {sorted(CURVATURE_FORMS)}") from None
    if curvature not in ("exact", "ggn"):
        raise ValueError(f"curvature must be 'exact' or 'ggn', got {curvature!r}")
    x64, y64, t64 = x.to(torch.float64), y.to(torch.float64), theta.detach().to(torch.float64)
    return build(bound, x64, y64, t64, curvature, index, prior)


def laplace_covariance(bound: BoundModel, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, *,
                       curvature: str = "exact", structure: str = "full", subset: list[str] | None = None,
                       repair: str | None = None, floor: float | None = None) -> tuple[Covariance, dict]:
    """The covariance of N(θ*, Λ⁻¹) for the chosen curvature/structure (checked, repaired only on request),
    plus facts for ``meta``."""
    if curvature not in ("exact", "ggn"):
        raise ValueError(f"curvature must be 'exact' or 'ggn', got {curvature!r}")
    if structure not in LAPLACE_STRUCTURES:
        raise ValueError(f"structure must be one of {', '.join(map(repr, LAPLACE_STRUCTURES))}, got {structure!r}")
    if curvature == "exact" and structure != "full":
        raise ValueError("curvature='exact' supports structure='full' only; use curvature='ggn' for "
                         "'diag', 'last-layer' or 'kron'")
    t0 = time.perf_counter()
    facts: dict = {"curvature": curvature, "structure": structure}
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
    cls = LAPLACE_STRUCTURES[structure]
    prec = curvature_term(bound, x, y, theta, form=cls.curvature_form, curvature=curvature, index=index, prior=True)
    cov, pd = cls.from_curvature(prec, active=index, repair=repair, floor=floor)
    facts.update(pd)
    facts["curvature_time_s"] = time.perf_counter() - t0
    return cov, facts


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
