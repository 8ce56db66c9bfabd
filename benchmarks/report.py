"""Targets, markdown tables and the figure for a ``benchmarks.run`` result."""

from __future__ import annotations

import math
from pathlib import Path


def _cell(res: dict, n: int, fraction: float) -> dict | None:
    for case in res.get("grid", []):
        if case["n"] == n:
            for c in case["cells"]:
                if c["fraction"] == fraction:
                    return c
    return None


def _row(cell: dict, method: str) -> dict | None:
    return next((r for r in cell["methods"] if r["method"] == method and "error" not in r), None)


def targets(res: dict) -> dict:
    """The issue's targets, each {"met": bool | None (not measured), "value": ..., "goal": ...}."""
    out = {}
    cell = _cell(res, 10_000, 0.01)
    if cell:
        vals = {m: {"speedup": r["speedup"], "gap_closed": r["gap_closed"]}
                for m in ("rkl", "eubo-adjusted") if (r := _row(cell, m))}
        out["rkl_or_eubo_adjusted_10k_1pct"] = {
            "goal": "speed-up >= 20 and gap closed >= 0.8 (BLR grid, N = 10k, 1%)", "value": vals,
            "met": any(v["speedup"] >= 20 and v["gap_closed"] >= 0.8 for v in vals.values())}
    else:
        out["rkl_or_eubo_adjusted_10k_1pct"] = {"goal": "N = 10k, 1%", "met": None, "value": "not measured"}
    sc = res.get("scaling")
    if sc:
        ratios = sc["ratio_largest_to_smallest"]
        out["fixed_k_time_vs_n"] = {"goal": f"t(N={sc['sizes'][-1]}) <= 1.5 t(N={sc['sizes'][0]}), |D_f| = {sc['k']}",
                                    "value": ratios, "met": all(v <= 1.5 for v in ratios.values())}
    grid = res.get("grid", [])
    if len(grid) > 1 and grid[0].get("fixed_k") and grid[-1].get("fixed_k"):
        a, b = grid[0]["fixed_k"]["unlearn_s"], grid[-1]["fixed_k"]["unlearn_s"]
        out["fixed_k_time_vs_n_fitted_blr"] = {"goal": f"same, BLR fitted at N={grid[-1]['n']} vs N={grid[0]['n']}",
                                               "value": {m: b[m] / a[m] for m in a},
                                               "met": all(b[m] / a[m] <= 1.5 for m in a)}
    ten_k = [c for c in res.get("params", []) if 5_000 <= c["num_params"] <= 20_000]
    if ten_k:
        vals = {c["structure"]: _row(c["cells"][0], "laplace-downdate")["unlearn_s"] for c in ten_k}
        out["downdate_10k_params_under_1s"] = {"goal": "laplace-downdate < 1 s at ~10k parameters", "value": vals,
                                               "met": any(v < 1.0 for v in vals.values())}
    else:
        out["downdate_10k_params_under_1s"] = {"goal": "~10k parameters", "met": None, "value": "not measured"}
    svi = res["svi"]
    out["svi_overhead_3x"] = {"goal": "per-step overhead of the stock loop >= 3x that of the new loop",
                              "value": {"overhead_ratio": svi["speedup_overhead"], "total_ratio": svi["speedup_total"]},
                              "met": svi["speedup_overhead"] >= 3}
    return out


