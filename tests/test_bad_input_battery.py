"""The bad-input battery (issue 12): over a hundred malformed or unusual inputs to the API, the configuration
and the CLI. Each case asserts the error type, a one-line message that names the problem, and that the
caller's tensors and posterior are unchanged; generated malformed tensors and configs come from hypothesis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayes_unlearn.analysis.cli import main
from bayes_unlearn.analysis.config import ConfigError, load_config, merge, resolve
from bayes_unlearn.inference import fit, predict
from bayes_unlearn.inference.posterior import Posterior, PosteriorFileError
from bayes_unlearn.models import BayesianLinearRegression
from bayes_unlearn import models as D
from bayes_unlearn.models.mlp import BayesianMLP
from bayes_unlearn.unlearning import unlearn, unlearn_sequential

NAN, INF = float("nan"), float("inf")


@dataclass
class Ctx:
    model: Any
    x: torch.Tensor
    y: torch.Tensor
    post: Posterior
    tmp: Any


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(30, generator=g)
    model = BayesianLinearRegression(in_dim=2)
    return Ctx(model, x, y, fit(model, x, y, "laplace", progress=False), tmp_path_factory.mktemp("bad"))


def _with(t: torch.Tensor, idx, value) -> torch.Tensor:
    t = t.clone()
    t[idx] = value
    return t


def _fit(c, **kw):
    args = {"model": c.model, "x": c.x, "y": c.y, "method": "laplace", "progress": False}
    args.update(kw)
    return fit(args.pop("model"), args.pop("x"), args.pop("y"), args.pop("method"), **args)


def _unl(c, method="laplace-downdate", xf=None, yf=None, **kw):
    return unlearn(c.post, c.x[:3] if xf is None else xf, c.y[:3] if yf is None else yf, method, **kw)


def _garbage(c):
    p = c.tmp / "garbage.safetensors"
    p.write_bytes(b"not a safetensors file" * 8)
    return Posterior.load(p)


def _truncated(c):
    p = c.tmp / "whole.safetensors"
    c.post.save(p)
    q = c.tmp / "truncated.safetensors"
    q.write_bytes(p.read_bytes()[:-40])
    return Posterior.load(q)


def _foreign(c):
    from safetensors.torch import save_file

    p = c.tmp / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    return Posterior.load(p)


# (id, call, exception type, regex the message must match)
API_CASES: list[tuple[str, Callable[[Ctx], Any], type, str]] = [
    # -- fit: data ----------------------------------------------------------------------------------
    ("fit-x-nan", lambda c: _fit(c, x=_with(c.x, (3, 1), NAN)), ValueError, r"x contains NaN or inf at row 3"),
    ("fit-x-inf", lambda c: _fit(c, x=_with(c.x, (0, 0), -INF)), ValueError, r"x contains NaN or inf at row 0"),
    ("fit-y-nan", lambda c: _fit(c, y=_with(c.y, 7, NAN)), ValueError, r"y contains NaN or inf at row 7"),
    ("fit-y-inf", lambda c: _fit(c, y=_with(c.y, 2, INF)), ValueError, r"y contains NaN or inf at row 2"),
    ("fit-y-2d", lambda c: _fit(c, y=c.y[:, None].repeat(1, 2)), ValueError, r"y must be 1-D"),
    ("fit-len-mismatch", lambda c: _fit(c, y=c.y[:-1]), ValueError, r"x has 30 rows but y has 29"),
    ("fit-empty", lambda c: _fit(c, x=c.x[:0], y=c.y[:0]), ValueError, r"empty data"),
    ("fit-x-3d", lambda c: _fit(c, x=c.x[:, :, None]), ValueError, r"x must be 1-D or 2-D"),
    ("fit-x-text", lambda c: _fit(c, x="abc"), ValueError, r"x could not be converted to a numeric array"),
    ("fit-x-complex", lambda c: _fit(c, x=c.x.to(torch.complex64)), ValueError, r"x must be real-valued"),
    ("fit-x-wrong-features", lambda c: _fit(c, x=torch.randn(30, 3)), ValueError, r"x has 3 features.*in_dim=2"),
    ("fit-y-missing", lambda c: fit(c.model, c.x, None, "laplace", progress=False), ValueError, r"y is required"),
    ("fit-x-none", lambda c: _fit(c, x=None), (ValueError, TypeError), r"\bx\b"),
    # -- fit: method, seed, options ------------------------------------------------------------------
    ("fit-method-typo", lambda c: _fit(c, method="laplac"), ValueError, r"unknown inference method 'laplac'"),
    ("fit-method-int", lambda c: _fit(c, method=3), ValueError, r"unknown inference method 3"),
    ("fit-seed-text", lambda c: _fit(c, seed="a"), ValueError, r"seed must be an integer, got str"),
    ("fit-seed-negative", lambda c: _fit(c, seed=-1), ValueError, r"seed must be a non-negative integer"),
    ("fit-seed-float", lambda c: _fit(c, seed=1.5), ValueError, r"seed must be an integer, got float"),
    ("fit-seed-bool", lambda c: _fit(c, seed=True), ValueError, r"seed must be an integer, got bool"),
    ("fit-unknown-option", lambda c: _fit(c, num_stpes=10), ValueError, r"unknown option\(s\) \['num_stpes'\]"),
    ("fit-svi-option-on-laplace", lambda c: _fit(c, rank=3), ValueError, r"unknown option\(s\) \['rank'\]"),
    ("fit-lr-text", lambda c: _fit(c, lr="fast"), ValueError, r"option lr must be a positive number, got 'fast'"),
    ("fit-lr-negative", lambda c: _fit(c, lr=-0.1), ValueError, r"option lr must be a positive number"),
    ("fit-lr-nan", lambda c: _fit(c, lr=NAN), ValueError, r"option lr must be a positive number"),
    ("fit-num-steps-text", lambda c: _fit(c, num_steps="100"), ValueError, r"option num_steps must be an integer"),
    ("fit-num-steps-float", lambda c: _fit(c, num_steps=10.5), ValueError, r"option num_steps must be an integer"),
    ("fit-num-steps-zero", lambda c: _fit(c, num_steps=0), ValueError, r"option num_steps must be an integer >= 1"),
    ("fit-window-bool", lambda c: _fit(c, window=True), ValueError, r"option window must be an integer"),
    ("fit-lbfgs-negative", lambda c: _fit(c, lbfgs_steps=-1), ValueError, r"option lbfgs_steps must be an integer >= 0"),
    ("fit-curvature", lambda c: _fit(c, curvature="foo"), ValueError, r"curvature must be one of 'exact', 'ggn'"),
    ("fit-structure", lambda c: _fit(c, structure="foo"), ValueError, r"structure must be one of 'full'"),
    ("fit-repair", lambda c: _fit(c, repair="foo"), ValueError, r"repair must be one of None, 'clip', 'damp'"),
    ("fit-optimizer", lambda c: _fit(c, optimizer="sgd"), ValueError, r"optimizer must be one of 'auto', 'adam-lbfgs', 'lm'"),
    ("fit-elbo", lambda c: _fit(c, method="meanfield", elbo="foo"), ValueError, r"elbo must be one of 'direct'"),
    ("fit-batch-zero", lambda c: _fit(c, method="meanfield", batch_size=0), ValueError, r"batch_size must be an integer >= 1"),
    ("fit-particles-zero", lambda c: _fit(c, method="meanfield", num_particles=0), ValueError, r"num_particles"),
    ("fit-rank-zero", lambda c: _fit(c, method="lowrank", rank=0), ValueError, r"option rank must be an integer >= 1"),
    ("fit-init-scale-zero", lambda c: _fit(c, method="fullrank", init_scale=0.0), ValueError, r"init_scale"),
    ("fit-nuts-chains", lambda c: _fit(c, method="nuts", num_chains=0), ValueError, r"num_chains must be an integer"),
    ("fit-nuts-samples", lambda c: _fit(c, method="nuts", num_samples=-1), ValueError, r"num_samples must be an integer"),
    ("fit-nuts-accept", lambda c: _fit(c, method="nuts", target_accept_prob="high"), ValueError, r"target_accept_prob"),
    ("fit-model-not-callable", lambda c: _fit(c, model=3), TypeError, r"model must be a callable Pyro program"),
    ("fit-init-not-posterior", lambda c: _fit(c, init="post"), TypeError, r"init must be a Posterior"),
    ("fit-init-other-family", lambda c: _fit(c, method="meanfield", init=c.post), ValueError, r"init posterior has family 'laplace'"),
    # -- predict -------------------------------------------------------------------------------------
    ("predict-x-nan", lambda c: predict(c.post, _with(c.x, (3, 1), NAN)), ValueError, r"x contains NaN or inf at row 3"),
    ("predict-wrong-features", lambda c: predict(c.post, torch.randn(4, 3)), ValueError, r"x has 3 features"),
    ("predict-samples-zero", lambda c: predict(c.post, c.x, num_samples=0), ValueError, r"num_samples must be a positive integer"),
    ("predict-samples-text", lambda c: predict(c.post, c.x, num_samples="a"), ValueError, r"num_samples must be a positive integer"),
    ("predict-samples-float", lambda c: predict(c.post, c.x, num_samples=2.5), ValueError, r"num_samples must be a positive integer"),
    ("predict-not-posterior", lambda c: predict("post", c.x), TypeError, r"posterior must be an inference.Posterior"),
    ("predict-empty", lambda c: predict(c.post, c.x[:0]), ValueError, r"empty data"),
    ("predict-seed", lambda c: predict(c.post, c.x, seed=-3), ValueError, r"seed must be a non-negative integer"),
    # -- unlearn ------------------------------------------------------------------------------------
    ("unlearn-method-typo", lambda c: _unl(c, "eubbo"), ValueError, r"unknown unlearning method 'eubbo'"),
    ("unlearn-not-posterior", lambda c: unlearn("p", c.x[:2], c.y[:2], "laplace-downdate"), TypeError,
     r"posterior must be an inference.Posterior"),
    ("unlearn-row-not-in-data", lambda c: _unl(c, xf=c.x[:2] + 1, yf=c.y[:2]), ValueError,
     r"forget row 0 .* is not in the posterior's training data"),
    ("unlearn-target-changed", lambda c: _unl(c, xf=c.x[:2], yf=c.y[:2] + 1e-3), ValueError,
     r"is not in the posterior's training data"),
    ("unlearn-x-nan", lambda c: _unl(c, xf=_with(c.x[:5], (3, 0), NAN), yf=c.y[:5]), ValueError,
     r"bad forget set: x contains NaN or inf at row 3"),
    ("unlearn-empty", lambda c: _unl(c, xf=c.x[:0], yf=c.y[:0]), ValueError, r"the forget set is empty"),
    ("unlearn-everything", lambda c: _unl(c, xf=c.x, yf=c.y), ValueError, r"the forget set is the whole training data"),
    ("unlearn-twice-listed", lambda c: _unl(c, xf=torch.cat([c.x[:2], c.x[:2]]), yf=torch.cat([c.y[:2], c.y[:2]])),
     ValueError, r"listed more often than it occurs"),
    ("unlearn-len-mismatch", lambda c: _unl(c, xf=c.x[:2], yf=c.y[:3]), ValueError, r"x has 2 rows but y has 3"),
    ("unlearn-wrong-features", lambda c: _unl(c, xf=torch.randn(2, 3), yf=c.y[:2]), ValueError,
     r"x_forget has 3 features but the training data has 2"),
    ("unlearn-unknown-option", lambda c: _unl(c, foo=1), TypeError, r"unknown option\(s\) \['foo'\] for 'laplace-downdate'"),
    ("unlearn-option-text", lambda c: _unl(c, "eubo", num_steps="10"), ValueError, r"option num_steps must be an integer"),
    ("unlearn-lr-negative", lambda c: _unl(c, "eubo", lr=-1.0), ValueError, r"option lr must be a positive number"),
    ("unlearn-seed-text", lambda c: _unl(c, seed="x"), ValueError, r"seed must be an integer, got str"),
    ("unlearn-seed-negative", lambda c: _unl(c, seed=-2), ValueError, r"seed must be a non-negative integer"),
    ("unlearn-mean-choice", lambda c: _unl(c, mean="hold"), ValueError, r"option mean must be one of 'newton', 'keep'"),
    ("unlearn-curvature-choice", lambda c: _unl(c, curvature="gnn"), ValueError, r"option curvature must be one of"),
    ("unlearn-lm-solver", lambda c: _unl(c, "lm-refit", solver="dul"), ValueError, r"option solver must be one of"),
    ("unlearn-window-zero", lambda c: _unl(c, "eubo", window=0), ValueError, r"option window must be an integer >= 1"),
    ("unlearn-elbo-refit-on-laplace", lambda c: _unl(c, "elbo-refit"), ValueError, r"use lm-refit for Laplace"),
    ("unlearn-lcodec-on-linear", lambda c: _unl(c, "lcodec"), ValueError, r"lcodec .* BayesianMLP only"),
    ("unlearn-damping-negative", lambda c: _unl(c, "newton-damped", damping=-1.0), ValueError, r"damping must be >= 0"),
    ("unlearn-rcond-negative", lambda c: _unl(c, "newton-pinv", rcond=-1.0), ValueError, r"rcond must lie in \[0, 1\)"),
    ("unlearn-psis-one-draw", lambda c: _unl(c, "psis", num_samples=1), ValueError, r"num_samples"),
    ("unlearn-rkl-few-draws", lambda c: _unl(c, "rkl", num_samples=5), ValueError, r"num_samples"),
    # -- unlearn_sequential -------------------------------------------------------------------------
    ("sequential-empty", lambda c: unlearn_sequential(c.post, [], "laplace-downdate"), ValueError, r"no deletion requests"),
    ("sequential-not-a-list", lambda c: unlearn_sequential(c.post, 5, "laplace-downdate"), TypeError,
     r"requests must be a list of \(x_forget, y_forget\) pairs"),
    ("sequential-text", lambda c: unlearn_sequential(c.post, "abc", "laplace-downdate"), TypeError, r"requests must be a list"),
    ("sequential-not-pairs", lambda c: unlearn_sequential(c.post, [c.x[:2]], "laplace-downdate"), ValueError,
     r"deletion request 0 must be a pair"),
    ("sequential-overlap", lambda c: unlearn_sequential(c.post, [(c.x[:2], c.y[:2]), (c.x[:2], c.y[:2])],
                                                         "laplace-downdate"), ValueError,
     r"deletion request 1: forget row 0 .* already"),
    ("sequential-on-failure", lambda c: unlearn_sequential(c.post, [(c.x[:2], c.y[:2])], "laplace-downdate",
                                                            on_failure="maybe"), ValueError, r"on_failure must be"),
    # -- posterior files ----------------------------------------------------------------------------
    ("save-missing-folder", lambda c: c.post.save(c.tmp / "no" / "such" / "p.safetensors"), FileNotFoundError,
     r"the folder .* does not exist"),
    ("save-to-a-folder", lambda c: c.post.save(c.tmp), IsADirectoryError, r"it is a folder"),
    ("load-missing", lambda c: Posterior.load(c.tmp / "nothere.safetensors"), FileNotFoundError, r"nothere"),
    ("load-a-folder", lambda c: Posterior.load(c.tmp), IsADirectoryError, r"is a folder, not a posterior file"),
    ("load-garbage", _garbage, PosteriorFileError, r"corrupt or not a posterior file"),
    ("load-truncated", _truncated, PosteriorFileError, r"corrupt"),
    ("load-foreign-safetensors", _foreign, PosteriorFileError, r"not a bayes-unlearn posterior file"),
    ("load-model-not-callable", lambda c: (c.post.save(c.tmp / "m.safetensors"),
                                           Posterior.load(c.tmp / "m.safetensors", model=3)), TypeError,
     r"model must be a callable"),
    # -- data sets and forget sets ------------------------------------------------------------------
    ("synthetic-n-zero", lambda c: D.synthetic_1d(n=0), ValueError, r"n must be at least 2"),
    ("synthetic-n-text", lambda c: D.synthetic_1d(n="a"), ValueError, r"n must be an integer"),
    ("synthetic-noise-negative", lambda c: D.synthetic_1d(n=10, noise=-1.0), ValueError, r"noise must be a finite non-negative"),
    ("synthetic-seed-float", lambda c: D.synthetic_1d(n=10, seed=0.5), ValueError, r"seed must be an integer"),
    ("forget-random-all", lambda c: D.forget_random(10, 11), ValueError, r"k=11 would forget all data"),
    ("forget-random-zero", lambda c: D.forget_random(10, 0), ValueError, r"empty forget set"),
    ("forget-fraction-above-one", lambda c: D.forget_fraction(10, 1.5), ValueError, r"fraction must be in \(0, 1\)"),
    ("forget-fraction-nan", lambda c: D.forget_fraction(10, NAN), ValueError, r"fraction must be in \(0, 1\)"),
    ("forget-region-reversed", lambda c: D.forget_region(c.x, 1.0, 0.0), ValueError, r"low must be smaller than high"),
    ("forget-region-empty", lambda c: D.forget_region(c.x, 100.0, 101.0), ValueError, r"empty forget set"),
    ("split-duplicates", lambda c: D.split(c.x, c.y, torch.tensor([1, 1])), ValueError, r"duplicate indices \[1\]"),
    ("split-out-of-range", lambda c: D.split(c.x, c.y, torch.tensor([100])), ValueError, r"index 100 out of range"),
    ("split-negative", lambda c: D.split(c.x, c.y, torch.tensor([-1])), ValueError, r"index -1 out of range"),
    ("split-float-indices", lambda c: D.split(c.x, c.y, torch.tensor([0.5])), ValueError, r"must be integers"),
    ("split-bool-mask", lambda c: D.split(c.x, c.y, torch.zeros(30, dtype=torch.bool)), ValueError, r"must be integers"),
    ("csv-missing", lambda c: D.load_csv(c.tmp / "nothere.csv", target="y"), FileNotFoundError, r"nothere.csv"),
    ("corrupt-mode", lambda c: D.corrupt_targets(c.y, torch.tensor([0, 1]), mode="flip"), ValueError, r"mode"),
    # -- models -------------------------------------------------------------------------------------
    ("mlp-width-zero", lambda c: BayesianMLP(1, (0,)), ValueError, r"hidden widths must be positive"),
    ("mlp-activation", lambda c: BayesianMLP(1, (8,), "foo"), ValueError, r"activation must be one of"),
    ("mlp-noise-negative", lambda c: BayesianMLP(1, (8,), noise=-0.1), ValueError, r"noise must be positive"),
    ("mlp-in-dim-zero", lambda c: BayesianMLP(0, (8,)), ValueError, r"in_dim .* must be positive"),
    ("mlp-prior-scale", lambda c: BayesianMLP(1, (8,), prior_scale="foo"), ValueError, r"prior_scale must be"),
    ("linear-in-dim", lambda c: BayesianLinearRegression(in_dim=-1), ValueError, r"in_dim must be a positive integer"),
    ("linear-noise-zero", lambda c: BayesianLinearRegression(in_dim=2, noise=0.0), ValueError, r"noise must be positive"),
    ("linear-prior-nan", lambda c: BayesianLinearRegression(in_dim=2, prior_scale=NAN), ValueError, r"prior_scale"),
]


def _state(c: Ctx) -> list[torch.Tensor]:
    p = c.post
    return [c.x, c.y] + [t for t in (p.loc, p.precision, p.x, p.y) if t is not None]


@pytest.mark.parametrize("call, exc, match", [pytest.param(*case[1:], id=case[0]) for case in API_CASES])
def test_api_bad_input_is_one_clear_line_and_changes_nothing(ctx, call, exc, match):
    before = [t.clone() for t in _state(ctx)]
    with pytest.raises(exc, match=match) as info:
        call(ctx)
    assert len(str(info.value).strip().splitlines()) == 1, str(info.value)  # one line
    assert all(torch.equal(a, b) for a, b in zip(before, _state(ctx)))   # nothing changed


# -- configuration: refused by `resolve`, naming the key, before any work ------------------------------------
CONFIG_CASES = [
    ({"seed": -1}, "seed"),
    ({"seed": "zero"}, "seed"),
    ({"colour": 1}, "colour"),
    ({"data": {"name": "mnist"}}, "data"),
    ({"data": {"n": "many"}}, r"\[data\] synthetic_1d: n must be an integer"),
    ({"data": {"n": 1}}, r"\[data\] synthetic_1d: n must be at least 2"),
    ({"data": {"noise": -0.5}}, "noise"),
    ({"data": {"nn": 10}}, "nn"),
    ({"model": {"name": "transformer"}}, "model"),
    ({"model": {"hidden": 16}}, "model.hidden"),
    ({"model": {"hidden": [16, "wide"]}}, "model.hidden"),
    ({"model": {"activation": "gelu"}}, "activation"),
    ({"model": {"hiden": [8]}}, "hiden"),
    ({"inference": {"method": "vi"}}, "inference.method"),
    ({"inference": {"options": {"num_steps": "100"}}}, "inference.options"),
    ({"inference": {"options": {"curvature": "hessian"}}}, "curvature"),
    ({"inference": {"options": {"rank": 4}}}, "rank"),
    ({"forget": {"kind": "everything"}}, "forget"),
    ({"forget": {"kind": "random", "fraction": 1.5}}, "fraction"),
    ({"forget": {"kind": "random", "size": 0}}, "forget"),
    ({"forget": {"kind": "region", "low": 2.0, "high": 1.0}}, "low"),
    ({"forget": {"kind": "region", "low": 10.0, "high": 11.0}}, "forget"),
    ({"forget": {"kind": "indices", "indices": [0, 0]}}, "duplicate"),
    ({"methods": {"run": ["eubbo"]}}, "eubbo"),
    ({"methods": {"run": "eubo"}}, "methods.run"),
    ({"methods": {"skip": ["retrain"]}}, "retrain"),
    ({"methods": {"options": {"eubo": {"num_steps": "100"}}}}, r"methods\.options\.eubo\.num_steps"),
    ({"methods": {"options": {"eubo": {"nm_steps": 100}}}}, "nm_steps"),
    ({"methods": {"options": {"laplace-downdate": {"mean": "hold"}}}}, r"methods\.options\.laplace-downdate\.mean"),
    ({"methods": {"options": {"lm-refit": {"max_iters": 2.5}}}}, r"methods\.options\.lm-refit\.max_iters"),
    ({"methods": {"options": {"lm-refit": {"solver": "dul"}}}}, r"methods\.options\.lm-refit\.solver"),
    ({"methods": {"options": {"nosuch": {}}}}, "nosuch"),
    ({"analysis": {"threads": "two"}}, "analysis.threads"),
    ({"analysis": {"references": 0}}, "references"),
    ({"analysis": {"predictive": "exact"}}, "predictive"),
    ({"analysis": {"figures": "yes"}}, "figures"),
]


@pytest.mark.parametrize("override, key", CONFIG_CASES, ids=[k for _, k in CONFIG_CASES])
def test_config_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as info:
        cfg = merge(load_config(quick=True), override)
        resolve(cfg)
        from bayes_unlearn.analysis.experiment import _plan  # the data-dependent checks `run` makes before any fitting

        _plan(cfg)
    assert len(str(info.value).strip().splitlines()) == 1


# -- the command line: exit status, one line on stderr, never a traceback ------------------------------------
def _cfg_file(tmp_path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


CLI_CASES = [
    ("missing-config", lambda t: ["run", "--config", str(t / "nope.toml")], 2, "nope.toml"),
    ("config-not-toml", lambda t: ["run", "--config", _cfg_file(t, "seed = = 1\n")], 2, "TOML"),
    ("config-bad-key", lambda t: ["run", "--config", _cfg_file(t, "[model]\nhiden = [8]\n")], 2, "hiden"),
    ("config-bad-method", lambda t: ["run", "--config", _cfg_file(t, "[methods]\nrun = ['eubbo']\n")], 2, "eubbo"),
    ("config-bad-choice", lambda t: ["run", "--config", _cfg_file(
        t, "[methods.options.laplace-downdate]\nmean = 'hold'\n")], 2, "mean"),
    ("out-is-a-file", lambda t: ["run", "--quick", "--out", str(_file(t))], 2, "is a file"),
    ("out-not-empty", lambda t: ["run", "--quick", "--out", str(_full(t))], 2, "not empty"),
    ("sweep-missing-config", lambda t: ["sweep", "--config", str(t / "nope.toml"), "--out", str(t / "s")], 2, "nope.toml"),
    ("sweep-no-scenarios", lambda t: ["sweep", "--config", _cfg_file(t, "seeds = [0]\n"), "--out", str(t / "s")], 2,
     "scenarios"),
    ("sweep-bad-scenario-key", lambda t: ["sweep", "--config", _cfg_file(
        t, "seeds = [0]\n[scenarios.a.model]\nhiden = [8]\n"), "--out", str(t / "s")], 2, "hiden"),
]


def _file(t):
    p = t / "afile"
    p.write_text("x")
    return p


def _full(t):
    p = t / "full"
    p.mkdir()
    (p / "report.md").write_text("old")
    return p


@pytest.mark.parametrize("argv, code, needle", [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES])
def test_cli_bad_input_exits_with_one_line(tmp_path, capsys, argv, code, needle):
    assert main(argv(tmp_path) + ["--no-progress"]) == code
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("argv", [["run", "--seed", "abc"], ["run", "--quick", "--bogus"], ["nosuchcommand"],
                                  ["sweep", "--config", "x.toml"], ["sweep", "--config", "x", "--out", "o",
                                                                    "--engine", "spark"]])
def test_cli_usage_errors_exit_2_without_a_traceback(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


# -- generated malformed tensors and configs (hypothesis) --------------------------------------------------
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(rows=st.integers(1, 12), cols=st.integers(1, 4), where=st.data(),
       bad=st.sampled_from([NAN, INF, -INF]), target=st.booleans())
def test_generated_non_finite_data_is_refused_naming_the_row(rows, cols, where, bad, target):
    x = torch.randn(rows, cols)
    y = torch.randn(rows)
    i = where.draw(st.integers(0, rows - 1))
    if target:
        y[i] = bad
    else:
        x[i, where.draw(st.integers(0, cols - 1))] = bad
    x0, y0 = x.clone(), y.clone()
    with pytest.raises(ValueError, match=rf"{'y' if target else 'x'} contains NaN or inf at row {i}"):
        fit(BayesianLinearRegression(in_dim=cols), x, y, "laplace", progress=False)
    assert torch.equal(x.nan_to_num(), x0.nan_to_num()) and torch.equal(y.nan_to_num(), y0.nan_to_num())


@_SETTINGS
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4))
def test_generated_shapes_either_fit_the_convention_or_are_refused(shape):
    x = torch.randn(*shape) if shape else torch.tensor(1.0)
    n = shape[0] if shape else 0
    y = torch.randn(n) if n else torch.randn(0)
    ok = len(shape) in (1, 2) and n >= 1 and (len(shape) == 1 or shape[1] >= 1)
    if ok:
        x2 = x[:, None] if x.dim() == 1 else x
        D.as_regression_tensors(x2, y)  # accepted: the [N, D] convention
        return
    with pytest.raises(ValueError, match=r"\bx\b|empty|features|rows"):
        D.as_regression_tensors(x, y)


_BAD_VALUES = st.one_of(st.text(min_size=1, max_size=5), st.just(-1), st.just(0), st.just(2.5), st.booleans(),
                        st.lists(st.integers(), max_size=2))


@_SETTINGS
@given(key=st.sampled_from(["num_steps", "lr", "window", "lbfgs_steps", "num_particles", "batch_size"]),
       value=_BAD_VALUES)
def test_generated_inference_options_are_checked_before_any_fit(key, value):
    from bayes_unlearn.inference.fit import check_option_types

    try:
        check_option_types({key: value})
    except ValueError as e:  # refused: the message names the option
        assert key in str(e) and len(str(e).splitlines()) == 1
        with pytest.raises(ConfigError, match="inference.options"):
            resolve(merge(load_config(quick=True), {"inference": {"options": {key: value}}}))
        return
    # accepted values are numbers of the right kind: a positive number for lr, a non-negative integer otherwise
    assert not isinstance(value, (str, bool, list))
    assert value > 0 if key == "lr" else (isinstance(value, int) and value >= 0)


def test_the_battery_holds_at_least_a_hundred_cases():
    assert len(API_CASES) + len(CONFIG_CASES) + len(CLI_CASES) + 5 >= 100
