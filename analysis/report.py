"""Writers for an experiment's results folder: ``metrics.csv`` and the human-readable ``report.md``.

Both read only the ``metrics.json`` document built by :func:`analysis.experiment.run_experiment`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .files import atomic_path, write_text_atomic

__all__ = ["write_csv", "write_report"]

_SPLITS = ("forget", "retain", "test")


def _columns(doc: dict) -> list[str]:
    cols: dict[str, None] = {}
    for r in doc["results"]:
        cols.update(dict.fromkeys(r["metrics"]))
    return list(cols)


def write_csv(doc: dict, path: str | Path) -> Path:
    """One row per method: ``method, wall_time_s, failed, verdict, verdict_time_s, <split>/<metric>...``
    (empty cell = not defined)."""
    path = Path(path)
    cols = _columns(doc)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "wall_time_s", "failed", "verdict", "verdict_time_s", *cols])
        for r in doc["results"]:
            w.writerow([r["method"], _cell(r["wall_time_s"]), int(bool(r.get("error"))),
                        _cell(r.get("verdict")), _cell(r.get("verdict_time_s")),
                        *(_cell(r["metrics"].get(c)) for c in cols)])
    return path


def _cell(v):
    return "" if v is None else v


def _md(text) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def _verdict(r: dict) -> str:
    return r.get("verdict") or "–"


def _auto_chosen(r: dict) -> str | None:
    """For ``auto``: the method whose result it returned (``diagnostics["chosen"]``)."""
    diag = r.get("diagnostics") or {}
    return diag.get("chosen") if isinstance(diag, dict) else None


def _auto_path(r: dict) -> list[dict]:
    """For ``auto``: every rung it tried, ``[{method, verdict, reasons, time_s}]`` (``diagnostics["path"]``)."""
    diag = r.get("diagnostics") or {}
    path = diag.get("path") if isinstance(diag, dict) else None
    return [p for p in path if isinstance(p, dict)] if isinstance(path, list) else []


def _f(v, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def _khat_reading(k, note: str | None) -> str:
    if k is None:
        return note or "not available"
    if k < 0.5:
        return (f"{k:.2f}: the importance weights 1/p(D_f|θ) have a finite variance -- necessary, not sufficient: "
                "psis/rkl results are trusted only with a small p/(2·ESS) as well (see their warnings and verdicts)")
    if k < 0.7:
        return f"{k:.2f}: usable but noisy -- the request moves the posterior noticeably"
    return (f"{k:.2f} (> 0.7): unreliable -- the retrained posterior lies far in the tail of q(θ|D); "
            "reweighting methods (psis, rkl) cannot be trusted here, and a large change is to be expected")


def _map_reading(req: dict) -> str:
    """The fit's leftover gradient beside the forget set's: a Laplace posterior built at a non-mode is visible."""
    g, gf, per = req["map_grad_norm"], req.get("forget_grad_norm"), req.get("example_grad_norm_median")
    text = f"‖∇ log p(θ*, D)‖ = {g:.3g}"
    if gf:
        text += f" against the forget set's ‖∇ log p(D_f | θ*)‖ = {gf:.3g} (ratio {g / gf:.2g})"
    if per:
        text += f"; median single point {per:.3g}"
    if gf and g > 0.05 * gf:
        return text + (" -- **θ\\* is not a mode at the scale of this request**: down-dates, Newton steps and "
                       "verdicts that assume ∇ = 0 are off by as much (raise the fit's steps or use optimizer='lm')")
    return text + " -- a mode at the scale of this request"


def _share_reading(req: dict) -> str:
    """The request's κ (``unlearning.verdict.forget_share``) in words: does it empty a region?"""
    from ..unlearning.verdict import VERDICT_RULES

    k = req["forget_share"]
    if k > VERDICT_RULES["share_uncertain"]:
        return (f"κ = {k:.3g} > {VERDICT_RULES['share_uncertain']}: D_f alone determined some direction (a region D_r "
                "leaves empty), so no update started from q(θ|D) can be \"ok\"; `auto` retrains")
    return f"κ = {k:.3g} ≤ {VERDICT_RULES['share_uncertain']}: no region is emptied"


