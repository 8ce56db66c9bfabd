"""Other starts for ``lm-refit`` on a BNN: does a perturbed, reset or shrunk warm start reach the retrains' mode?

    python -m benchmarks.bnn_warm_starts --n 10000 --seed 0 --scenario region --store DIR \\
        --out benchmarks/results/bnn_warm_starts_region_s0.json

``lm-refit`` minimises the retained objective L_r from θ* and stops at a mode (∇L_r ≈ 0). On some seeds that
mode is not where cold retrains land: ρ > 1 against the retrain ensemble (``benchmarks.bnn_unlearning``). This
benchmark asks whether another start fixes it, at what cost. Each variant moves the start θ₀ and then runs the
same quasi-Newton refit (``unlearning.refit.lm_mode``, ggn-lbfgs, 500 iterations at most) to the same gradient
target, 1 % of ‖∇L_r(θ*)‖ = ‖g_f‖:

- ``draw:s``   θ₀ = θ* + s·ε with ε ~ N(0, Λ_r⁻¹), Λ_r = Λ − G_f(θ*) = P + G_r(θ*), the down-dated GGN precision:
  a random move that is large exactly in the directions D_r leaves free (where only D_f and the prior spoke);
- ``reset:τ``  θ₀ = θ* minus its Λ_r-components along the generalised eigenvectors G_f v = λ Λ_r v with λ > τ,
  the directions that D_f determined more than D_r and the prior did, which go back to the prior mean 0;
- ``shrink:c`` θ₀ = c·θ* ("shrink and perturb" without the perturbation; Ash & Adams, NeurIPS 2020, on why warm
  starts keep the old solution's basin);
- ``prior:κ``  first a refit of L_r with the prior's precision multiplied by κ from θ*, which pulls the
  weakly determined weights toward 0, then the refit of L_r itself from there.

Every result is scored as ``benchmarks.bnn_unlearning`` scores a method: ρ per split against the K references
(their leave-one-out floor), the retained objective L_r at its mean minus the references' mean (< 0: a lower,
better mode of L_r), and the Laplace log-evidence of its mode,

    log Z(θ) ≈ −L_r(θ) − ½ log det Λ(θ) + (d/2) log 2π,

the posterior mass of that mode's Gaussian (higher: more mass). The held-out retrain (seed + 1000 K) is scored
alike, as a yardstick. The fit and the K + 1 retrains are saved to ``--store`` (safetensors) and reused when
present, so variants can be added without paying for them again.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks._io import machine_state, write_result

VARIANTS = ("draw:0.1", "draw:0.3", "draw:1", "reset:100", "reset:10", "shrink:0.9", "shrink:0.7",
            "prior:10", "prior:100")


def _stored(path: Path, make, model=None):
    """The posterior at ``path`` if it exists, else ``make()`` saved there (no pickle: safetensors)."""
    from bayes_unlearn.inference.posterior import Posterior

    if path.exists():
        return Posterior.load(path, model=model), None
    t0 = time.perf_counter()
    post = make()
    took = time.perf_counter() - t0
    post.save(path, include_data=model is None)
    return post, took


def log_evidence(post, loss: float) -> float:
    """log Z ≈ −L_r(μ) − ½ log det Λ + (d/2) log 2π of a Gaussian (Laplace) posterior, ``loss`` = L_r(μ)."""
    prec = post.cov.precision_form().to(torch.float64)
    if prec.dim() == 1:
        prec = torch.diag(prec)
    sign, logdet = torch.linalg.slogdet(prec)
    if sign <= 0:
        return float("nan")
    d = prec.shape[0]
    return -loss - 0.5 * float(logdet) + 0.5 * d * math.log(2 * math.pi)


def start_of(variant: str, theta: torch.Tensor, chol: torch.Tensor, G_f: torch.Tensor, seed: int,
             problem_factory) -> tuple[torch.Tensor, dict]:
    """θ₀ of a variant (module docstring) and what it cost or did: ``{"pre_s", "pre_iterations", …}``."""
    kind, _, arg = variant.partition(":")
    a = float(arg)
    if kind == "draw":
        g = torch.Generator().manual_seed(seed + 77)
        z = torch.randn(len(theta), generator=g, dtype=torch.float64)
        eps = torch.linalg.solve_triangular(chol.T, z[:, None], upper=True)[:, 0]  # ~ N(0, Λ_r⁻¹)
        return theta + a * eps, {}
    if kind == "reset":
        M = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, G_f, upper=False).T, upper=False)
        lam, U = torch.linalg.eigh(0.5 * (M + M.T))
        V = torch.linalg.solve_triangular(chol.T, U, upper=True)  # Λ_r-orthonormal: Vᵀ Λ_r V = I
        c = U.T @ (chol.T @ theta)                                # θ's Λ_r-coordinates along V
        keep = lam > a
        return theta - V[:, keep] @ c[keep], {"directions": int(keep.sum())}
    if kind == "shrink":
        return a * theta, {}
    if kind == "prior":
        from bayes_unlearn.inference.gauss_newton import ggn_lbfgs

        t0 = time.perf_counter()
        th, rep = ggn_lbfgs(problem_factory(a), theta, max_iters=200, gtol=0.0, rtol=1e-2, refresh=20,
                            solver="auto", time_budget_s=None, first_curvature=None, seed=seed, kl_tol=None)
        return th, {"pre_s": time.perf_counter() - t0, "pre_iterations": rep["iterations"]}
    raise ValueError(f"unknown variant {variant!r}; use draw:S, reset:TAU, shrink:C or prior:KAPPA")


def run(seed: int, n: int, scenario: str, K: int, variants: list[str], store: Path, max_iters: int = 500) -> dict:
    from bayes_unlearn.inference import predict
    from bayes_unlearn.inference.gauss_newton import LM_DEFAULTS, NegLogJoint
    from bayes_unlearn.inference.latent import BoundModel
    from bayes_unlearn.inference.posterior import Posterior
    from bayes_unlearn.models.data import synthetic_1d
    from bayes_unlearn.models.forget_sets import split
    from bayes_unlearn.unlearning import unlearn
    from bayes_unlearn.unlearning.base import locate_forget_set
    from bayes_unlearn.unlearning.laplace import forget_curvature
    from bayes_unlearn.unlearning.refit import _covariance_at, lm_mode, resolve_ggn_rows

    from benchmarks.bnn_unlearning import SPLITS, NoiseFloor, forget_indices, original_fit

    store.mkdir(parents=True, exist_ok=True)
    data = synthetic_1d(n=n, seed=seed)
    old, fit_s = _stored(store / f"fit_n{n}_s{seed}.st", lambda: original_fit(data, seed))
    idx = forget_indices(data.x, scenario, seed)
    xr, yr, xf, yf = split(data.x, data.y, idx)
    tag = scenario.replace(":", "")
    refs, ref_s = [], []
    for k in range(K + 1):  # K references and a held-out retrain (seed + 1000 K)
        r, took = _stored(store / f"ref_n{n}_s{seed}_{tag}_{k}.st",
                          lambda k=k: unlearn(old, xf, yf, "retrain", seed=seed + 1000 * k).posterior, model=old.model)
        refs.append(r)
        ref_s.append(took)
    fs = locate_forget_set(old, xf, yf)
    xs = {"forget": xf, "retain": xr, "test": data.x_test}
    preds = lambda p: {s: predict(p, x, linearised=True, num_samples=200, seed=seed) for s, x in xs.items()}  # noqa: E731
    floor = NoiseFloor([preds(r) for r in refs[:K]], preds(old))
    problem = NegLogJoint(BoundModel(old.model, fs.x_retain, fs.y_retain), fs.x_retain, fs.y_retain)
    L_ref = sum(problem.value(r.loc.to(torch.float64)) for r in refs[:K]) / K
    theta = old.loc.to(torch.float64)
    g_f = float(problem.grad(theta).norm())
    rows_sub = resolve_ggn_rows("auto", len(fs.x_retain), "ggn-lbfgs")

    def score(name: str, post, seconds: float | None, extra: dict) -> dict:
        num = floor.numbers(preds(post))
        loss = problem.value(post.loc.to(torch.float64))
        return {"variant": name, "wall_time_s": seconds, **extra,
                **{f"{s}/floor_ratio": num[f"{s}/floor_ratio"] for s in SPLITS}, "within_floor": num["within_floor"],
                "retained_loss_minus_retrains": loss - L_ref, "log_evidence": log_evidence(post, loss)}

    rows = [score("none", old, None, {})]
    rows += [score(f"retrain (reference {k})", refs[k], ref_s[k], {}) for k in range(K)]
    rows.append(score("retrain (held out)", refs[K], ref_s[K], {}))
    t0 = time.perf_counter()
    res = unlearn(old, xf, yf, "lm-refit", seed=seed)
    rows.append(score("lm-refit", res.posterior, time.perf_counter() - t0,
                      {"iterations": res.diagnostics.get("iterations")}))

    _, G_f = forget_curvature(old, fs, theta, "dense", "ggn")
    G_f = G_f.to(torch.float64)
    chol = torch.linalg.cholesky(old.cov.precision_form().to(torch.float64) - G_f)

    def tempered(kappa: float) -> NegLogJoint:
        class Tempered(NegLogJoint):  # L_r with the prior's precision × κ (a Gaussian prior: −log p scales)
            def loss(self, t):
                return -self.bound.log_joint(t, self.x, self.y) - (kappa - 1.0) * self.bound.log_prior(t, self.x[:1])

            def prior_diag(self, t):
                return kappa * NegLogJoint.prior_diag(self, t)
        return Tempered(BoundModel(old.model, fs.x_retain, fs.y_retain), fs.x_retain, fs.y_retain)

    for v in variants:
        t0 = time.perf_counter()
        th0, extra = start_of(v, theta, chol, G_f, seed, tempered)
        th, rep = lm_mode(old, fs, max_iters=max_iters, rtol=0.0, gtol=max(LM_DEFAULTS["gtol"], 1e-2 * g_f),
                          time_budget_s=None, solver="auto", mu0=None, chunk=1024, theta0=th0, ggn_rows=rows_sub,
                          seed=seed, kl_tol=0.25e-3)
        cov, _, meta = _covariance_at(old, fs, th)
        post = Posterior(loc=th.to(cov.dtype), cov=cov, family=old.family, layout=old.layout, model=old.model,
                         meta={"fit": old.meta.get("fit"), "curvature": meta})
        rows.append(score(v, post, time.perf_counter() - t0, {
            **extra, "iterations": rep["iterations"] + extra.get("pre_iterations", 0),
            "converged": rep["converged"], "grad_norm": rep["grad_norm"]}))
    return {"seed": seed, "n": n, "scenario": scenario, "references": K, "fit_time_s": fit_s,
            "machine": machine_state(), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bnn_warm_starts", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--scenario", default="region")
    ap.add_argument("--references", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--max-iters", type=int, default=500)
    ap.add_argument("--store", required=True, help="folder for the fit and the retrains (reused when present)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.references < 2:
        ap.error("--references must be at least 2 (the noise floor is leave-one-out)")
    for v in a.variants:
        if v.partition(":")[0] not in ("draw", "reset", "shrink", "prior") or not v.partition(":")[2]:
            ap.error(f"unknown variant {v!r}; use draw:S, reset:TAU, shrink:C or prior:KAPPA")
    torch.set_num_threads(1)
    doc = run(a.seed, a.n, a.scenario, a.references, a.variants, Path(a.store), a.max_iters)
    doc["config"] = vars(a)
    write_result(a.out, doc, threads=1)
    for r in doc["rows"]:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    return doc


if __name__ == "__main__":
    main()