def _f(v, fmt=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def tables(res: dict) -> str:
    """Markdown tables of every section."""
    lines = []
    s = res["svi"]
    lines += [f"### SVI step cost ({s['model']}, d = {s['num_params']}, synthetic_1d n = {s['n']}; "
              f"median of {s['repeats']} × {s['steps']} steps)", "",
              "| loop | ms/step | overhead ms/step (minus floor) |", "|---|---|---|"]
    label = {"stock": "stock (Trace_ELBO)", "direct-eager": "direct ELBO, eager", "direct": "direct ELBO + jit (default)"}
    for k, v in s["ms_per_step"].items():
        lines.append(f"| {label.get(k, k)} | {v:.2f} | {s['overhead_ms'][k]:.2f} |")
    lines += [f"| floor: jit log-joint forward + backward only | {s['floor_ms']:.2f} | 0 |", "",
              f"stock / direct: {s['speedup_total']:.1f}x per step, {s['speedup_overhead']:.1f}x per-step overhead. "
              f"Minibatch at N = {s['minibatch']['n']}: full batch {s['minibatch']['full_batch_ms_per_step']:.1f} ms/step, "
              f"B = {s['minibatch']['batch_size']}: {s['minibatch']['minibatch_ms_per_step']:.1f} ms/step. "
              f"Loss after {s['steps'] + 10} steps from the same seed: " +
              ", ".join(f"{k} {v:.6g}" for k, v in s["final_loss_after_steps"].items()) +
              ". Pyro's JitTrace_ELBO: " + (f"{s['jit_trace_elbo']['ms_per_step']:.2f} ms/step"
                                          if "ms_per_step" in s["jit_trace_elbo"]
                                          else f"fails ({s['jit_trace_elbo']['error']})") + ".", "",
              "Profile (cProfile, own time per step, top 5):", "",
              "| loop | function | calls/step | own ms/step |", "|---|---|---|---|"]
    for loop in ("stock", "direct"):
        for p in s["profile"][loop][:5]:
            lines.append(f"| {loop} | `{p['function']}` | {p['calls'] / (s['steps'] + 10):.3g} | "
                         f"{p['own_ms_per_step']:.3f} |")
    lines += [""]
    head = ["| model | N | forgot | method | unlearn s | retrain s | speed-up | gap closed | KL(none‖retrain) "
            "| noise floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["### Unlearning vs retraining (median times; gap closed on the test-grid predictive KL)", ""] + head
    cases = list(res.get("grid", [])) + ([res["bnn"]] if res.get("bnn") else [])
    for case in cases:
        label = "BLR (RBF, exact Laplace)" if case["model"] == "blr" else f"BNN d={case['num_params']} (GGN-diag Laplace)"
        for c in case["cells"]:
            for r in c["methods"]:
                if "error" in r:
                    lines.append(f"| {label} | {case['n']} | {c['num_forget']} | {r['method']} | error: "
                                 f"{r['error'][:60]} | | | | | |")
                    continue
                lines.append(f"| {label} | {case['n']} | {c['num_forget']} ({c['fraction']:.1%}) | {r['method']} | "
                             f"{_f(r['unlearn_s'])} | {_f(c['retrain_s'])} | {_f(r['speedup'], '.1f')} | "
                             f"{_f(r['gap_closed'], '.2f')} | {_f(c['kl_none_to_retrain'])} | {_f(c['noise_floor_kl'])} |")
    lines += ["", "### Parameter count (laplace-downdate, N = "
              f"{res['params'][0]['n'] if res.get('params') else '–'}, 1% forgotten)", "",
              "| hidden | d | curvature | downdate s | retrain s | speed-up | gap closed | KL(none‖retrain) | noise floor |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in res.get("params", []):
        cell = c["cells"][0]
        r = _row(cell, "laplace-downdate")
        if r is None:
            lines.append(f"| {c['hidden']} | {c['num_params']} | {c['structure']} | error | | | | | |")
            continue
        lines.append(f"| {tuple(c['hidden'])} | {c['num_params']} | GGN {c['structure']} | {_f(r['unlearn_s'])} | "
                     f"{_f(cell['retrain_s'])} | {_f(r['speedup'], '.0f')} | {_f(r['gap_closed'], '.2f')} | "
                     f"{_f(cell['kl_none_to_retrain'])} | {_f(cell['noise_floor_kl'])} |")
    sc = res.get("scaling")
    if sc:
        lines += ["", f"### Fixed |D_f| = {sc['k']}: unlearning time as the data grows ({sc['family']}, d = "
                  f"{sc['num_params']})", "",
                  "| method | " + " | ".join(f"N = {n}" for n in sc["sizes"]) + " | ratio |",
                  "|---|" + "---|" * (len(sc["sizes"]) + 1)]
        for m, v in sc["unlearn_s"].items():
            lines.append(f"| {m} | " + " | ".join(f"{t:.3g} s" for t in v) +
                         f" | {sc['ratio_largest_to_smallest'][m]:.2f} |")
    lines += ["", "### Targets", "", "| target | goal | value | met |", "|---|---|---|---|"]
    for k, t in res["targets"].items():
        val = t["value"]
        if isinstance(val, dict):
            val = ", ".join(f"{a}: " + (", ".join(f"{b} {_f(c)}" for b, c in v.items()) if isinstance(v, dict)
                                        else _f(v)) for a, v in val.items())
        lines.append(f"| {k} | {t['goal']} | {val} | {'–' if t['met'] is None else ('yes' if t['met'] else 'NO')} |")
    return "\n".join(lines)


def plot(res: dict, path: str | Path) -> None:
    """2×2 seaborn figure: SVI ms/step, time vs N, gap closed, downdate time vs d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(2, 2, figsize=(10, 7.5))
    s = res["svi"]
    names = list(s["ms_per_step"])
    sns.barplot(x=names, y=[s["ms_per_step"][k] for k in names], ax=ax[0, 0], color="C0")
    ax[0, 0].axhline(s["floor_ms"], color="k", ls="--", lw=1, label="floor (model fwd+bwd)")
    ax[0, 0].set(ylabel="ms / SVI step", title=f"SVI step, default BNN (n={s['n']})")
    ax[0, 0].legend()
    rows = []
    for case in res.get("grid", []):
        for c in case["cells"]:
            rows.append({"N": case["n"], "fraction": c["fraction"], "method": "retrain", "seconds": c["retrain_s"],
                         "gap": 1.0})
            for r in c["methods"]:
                if "error" not in r:
                    rows.append({"N": case["n"], "fraction": c["fraction"], "method": r["method"],
                                 "seconds": r["unlearn_s"], "gap": r["gap_closed"]})
    if rows:
        import pandas as pd

        df = pd.DataFrame(rows)
        f = 0.01 if (df["fraction"] == 0.01).any() else df["fraction"].iloc[0]
        sub = df[df["fraction"] == f]
        sns.lineplot(data=sub, x="N", y="seconds", hue="method", marker="o", ax=ax[0, 1])
        ax[0, 1].set(xscale="log", yscale="log", title=f"BLR: wall time vs N ({f:.1%} forgotten)")
        n_mid = 10_000 if (df["N"] == 10_000).any() else df["N"].iloc[0]
        sub = df[(df["N"] == n_mid) & (df["method"] != "retrain")].copy()
        sub["gap"] = sub["gap"].clip(lower=-1.0)
        sns.barplot(data=sub, x="fraction", y="gap", hue="method", ax=ax[1, 0])
        ax[1, 0].axhline(0.8, color="k", ls="--", lw=1)
        ax[1, 0].set(ylim=(-1.05, 1.05), ylabel="gap closed (clipped at -1)", title=f"BLR N={n_mid}: gap closed")
    pr = [{"d": c["num_params"], "curvature": c["structure"], "seconds": _row(c["cells"][0], "laplace-downdate")
           ["unlearn_s"]} for c in res.get("params", []) if _row(c["cells"][0], "laplace-downdate")]
    if pr:
        import pandas as pd

        sns.lineplot(data=pd.DataFrame(pr), x="d", y="seconds", hue="curvature", marker="o", ax=ax[1, 1])
        ax[1, 1].axhline(1.0, color="k", ls="--", lw=1)
        ax[1, 1].set(xscale="log", yscale="log", title="laplace-downdate time vs parameter count")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
