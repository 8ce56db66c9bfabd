"""Bad input to the API gives one clear line naming the argument, before any work (issue 12, item 13)."""

from __future__ import annotations

import pytest
import torch

from bayes_unlearn.inference import fit, predict
from bayes_unlearn.models import BayesianLinearRegression
from bayes_unlearn.unlearning import unlearn, unlearn_sequential


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(30, generator=g)
    model = BayesianLinearRegression(in_dim=2)
    return model, x, y, fit(model, x, y, "laplace", progress=False)


@pytest.mark.parametrize("options, match", [
    ({"lr": "fast"}, "option lr must be a positive number, got 'fast'"),
    ({"lr": -0.1}, "option lr must be a positive number"),
    ({"num_steps": "100"}, "option num_steps must be an integer >= 1, got '100'"),
    ({"num_steps": 10.5}, "option num_steps must be an integer"),
    ({"window": True}, "option window must be an integer"),
    ({"num_particles": 0}, "option num_particles must be an integer >= 1"),
])
def test_fit_names_a_mistyped_option(small, options, match):
    model, x, y, _ = small
    x0, y0 = x.clone(), y.clone()
    with pytest.raises(ValueError, match=match):
        fit(model, x, y, "meanfield", progress=False, **options)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_wrong_feature_count_is_named_in_fit_and_predict(small):
    model, x, y, post = small
    with pytest.raises(ValueError, match="x has 3 features but the model takes in_dim=2"):
        fit(model, torch.randn(30, 3), y, "laplace", progress=False)
    with pytest.raises(ValueError, match="x has 3 features but the model takes in_dim=2"):
        predict(post, torch.randn(5, 3))


@pytest.mark.parametrize("method", ["psis", "rkl"])
def test_too_few_importance_draws(small, method):
    _, x, y, post = small
    with pytest.raises(ValueError, match="num_samples must be an integer >= 20"):
        unlearn(post, x[:2], y[:2], method, num_samples=1)


def test_sequential_requests_must_be_pairs(small):
    _, x, y, post = small
    with pytest.raises(ValueError, match=r"deletion request 0 must be a pair \(x_forget, y_forget\)"):
        unlearn_sequential(post, [x[:2]], "laplace-downdate")
    with pytest.raises(ValueError, match="deletion request 1 must be a pair"):
        unlearn_sequential(post, [(x[:2], y[:2]), (x[2:4],)], "laplace-downdate")


def test_run_refuses_a_non_empty_out_folder_unless_overwrite(tmp_path, capsys):
    """Stale results must not mix with a new run (issue 12, item 6)."""
    from bayes_unlearn.analysis.cli import _prepare_out, main
    from bayes_unlearn.analysis.config import ConfigError

    out = tmp_path / "res"
    (out / "posteriors").mkdir(parents=True)
    (out / "posteriors" / "old_method.nc").write_text("stale")
    (out / "report.md").write_text("old report")
    assert main(["run", "--quick", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert (out / "report.md").read_text() == "old report"  # nothing touched
    _prepare_out(out, overwrite=True)  # what `run --overwrite` does before the run
    assert list(out.iterdir()) == []
    (out / "notes.txt").write_text("mine")  # a folder with someone else's files is never cleared
    with pytest.raises(ConfigError, match="not results of `run`"):
        _prepare_out(out, overwrite=True)
    assert (out / "notes.txt").exists()


def test_run_all_skips_methods_that_need_another_model():
    """`run = ["all"]` means all that apply: L-CODEC needs a BayesianMLP (issue 12, item 14)."""
    from bayes_unlearn.analysis.config import load_config, merge, methods_to_run, resolve

    cfg = load_config(quick=True)
    assert "lcodec" in methods_to_run(cfg)
    linear = resolve(merge(cfg, {"model": {"name": "linear"}}))
    assert "lcodec" not in methods_to_run(linear) and "laplace-downdate" in methods_to_run(linear)


@pytest.mark.parametrize("override, key", [
    ({"inference": {"options": {"num_steps": "100"}}}, "inference.options"),
    ({"model": {"hidden": 16}}, "model.hidden"),
    ({"model": {"hidden": [16, "wide"]}}, "model.hidden"),
    ({"methods": {"options": {"eubo": {"num_steps": "100"}}}}, "methods.options.eubo.num_steps"),
    ({"methods": {"options": {"lm-refit": {"max_iters": 2.5}}}}, "methods.options.lm-refit.max_iters"),
])
def test_config_values_of_the_wrong_type_are_refused_before_any_work(override, key):
    """issue 12, item 5: these ran for minutes and crashed, or ran and marked the method failed."""
    from bayes_unlearn.analysis.config import ConfigError, load_config, merge, resolve

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(merge(load_config(quick=True), override))


# -- posterior files (issue 12, items 2 and 3) ----------------------------------------------------------
def test_a_flipped_byte_in_a_posterior_file_is_caught(small, tmp_path):
    from bayes_unlearn.inference.posterior import Posterior, PosteriorFileError

    _, _, _, post = small
    path = tmp_path / "p.safetensors"
    post.save(path)
    back = Posterior.load(path)
    assert torch.equal(back.loc, post.loc) and torch.equal(back.y, post.y)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # the last bytes are tensor data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(PosteriorFileError, match="corrupt"):
        Posterior.load(bad)
    bad.write_bytes(bytes(raw[:40]))  # truncated
    with pytest.raises(PosteriorFileError, match="corrupt"):
        Posterior.load(bad)


def test_loading_with_another_model_is_refused(tmp_path):
    from bayes_unlearn.inference.posterior import Posterior, PosteriorFileError
    from bayes_unlearn.models import BayesianMLP

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, generator=g), torch.randn(40, generator=g)
    a = BayesianMLP(1, (32, 16))
    post = fit(a, x, y, "laplace", progress=False, num_steps=20, lbfgs_steps=0, curvature="ggn", structure="diag")
    path = tmp_path / "mlp.safetensors"
    post.save(path)
    b = BayesianMLP(1, (16, 32))  # the same number of parameters (609), another net
    assert post.dim == 609
    with pytest.raises(PosteriorFileError, match="differs in \\['hidden'\\]"):
        Posterior.load(path, model=b)
    with pytest.raises(PosteriorFileError, match="noise"):
        Posterior.load(path, model=BayesianMLP(1, (32, 16), noise=0.3))

    def user_model(x, y=None):  # a plain Pyro model with other shapes, no config(): caught by its sites
        return b(x, y)

    with pytest.raises(PosteriorFileError, match="latent sites"):
        Posterior.load(path, model=user_model)
    assert torch.equal(Posterior.load(path, model=BayesianMLP(1, (32, 16))).loc, post.loc)


def test_a_posterior_saved_without_data_predicts_and_unlearn_says_it_needs_the_data(small, tmp_path):
    """issue 12, item 4."""
    from bayes_unlearn.inference.posterior import Posterior

    _, x, y, post = small
    path = tmp_path / "nodata.safetensors"
    post.save(path, include_data=False)
    back = Posterior.load(path)
    assert back.x is None
    a, b = predict(back, x[:5], linearised=True), predict(post, x[:5], linearised=True)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.std, b.std)
    with pytest.raises(ValueError, match="training data"):
        unlearn(back, x[:2], y[:2], "laplace-downdate")
