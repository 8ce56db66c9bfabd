"""Any :class:`~inference.posterior.Posterior` as an ArviZ ``InferenceData`` (and netCDF file).

A posterior lives over the flat unconstrained vector θ ∈ ℝ^d (see :mod:`inference.latent`). Each
draw θ_s is mapped to the model's latent sites in CONSTRAINED space by the layout,

    θ_s  ↦  {site: T_site(θ_s[slice_site]).reshape(site.shape)},   T_site = biject_to(site.support),

(``LatentLayout.unpack``, the same map as ``Posterior.sample_sites``), so a positive scale appears
as a positive number, not its logarithm. :func:`to_inference_data` fills the groups

    posterior                  one variable per latent site, dims (chain, draw, <site>_dim_k...)
    log_likelihood             log p(y_i | x_i, θ_s) on the training data, dims (chain, draw, obs_id)
    posterior_predictive       one y draw per θ_s at the training inputs, dims (chain, draw, obs_id)
    observed_data              y, dims (obs_id,)
    constant_data              x, dims (obs_id, feature)
    predictions                only with ``x_new``: y draws (<obs>) and the observation means
                               m(x, θ_s) (<obs>_mean) at x_new, dims (chain, draw, pred_id)
    predictions_constant_data  only with ``x_new``: x_new, dims (pred_id, feature)

where <obs> is the name of the model's observed site (e.g. "obs"). Which draws are used:

* Gaussian structures: ``num_samples`` i.i.d. draws with ``seed``, stored as ONE chain (splitting
  i.i.d. draws into chains would only make R-hat look meaningful; :func:`summary` therefore
  reports statistics without R-hat/ESS for them).
* "empirical" with uniform weights (NUTS): all stored draws, ``num_samples`` is ignored; NUTS
  draws keep their chains (``meta['diagnostics']['num_chains']``, chains are stored one after
  another), otherwise one chain.
* "empirical" with non-uniform weights (importance reweighting): ``num_samples`` draws resampled
  multinomially with ``seed`` (``Posterior.sample``) so that the group holds equally weighted
  draws; ``attrs['draws']`` says so.

Posterior-predictive y draws are Gaussian around m(x, θ_s) with variance v(x, θ_s)
(``Prediction.sample``). ``idata.attrs`` (copied to ``idata.posterior.attrs``) hold family, structure, seed, num_samples (draws per chain ×
chains actually stored), the fit options and the unlearning history as JSON strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import torch

from ..inference.posterior import Posterior
from ..inference.predict import Prediction

__all__ = ["to_inference_data", "save_netcdf", "summary", "psis_khat", "linearised_loo", "loo_numbers"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _draws(posterior: Posterior, num_samples: int, seed: int) -> tuple[torch.Tensor, int, str]:
    """(θ [C·S, d] chain-major, number of chains C, description of the draws)."""
    if posterior.cov.gaussian:
        return posterior.sample(num_samples, seed=seed), 1, f"{num_samples} iid draws of the Gaussian (seed {seed})"
    lw = posterior.log_weights
    if lw is not None and not bool((lw == lw[0]).all()):
        return (posterior.sample(num_samples, seed=seed), 1,
                f"{num_samples} draws resampled multinomially (seed {seed}) from {len(lw)} weighted draws")
    diag = posterior.meta.get("diagnostics") or {}
    chains = diag.get("num_chains") if isinstance(diag, dict) else None
    n = len(posterior.samples)
    if not (isinstance(chains, int) and chains >= 1 and n % chains == 0 and diag.get("num_samples") == n // chains):
        chains = 1
    return posterior.samples, chains, f"all {n} stored equally weighted draws ({chains} chain(s))"


def to_inference_data(posterior: Posterior, *, num_samples: int = 500, seed: int = 0,
                      x_new: torch.Tensor | None = None) -> az.InferenceData:
    """Convert ``posterior`` (with its model and training data) to ``az.InferenceData``.

    See the module docstring for the groups, dims and which draws are used. ``x_new`` [M, D] adds
    ``predictions`` and ``predictions_constant_data``. Deterministic for a given ``seed``.
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be an inference.Posterior, got {type(posterior).__name__}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if posterior.model is None or posterior.x is None or posterior.y is None:
        raise ValueError("the posterior carries no model and training data (x, y), which the log_likelihood and "
                         "posterior_predictive groups need; fit it with inference.fit, or Posterior.load a file "
                         "written with include_data=True (pass model= for your own model)")
    x, y = posterior.x, posterior.y
    if x_new is not None:
        x_new = torch.as_tensor(x_new, dtype=x.dtype)
        x_new = x_new[:, None] if x_new.dim() == 1 else x_new
        if x_new.dim() != 2 or x_new.shape[1] != x.shape[1] or len(x_new) == 0:
            raise ValueError(f"x_new must have shape [M, {x.shape[1]}] with M >= 1, got {tuple(x_new.shape)}")
    draws, chains, how = _draws(posterior, int(num_samples), seed)
    theta = draws.to(x.dtype)  # the model runs in the data's dtype; the sites keep the posterior's
    per_chain = len(theta) // chains
    bound = posterior.bound_model()
    obs = bound.obs_name

    def shaped(t: torch.Tensor) -> np.ndarray:  # [C·S, ...] -> [C, S, ...]
        return _np(t).reshape((chains, per_chain) + tuple(t.shape[1:]))

    def y_draws(xs: torch.Tensor, seed_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, v = bound.predictive_moments(theta, xs)
        w = torch.full((len(theta),), 1.0 / len(theta), dtype=m.dtype)
        epi = m.var(0, unbiased=False)
        pred = Prediction(mean=m.mean(0), std=(epi + v.mean(0)).sqrt(), epistemic_std=epi.sqrt(), means=m,
                          variances=v, weights=w)
        return pred.sample(seed + seed_offset), m

    with torch.no_grad():
        sites = posterior.layout.unpack(draws)
        loglik = bound.log_likelihood(theta, x, y)
        y_rep, _ = y_draws(x, 1)
        groups: dict[str, Any] = {}
        if x_new is not None:
            y_new, m_new = y_draws(x_new, 2)
            groups = {"predictions": {obs: shaped(y_new), f"{obs}_mean": shaped(m_new)},
                      "predictions_constant_data": {"x": _np(x_new)}}
    dims: dict[str, list[str]] = {obs: ["obs_id"], "x": ["obs_id", "feature"]}
    pred_dims = {obs: ["pred_id"], f"{obs}_mean": ["pred_id"], "x": ["pred_id", "feature"]}
    attrs = {"family": posterior.family, "structure": posterior.structure, "seed": int(seed),
             "num_samples": int(len(theta)), "num_chains": int(chains), "draws": how,
             "observed_site": obs, "latent_sites": json.dumps(posterior.layout.names),
             "fit": json.dumps(posterior.meta.get("fit"), default=str),
             "unlearning": json.dumps(posterior.meta.get("unlearning", []), default=str)}
    idata = az.from_dict(
        posterior={k: shaped(v) for k, v in sites.items()},
        log_likelihood={obs: shaped(loglik)},
        posterior_predictive={obs: shaped(y_rep)},
        observed_data={obs: _np(y)},
        constant_data={"x": _np(x)},
        dims=dims, pred_dims=pred_dims, attrs=attrs, **groups)
    idata.posterior.attrs.update(attrs)  # from_dict puts attrs on the InferenceData only; tools read the group's
    if x_new is not None:  # ArviZ 0.23 from_dict ignores pred_dims for predictions_constant_data
        idata.rename({"obs_id": "pred_id"}, groups="predictions_constant_data", inplace=True)
    return idata


def save_netcdf(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to ``path`` (netCDF4/HDF5 via h5netcdf; parent folders are created)."""
    import importlib.util

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = "netcdf4" if importlib.util.find_spec("netCDF4") is not None else "h5netcdf"
    from .files import atomic_path

    with atomic_path(path) as tmp:  # a half-written file never replaces a good one
        idata.to_netcdf(str(tmp), engine=engine)
    return path


def summary(idata: az.InferenceData, **kwargs: Any):
    """``az.summary`` of the posterior group -> pandas.DataFrame.

    With a single chain (i.i.d. Gaussian draws, resampled draws) R-hat and ESS are not meaningful,
    so ``kind="stats"`` is used unless the caller passes ``kind``.
    """
    if "posterior" not in idata.groups():
        raise ValueError("idata has no posterior group; build it with to_inference_data")
    if idata.posterior.sizes["chain"] < 2:
        kwargs.setdefault("kind", "stats")
    return az.summary(idata, group="posterior", **kwargs)


def psis_khat(posterior: Posterior, x_forget: Any, y_forget: Any, num_samples: int = 1000, seed: int = 0) -> float:
    """Pareto k̂ of importance-reweighting ``posterior`` by 1 / p(D_f | θ) (reliable below 0.7).

    Reuses the "psis" unlearning method (:mod:`unlearning.reweighting`, ``az.psislw``); the forget
    rows must be in the posterior's training data (as for ``unlearn``).
    """
    from ..unlearning.base import locate_forget_set
    from ..unlearning.reweighting import psis

    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    fs = locate_forget_set(posterior, x_forget, y_forget)
    return float(psis(posterior, fs, seed=seed, num_samples=int(num_samples))["diagnostics"]["pareto_k"])


def linearised_loo(posterior: Posterior, *, num_samples: int = 500, seed: int = 0) -> tuple[float, float]:
    """PSIS-LOO (Vehtari, Gelman & Gabry, 2017) of the linearised ("GLM") predictive on the training data:
    ``(elpd_loo, max Pareto k̂)``.

    For a net, sampling θ from a whole-net Gaussian and running the net gives log-likelihoods far below
    the predictive the metrics use (measured: elpd_loo −8,508 on the default BNN, NLL 0.43 per point). The
    linearised model is the one ``predict(..., linearised=True)`` scores: for θ_s ~ q,

        f_s(x_i) = m(x_i; μ) + J_i (θ_s − μ),   log p(y_i | θ_s) = log N(y_i | f_s(x_i), σ_i²(μ)),

    with J_i = ∂m(x_i; θ)/∂θ at μ. Needs a Normal observation whose scale does not depend on θ
    (``NotImplementedError`` otherwise).
    """
    from ..inference.curvature import per_example_jacobians

    if posterior.model is None or posterior.x is None or posterior.y is None:
        raise ValueError("the posterior carries no model and training data (x, y); LOO needs both")
    bound = posterior.bound_model()
    x, y = posterior.x.double(), posterior.y.double()
    mu = posterior.loc.double()
    J, Js, m, s = per_example_jacobians(bound, x, mu)
    if Js is not None:
        raise NotImplementedError("the observation's scale depends on θ: the linearised predictive keeps it fixed")
    draws, chains, _ = _draws(posterior, int(num_samples), seed)
    f = m.double() + (draws.double() - mu) @ J.T.double()          # [S, N]
    ll = torch.distributions.Normal(f, s.double()).log_prob(y)       # [S, N]
    per_chain = len(draws) // chains
    idata = az.from_dict(posterior={"theta": _np(draws.double()).reshape(chains, per_chain, -1)},
                         log_likelihood={"obs": _np(ll).reshape(chains, per_chain, -1)})
    return loo_numbers(idata)


def loo_numbers(idata: az.InferenceData) -> tuple[float, float]:
    """``(elpd_loo, max Pareto k̂)`` of ``az.loo`` on ``idata``'s log_likelihood group (its k̂ warning is
    silenced: the max k̂ is returned for the caller to flag)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(idata, pointwise=True)
    return float(res.elpd_loo), float(np.max(res.pareto_k))
