"""Markdown tables of a finished sweep folder, as quoted in the README (``python docs/sweeps/tables.py DIR``).

Per scenario: every method's gap closed on D_f / D_r / test (mean over seeds [95 % bootstrap interval]),
speed-up against the default ``retrain`` of the same task, the share of seeds with verdict "ok" and the
share within the retrain ensemble's noise floor on every split; then the noise floor itself as the gap
closed that a retrain reaches against the mixture of the other retrains (leave-one-out), and, where
present, utility recovered (corrupted) and the membership signal (random).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bayes_unlearn.analysis.stats import bootstrap_ci

SPLITS = ("forget", "retain", "test")


def _fmt(values: list, digits: int = 2) -> str:
    est, lo, hi = bootstrap_ci(values)
    if est != est:  # NaN: no finite value
        return "–"
    f = f"{{:.{digits}f}}"
    return f"{f.format(est)} [{f.format(lo)}, {f.format(hi)}]"


def tables(folder: str | Path) -> str:
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    out = []
    for scenario in summary["scenarios"]:
        docs = [json.loads(p.read_text()) for p in sorted((folder / scenario).glob("seed*/metrics.json"))]
        if not docs:
            continue
        n = len(docs)
        methods = [r["method"] for r in docs[0]["results"] if r["method"] != "none"]
        extra = [k for k in ("utility/test_rmse_recovered", "membership")
                 if any(k in r["metrics"] for r in docs[0]["results"])]
        if scenario.startswith("corrupted"):
            extra = [k for k in extra if k.startswith("utility")]
        elif not scenario.startswith("random"):
            extra = []
        out += [f"**{scenario}** ({n} seeds: {', '.join(str(d['config']['seed']) for d in docs)}; "
                f"{docs[0]['request']['num_forget']} of {docs[0]['request']['num_train']} rows deleted)", "",
                "| method | gap closed D_f | gap closed D_r | gap closed test | speed-up vs retrain | verdict ok "
                "| within noise floor |" + "".join(f" {k} |" for k in extra),
                "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
        for m in methods + ["none"]:
            rows = [next((r for r in d["results"] if r["method"] == m), None) for d in docs]
            rows = [(d, r) for d, r in zip(docs, rows) if r is not None]
            gaps = [" " + _fmt([r["metrics"].get(f"{s}/gap_closed") for _, r in rows]) + " " for s in SPLITS]
            ref = {id(d): next(x for x in d["results"] if x["method"] == "retrain")["wall_time_s"] for d, _ in rows}
            speed = [ref[id(d)] / r["wall_time_s"] for d, r in rows
                     if r.get("wall_time_s") and m not in ("none", "retrain")]
            ok = sum(r.get("verdict") == "ok" for _, r in rows)
            ind = sum(bool(r.get("indistinguishable")) for _, r in rows)
            out.append(f"| `{m}` |" + "|".join(gaps) + f"| {_fmt(speed, 1) if speed else '–'} | {ok}/{len(rows)} "
                       f"| {ind}/{len(rows)} |" + "".join(f" {_fmt([r['metrics'].get(k) for _, r in rows])} |"
                                                          for k in extra))
        floor = [" " + _fmt([d["noise_floor"].get(f"{s}/gap_closed") for d in docs]) + " " for s in SPLITS]
        out.append("| *noise floor* (a retrain vs the other two) |" + "|".join(floor) + "| | | |"
                   + " |" * len(extra))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(sys.argv[1]))
