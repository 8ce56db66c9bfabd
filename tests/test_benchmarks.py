"""``python -m benchmarks.run --quick`` runs end to end and writes a well-formed result.

No timed assertions: only the JSON schema, finite ratios, and that the figure and tables exist.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives in the repo root
from benchmarks.run import main  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--out", str(out)]) == 0
    with open(out / "benchmarks.json") as f:
        return out, json.load(f)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_quick_benchmark_schema(quick):
    out, res = quick
    assert (out / "benchmarks.png").stat().st_size > 1000
    assert res["quick"] is True and {"svi", "grid", "params", "scaling", "targets"} <= set(res)
    svi = res["svi"]
    assert set(svi["ms_per_step"]) == {"stock", "direct-eager", "direct"}
    assert all(_finite(v) and v > 0 for v in svi["ms_per_step"].values())
    assert _finite(svi["speedup_total"]) and _finite(svi["speedup_overhead"]) and svi["profile"]["stock"]
    for case in res["grid"] + res["params"]:
        for cell in case["cells"]:
            assert _finite(cell["retrain_s"]) and cell["num_forget"] >= 1
            for row in cell["methods"]:
                assert "error" not in row, row
                assert _finite(row["unlearn_s"]) and _finite(row["speedup"]) and _finite(row["gap_closed"])
    # laplace-downdate is exact for the conjugate model: it closes the whole gap
    blr = res["grid"][0]["cells"][0]
    assert next(r for r in blr["methods"] if r["method"] == "laplace-downdate")["gap_closed"] > 0.99
    sc = res["scaling"]
    assert all(len(v) == len(sc["sizes"]) for v in sc["unlearn_s"].values())
    assert all(_finite(v) for v in sc["ratio_largest_to_smallest"].values())
    for t in res["targets"].values():
        assert t["met"] in (True, False, None) and "goal" in t
