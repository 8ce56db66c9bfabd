"""SVI with its default options, per guide family, over seeds (issue 15).

    python -m benchmarks.svi_defaults                                # 5 seeds x 3 families x 3 problems
    python -m benchmarks.svi_defaults --nets default --seeds 0 1 2 3 4 --out benchmarks/results/svi_defaults.json
    python -m benchmarks.svi_defaults --table benchmarks/results/svi_defaults.json    # the markdown table

Problems (the nets the README and ``bayes-unlearn run`` use, and the conjugate oracle):

    default  BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1) on synthetic_1d(n=300, seed)
             (d = 1153)
    quick    the ``--quick`` BNN of analysis/config.py: hidden (8, 8), synthetic_1d(n=120, seed) (d = 97)
    linear   BayesianLinearRegression(1, prior_scale=1, noise=0.1) on synthetic_1d(n=300, seed) (d = 2),
             whose log evidence log p(D) is exact: every ELBO must lie below it

Each cell is ``fit(model, x, y, family, seed=seed)`` with no options: wall and CPU time (the machine
is shared, so CPU time is the steadier of the two), steps, whether the convergence rule was met,
restarts, and the final ELBO, estimated with 256 draws from the fitted posterior as
mean log p(θ, D) + H[q] (the closed-form entropy), which is less noisy than the last window of the
training losses (also recorded). A fit that raises is recorded with its error. Summaries are the
mean with a 95 % percentile-bootstrap interval over seeds (``analysis.stats.bootstrap_ci``). The
JSON is rewritten after every fit, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bayes_unlearn.analysis.stats import bootstrap_ci
from bayes_unlearn.inference import fit
from bayes_unlearn.inference.svi import family_defaults
from bayes_unlearn.models import BayesianLinearRegression, BayesianMLP
from bayes_unlearn.models.data import synthetic_1d
from benchmarks._io import read_result, write_result

FAMILIES = ("meanfield", "lowrank", "fullrank")
NETS = ("default", "quick", "linear")


def problem(net: str, seed: int):
    """(model, x, y) of a named problem."""
    if net == "default":
        d = synthetic_1d(n=300, seed=seed)
        return BayesianMLP(1, (32, 32), "tanh", prior_scale="fan_in", noise=0.1), d.x, d.y
    if net == "quick":
        d = synthetic_1d(n=120, seed=seed)
        return BayesianMLP(1, (8, 8), "tanh", prior_scale="fan_in", noise=0.1), d.x, d.y
    if net == "linear":
        d = synthetic_1d(n=300, seed=seed)
        return BayesianLinearRegression(1, prior_scale=1.0, noise=0.1), d.x, d.y
    raise ValueError(f"unknown problem {net!r}; choose one of {NETS}")


def elbo_estimate(post, num_samples: int = 256, seed: int = 0) -> float:
    """ELBO(q) = E_q[log p(θ, D)] + H[q], the expectation over ``num_samples`` draws, H in closed form."""
    bound = post.bound_model()
    theta = post.sample(num_samples, seed=seed)
    with torch.no_grad():
        lj = torch.stack([bound.log_joint(t, post.x, post.y) for t in theta])
        return float(lj.mean() + post.to_distribution().entropy())


def run_cell(net: str, family: str, seed: int) -> dict:
    model, x, y = problem(net, seed)
    row = {"net": net, "family": family, "seed": seed}
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        post = fit(model, x, y, family, seed=seed, progress=False)
    except Exception as e:  # recorded, not raised: the point is to count failures
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400], wall_s=time.perf_counter() - w0,
                   cpu_s=time.process_time() - c0)
        return row
    row.update(ok=True, wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0,
               steps=post.meta["report"]["steps"], converged=post.meta["report"]["converged"],
               restarts=post.meta["report"]["restarts"], warnings=post.meta["warnings"],
               defaults=post.meta["report"]["defaults"], dim=post.dim)
    losses = post.meta["losses"]
    row["final_window_elbo"] = -sum(losses[-200:]) / len(losses[-200:])
    row["elbo"] = elbo_estimate(post)
    if net == "linear":
        row["log_evidence"] = float(model.log_evidence(x, y))
    return row


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for net in NETS:
        for family in FAMILIES:
            cell = [r for r in rows if r["net"] == net and r["family"] == family]
            if not cell:
                continue
            ok = [r for r in cell if r["ok"]]
            s = {"net": net, "family": family, "seeds": [r["seed"] for r in cell], "fitted": len(ok),
                 "converged": sum(bool(r.get("converged")) for r in ok),
                 "restarts": sum(len(r.get("restarts", [])) for r in ok)}
            for key in ("wall_s", "cpu_s", "steps", "elbo", "final_window_elbo"):
                est, lo, hi = bootstrap_ci([r[key] for r in ok])
                s[key] = {"mean": est, "ci95": [lo, hi]}
            # paired by seed (the same data): the family's ELBO minus the mean-field one
            mf = {r["seed"]: r["elbo"] for r in rows if r["net"] == net and r["family"] == "meanfield" and r["ok"]}
            est, lo, hi = bootstrap_ci([r["elbo"] - mf[r["seed"]] for r in ok if r["seed"] in mf])
            s["elbo_minus_meanfield"] = {"mean": est, "ci95": [lo, hi]}
            if net == "linear" and ok:
                est, lo, hi = bootstrap_ci([r["log_evidence"] - r["elbo"] for r in ok])
                s["evidence_minus_elbo"] = {"mean": est, "ci95": [lo, hi]}
            out.append(s)
    return out


def markdown_table(doc: dict) -> str:
    def c(d: dict, fmt: str) -> str:
        return f"{fmt.format(d['mean'])} [{fmt.format(d['ci95'][0])}, {fmt.format(d['ci95'][1])}]"

    lines = ["| problem | family | fitted / converged | restarts | wall s | CPU s | steps | final ELBO | "
             "ELBO − mean-field ELBO (same seed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in doc["summary"]:
        extra = ""
        if "evidence_minus_elbo" in s:
            extra = f"; log p(D) − ELBO {c(s['evidence_minus_elbo'], '{:.3f}')}"
        lines.append(f"| {s['net']} | {s['family']} | {s['fitted']}/{len(s['seeds'])} / {s['converged']} | "
                     f"{s['restarts']} | {c(s['wall_s'], '{:.1f}')} | {c(s['cpu_s'], '{:.1f}')} | "
                     f"{c(s['steps'], '{:.0f}')} | {c(s['elbo'], '{:.1f}')} | "
                     f"{c(s['elbo_minus_meanfield'], '{:.1f}')}{extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="benchmarks/results/svi_defaults.json")
    ap.add_argument("--table", default=None, help="print the markdown table of an existing JSON and exit")
    a = ap.parse_args(argv)
    if a.table:
        doc = read_result(a.table)
        doc["summary"] = summarise(doc["rows"])
        print(markdown_table(doc))
        return doc
    torch.set_num_threads(1)
    doc = {"command": "python -m benchmarks.svi_defaults " + " ".join(argv if argv is not None else sys.argv[1:]),
           "defaults": {f: family_defaults(f, 1153) for f in FAMILIES}, "rows": [], "summary": []}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for net in a.nets:  # seeds innermost per family would bunch the machine's load; interleave families
        for seed in a.seeds:
            for family in a.families:
                row = run_cell(net, family, seed)
                doc["rows"].append(row)
                doc["summary"] = summarise(doc["rows"])
                write_result(out, doc)
                print(f"{net:8s} {family:9s} seed {seed}: "
                      + (f"{row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, {row['steps']} steps, "
                         f"ELBO {row['elbo']:.2f}, restarts {len(row['restarts'])}" if row["ok"] else row["error"]),
                      flush=True)
    print(markdown_table(doc))
    return doc


if __name__ == "__main__":
    main()