def write_report(doc: dict, path: str | Path, figures: dict[str, str] | None = None) -> Path:
    """``report.md``: the request, tables against retraining, the noise floor, figures and warnings."""
    cfg, req, rows = doc["config"], doc["request"], doc["results"]
    retrain_time = next((r["wall_time_s"] for r in rows if r["method"] == "retrain"), None)
    lm_time = next((r["wall_time_s"] for r in rows if r["method"] == "retrain-lm" and not r.get("error")), None)
    m, d, inf = cfg["model"], cfg["data"], cfg["inference"]
    L = ["# Unlearning report", "",
         f"Written by `bayes-unlearn run` (seed {cfg['seed']}). Every method removed the same forget set "
         "D_f from the same posterior q(θ|D) and is compared with **exact retraining**: the same inference "
         f"(`{inf['method']}`) run from scratch on the retained data D_r.", "",
         "## The request", "",
         "| | |", "|---|---|",
         f"| data | `{d['name']}`: {req['num_train']} training points |",
         f"| model | `{m['name']}` " + ", ".join(f"{k}={v}" for k, v in m.items() if k != "name") + " |",
         f"| inference | `{inf['method']}` " + ", ".join(f"{k}={v}" for k, v in inf.get("options", {}).items())
         + f" ({req['num_params']} parameters, posterior structure `{req['structure']}`, "
         f"fitted in {req['fit_time_s']:.1f} s) |",
         f"| forget set | `{cfg['forget']['kind']}`: {req['num_forget']} points forgotten, {req['num_retain']} kept |",
         f"| PSIS k̂ of the request | {_khat_reading(req['psis_khat'], req.get('psis_note'))} |"]
    if req.get("map_grad_norm") is not None:
        L.append(f"| MAP gradient | {_map_reading(req)} |")
    if req.get("forget_share") is not None:
        L.append(f"| share of the old precision from D_f | {_share_reading(req)} |")
    L.append("")
    if req.get("fit_warnings"):
        L += ["Fit warnings: " + "; ".join(req["fit_warnings"]), ""]
    L += ["## Against exact retraining", "",
          "Distances are averaged over the inputs of each split between Gaussian predictives (method ‖ retrain): "
          + ("linearised (GLM) predictives m(x, μ) ± (σ² + J Σ Jᵀ)^½ around each posterior's mean and covariance. "
             if cfg["analysis"].get("predictive") == "linearised" else
             f"moment-matched from {cfg['analysis']['predictive_samples']} weight draws. ")
          + "**Gap closed** = 1 − d(method, retrain) / d(none, retrain), where `retrain` is the reference (the "
          "retrain ensemble when `analysis.references` > 1): 1 is as good as "
          "retraining, 0 is no better than doing nothing, negative is worse than doing nothing. "
          "Speed-up = retraining time / method time" + (
              "; *vs LM* = the time of `retrain-lm` (the same LM optimiser `lm-refit` uses, started cold) / method "
              "time: the gain of the warm start alone" if lm_time else "") + ". **Verdict** is each method's own check of its result, made "
          "without retraining (`unlearning.verdict`: ok / uncertain / failed; see *Verdicts* below); "
          "for `auto` the method it returned is named in brackets.", "",
          "| method | verdict | time (s) | speed-up |" + (" vs LM |" if lm_time else "")
          + " gap closed D_f | gap closed D_r | gap closed test | KL D_f | KL D_r | KL test | W₂ test |",
          "|---|---|---:|---:|" + ("---:|" if lm_time else "") + "---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            L.append(f"| {r['method']} | {_verdict(r)} | failed | |" + (" |" if lm_time else "") + " | | | | | | |")
            continue
        x, t = r["metrics"], r["wall_time_s"]
        speed = retrain_time / t if retrain_time and t else None
        vs_lm = f" {_f(lm_time / t if t else None, '.1f')} |" if lm_time else ""
        flag = (" ⚠" if r.get("diverged") else "") + (" ≈" if r.get("indistinguishable") else "")
        chosen = _auto_chosen(r)
        via = f" (→ {chosen})" if chosen else ""
        L.append(f"| {r['method']}{via}{flag} | {_verdict(r)} | {_f(t, '.2f')} | {_f(speed, '.1f')} |{vs_lm} "
                 + " | ".join(_f(x.get(f"{s}/gap_closed"), ".2f") for s in _SPLITS) + " | "
                 + " | ".join(_f(x.get(f"{s}/predictive_kl")) for s in _SPLITS) + f" | {_f(x.get('test/w2'))} |")
    nf = doc.get("noise_floor") or {}
    ref = doc.get("reference") or {}
    if ref.get("error"):
        L += ["", f"**Reference {'incomplete' if ref.get('retrains') else 'failed'}**: {ref['error']}."]
    if nf and ref.get("kind") == "ensemble":
        L += ["", f"**Reference**: an ensemble of {ref['retrains']} retrains (seeds {ref['seeds']}); every distance "
              "and gap closed above is to the ensemble's predictive (the mixture of the retrained predictives, "
              "moment-matched per input). **Noise floor**: each retrain against the mixture of the others "
              "(leave-one-out), mean KL " + ", ".join(f"{s} {_f(nf.get(f'{s}/predictive_kl'))}" for s in _SPLITS)
              + " (max " + ", ".join(f"{_f(nf.get(f'{s}/predictive_kl_max'))}" for s in _SPLITS) + "); "
              "as gap closed: " + ", ".join(f"{s} {_f(nf.get(f'{s}/gap_closed'), '.2f')}" for s in _SPLITS)
              + ". Each method is held against the same leave-one-out mixtures; its floor ratio ρ = Σ_k d(method) "
              "/ Σ_k d(retrain_k) (metrics.csv, `*/floor_ratio`) ≤ 1 on all three splits makes it "
              "**indistinguishable from retraining** (marked ≈ below): "
              + (", ".join(f"`{r['method']}`" for r in rows if r.get("indistinguishable")) or "none") + "."]
    mem = [(r["method"], r["metrics"].get("forget/memory")) for r in rows if not r.get("error")]
    mem = [(m, v) for m, v in mem if isinstance(v, float) and math.isfinite(v) and m != "none"]
    if mem:
        L += ["", "**Residual memory of D_f** (metrics.csv, `forget/memory`): the share of the original posterior's "
              "departure from the retrains' mean on the forget set that each result kept, Σ (μ − m̄)(μ* − m̄) / "
              "Σ (μ* − m̄)² (0: none of it, 1: all of it, as `none`; below 0 or above 1: past the retrains or beyond θ*; "
              "linear, where gap closed is quadratic): "
              + ", ".join(f"`{m}` {v:.2f}" for m, v in mem) + "."]
    if nf and ref.get("kind") != "ensemble":
        L += ["", "**Noise floor** (two retrainings with different seeds, the same distances): KL "
              + ", ".join(f"{s} {_f(nf.get(f'{s}/predictive_kl'))}" for s in _SPLITS)
              + "; W₂ test " + _f(nf.get("test/w2")) + ". A method whose distance to `retrain` is at this level "
              "is as close as a second retraining would be; gap closed cannot meaningfully exceed "
              "1 − floor / d(none, retrain)."]
    member = any("membership" in r["metrics"] for r in rows)  # analysis.scenarios.scenario_metrics
    L += ["", "### Fit to the data", "",
          "| method | RMSE D_f | RMSE D_r | RMSE test | NLL D_f | NLL D_r | NLL test | std in deleted region | "
          "elpd_loo on D_r |" + (" membership |" if member else ""),
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if member else "")]
    for r in rows:
        if r.get("error"):
            continue
        x = r["metrics"]
        L.append(f"| {r['method']} | " + " | ".join(_f(x.get(f"{s}/rmse")) for s in _SPLITS) + " | "
                 + " | ".join(_f(x.get(f"{s}/nll")) for s in _SPLITS)
                 + f" | {_f(x.get('region/predictive_std'))} | {_f(x.get('retain/elpd_loo'), '.1f')}"
                 + (" ⚠" if (x.get("retain/loo_khat_max") or 0) > 0.7 else "") + " |"
                 + (f" {_f(x.get('membership'))} |" if member else ""))
    if any(r["metrics"].get("retain/elpd_loo") is not None for r in rows):
        L += ["", f"**elpd_loo** is PSIS-LOO of the {doc['request'].get('elpd_loo_from', 'posterior draws')} on the "
              "method's training data; ⚠ marks a max Pareto k̂ above 0.7 (some leave-one-out terms unreliable)."]
    if member:
        L += ["", "**Membership** = NLL on D_f − NLL on the test set (a loss-based membership signal): ≈ 0 when "
              "D_f looks like unseen data, negative while D_f is still remembered. For a region or corrupted D_f "
              "retraining itself gives a positive value; compare each method with `retrain`, not with 0."]
    weight_keys = [k for k in ("weight/kl", "weight/w2", "weight_warm/kl", "weight_warm/w2")
                   if any(k in r["metrics"] for r in rows)]
    if weight_keys:
        ref = "`retrain`" if weight_keys[0].startswith("weight/") else ("`retrain-warm` (a net's retrained mode "
                                                                          "need not match; warm start keeps it)")
        L += ["", f"Weight-space Gaussian distances to {ref}:", "",
              "| method | " + " | ".join(k.split("/")[1].upper() for k in weight_keys) + " |",
              "|---|" + "---:|" * len(weight_keys)]
        L += [f"| {r['method']} | " + " | ".join(_f(r["metrics"].get(k)) for k in weight_keys) + " |"
              for r in rows if not r.get("error")]
    L += _scenario_sections(doc)
    L += _verdict_section(rows)
    if figures:
        L += ["", "## Figures", ""]
        for caption, rel in figures.items():
            L += [f"![{caption}]({rel})", "", f"*{caption}.*", ""]
    warned = [r for r in rows if r["warnings"]]
    if warned:
        L += ["", "## Warnings", ""]
        for r in warned:
            L += [f"- **{r['method']}**: " + " | ".join(w.replace("\n", " ") for w in r["warnings"])]
    L += ["", "## Files", "",
          "`metrics.json` (everything above), `metrics.csv` (one row per method), `config.toml` (the resolved "
          "configuration: `bayes-unlearn run --config config.toml` repeats the run), `environment.json`, "
          "`figures/*.png`, `posteriors/<method>.nc` (ArviZ InferenceData: `az.from_netcdf`) and "
          "`posteriors/<method>_summary.csv` (`az.summary` of each latent site).", ""]
    return write_text_atomic(path, "\n".join(L))


