"""The README's facade example runs as written (``import bayes_unlearn as bu``: fit → unlearn → predict)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_facade_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (facade,) = [b for b in blocks if b.startswith("import bayes_unlearn as bu")]
    scope: dict = {}
    exec(compile(facade, "README.md (facade example)", "exec"), scope)
    data, post, result, pred = scope["data"], scope["post"], scope["result"], scope["pred"]
    assert post.structure == "precision" and result.posterior.structure == "precision"
    assert result.verdict["verdict"] in ("ok", "uncertain", "failed") and result.method in ("auto",)
    assert pred.mean.shape == data.y_test.shape and bool((pred.std > 0).all())
    # the region was forgotten: the unlearned posterior conditions on fewer rows than the original
    assert len(result.posterior.x) == len(post.x) - len(scope["idx"])