def _scenario_sections(doc: dict) -> list[str]:
    """``### Corrupted targets`` (utility table) and ``### Sequential deletion requests`` (method × request)
    for the scenarios of :mod:`analysis.scenarios`; nothing for the other forget kinds."""
    req, rows = doc["request"], [r for r in doc["results"] if not r.get("error")]
    L: list[str] = []
    c = req.get("corruption")
    if c:
        how = (f"shifted by {c['shift']:g} · std(y) = {c['shift'] * c['std_y_train']:.3g}" if c["mode"] == "shift"
               else f"replaced by draws from N(mean(y), ({c['shift']:g} · std(y))²)")
        L += ["", "### Corrupted targets", "",
              f"Before the fit, the targets of the {c['num_corrupted']} rows of D_f were {how} (mean change "
              f"{c['mean_abs_change']:.3g}); the test set is clean. **Recovered** = (e_none − e_method) / "
              "(e_none − e_retrain) for the test error e: 1 recovers retraining's test error, 0 is no better than "
              "keeping the corrupted rows, negative is worse (– when retraining did not improve on `none`).", "",
              "| method | test RMSE | RMSE recovered | test NLL | NLL recovered | membership |",
              "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            x = r["metrics"]
            L.append(f"| {r['method']} | {_f(x.get('test/rmse'))} | {_f(x.get('utility/test_rmse_recovered'), '.2f')} "
                     f"| {_f(x.get('test/nll'))} | {_f(x.get('utility/test_nll_recovered'), '.2f')} | "
                     f"{_f(x.get('membership'))} |")
    seq = [r for r in rows if r.get("sequential")]
    if seq:
        info = req.get("sequential") or {}
        n_req = max(len(r["sequential"]) for r in seq)
        final = {r["method"]: r["metrics"].get("test/rmse") for r in rows if r["method"] in ("none", "retrain")}
        L += ["", "### Sequential deletion requests", "",
              f"D_f was removed in {n_req} consecutive requests (sizes {info.get('sizes', '?')}); each method "
              "started every request from its own previous result. Cells: the request's verdict and the test RMSE "
              f"after it. For comparison, test RMSE of `none` {_f(final.get('none'))} and of `retrain` on the "
              f"final D_r {_f(final.get('retrain'))}. A method's verdict above is its worst over the requests.", "",
              "| method | " + " | ".join(f"request {j + 1}" for j in range(n_req)) + " |",
              "|---|" + "---|" * n_req]
        for r in seq:
            cells = [f"{e.get('verdict') or '–'} · {_f(e.get('test/rmse'))}" for e in r["sequential"]]
            L.append(f"| {r['method']} | " + " | ".join(cells + [""] * (n_req - len(cells))) + " |")
        if any("test/gap_closed" in e for r in seq for e in r["sequential"]):
            L += ["", "Gap closed on the test set against a retrain (one seed) on the data left after each request "
                  "(`forget.step_references`): the drift of the chain.", "",
                  "| method | " + " | ".join(f"request {j + 1}" for j in range(n_req)) + " |",
                  "|---|" + "---:|" * n_req]
            for r in seq:
                cells = [_f(e.get("test/gap_closed"), ".2f") for e in r["sequential"]]
                L.append(f"| {r['method']} | " + " | ".join(cells + [""] * (n_req - len(cells))) + " |")
    return L


def _verdict_section(rows: list[dict]) -> list[str]:
    """``### Verdicts``: each method's verdict with its reasons and cost, and the path ``auto`` took
    (nothing for a document written before results carried verdicts)."""
    if not any("verdict" in r for r in rows):
        return []
    L = ["", "### Verdicts", "",
         "Each result is checked against the optimality conditions of the retained problem, without retraining "
         "(`unlearning.verdict`): **ok** (the new posterior satisfies them), **uncertain** (partly, the check "
         "is inconclusive, or a warm update after D_f emptied a region, where cold retrains land in another "
         "mode), **failed** (diverged, a broken covariance, most of the change not made, nothing "
         "forgotten, or the method raised). Compare with the gap closed above, which needed the retraining.", "",
         "| method | verdict | check time (s) | reasons |", "|---|---|---:|---|"]
    for r in rows:
        reasons = "; ".join(_md(x) for x in r.get("verdict_reasons") or []) or "–"
        L.append(f"| {r['method']} | {_verdict(r)} | {_f(r.get('verdict_time_s'), '.2f')} | {reasons} |")
    for r in rows:
        path = _auto_path(r)
        if r.get("error") or not (path or _auto_chosen(r)):
            continue
        L += ["", f"`{r['method']}` returned the result of `{_auto_chosen(r) or '?'}` ({_verdict(r)}); "
              "the methods it tried, in order:", "",
              "| step | method | verdict | time (s) | check time (s) | reasons |", "|---:|---|---|---:|---:|---|"]
        for i, p in enumerate(path, 1):
            t, vt = (p.get(k) for k in ("time_s", "verdict_time_s"))
            reasons = "; ".join(_md(x) for x in p.get("reasons") or []) or "–"
            L.append(f"| {i} | {p.get('method', '?')} | {p.get('verdict') or '–'} | "
                     f"{_f(t if isinstance(t, (int, float)) else None, '.2f')} | "
                     f"{_f(vt if isinstance(vt, (int, float)) else None, '.2f')} | {reasons} |")
        skipped = (r.get("diagnostics") or {}).get("skipped")
        if isinstance(skipped, dict) and skipped.get("methods"):
            L += ["", f"Not tried: {', '.join(f'`{m}`' for m in skipped['methods'])}, because "
                  f"{_md(skipped.get('reason', '?'))}."]
    return L

