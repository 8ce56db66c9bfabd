"""``Posterior``: the one currency of the package -- a distribution over the flat latent vector θ.

Every inference and unlearning method returns a ``Posterior`` over θ ∈ ℝ^d, the model's latent
sites in unconstrained space (see :mod:`inference.latent`). It is either Gaussian,

    q(θ) = N(μ, Σ),  with Σ held in one of the structures
      "diag"      Σ = diag(s²)                              (mean-field SVI, diagonal GGN)
      "lowrank"   Σ = F Fᵀ + diag(c)                        (low-rank SVI)
      "full"      Σ = L Lᵀ, L lower triangular               (full-rank SVI)
      "precision" Σ = Λ⁻¹                                     (Laplace: Λ = -∇² log p̃(θ*, D))

optionally restricted to a subset of coordinates (``active``; the rest are point masses at μ, as
in last-layer Laplace), or "empirical": S draws θ_s with self-normalised log-weights (NUTS,
importance reweighting), whose mean and covariance are the weighted moments.

It is immutable: methods return new objects and never modify the tensors they hold. It keeps a
reference to the model and the training data it was fitted on (needed to re-run the same inference
on retained data), and the options that produced it (``meta``). Files are written without pickle:
tensors in safetensors, everything else as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from .latent import BoundModel, LatentLayout

__all__ = ["Posterior", "STRUCTURES", "PosteriorFileError"]

FILE_FORMAT = "bayes-unlearn-posterior/2"  # /2: a checksum of the tensor bytes; /1 files load with a warning


class PosteriorFileError(ValueError):
    """A posterior file that cannot be trusted: not ours, corrupt, or written for another model."""


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

STRUCTURES = ("diag", "lowrank", "full", "precision", "empirical")
_TENSOR_FIELDS = ("loc", "scale", "cov_factor", "cov_diag", "scale_tril", "precision", "samples",
                  "log_weights", "active")
_REQUIRED = {"diag": ("scale",), "lowrank": ("cov_factor", "cov_diag"), "full": ("scale_tril",),
             "precision": ("precision",), "empirical": ("samples",)}


@dataclass(frozen=True, eq=False)
class Posterior:
    """A posterior over the flat unconstrained latent vector θ (see the module docstring).

    Attributes
    ----------
    loc : [d] mean (for "empirical", the weighted sample mean).
    structure : one of ``STRUCTURES``.
    layout : how θ splits into the model's latent sites.
    family : the inference family that produced it (e.g. "fullrank", "laplace", "nuts").
    scale, cov_factor, cov_diag, scale_tril, precision : the covariance, by structure; these are
        over the ``active`` coordinates only when ``active`` is given.
    samples, log_weights : draws [S, d] and their log-weights [S] for "empirical".
    active : optional long tensor of the coordinates that carry uncertainty.
    model : the Pyro model (not written to files; rebuilt from ``meta['model']`` for built-ins).
    x, y : the training data the posterior conditions on.
    meta : JSON-able facts: how it was fitted (``meta['fit']``), diagnostics, warnings.
    """

    loc: torch.Tensor
    structure: str
    layout: LatentLayout
    family: str
    scale: torch.Tensor | None = None
    cov_factor: torch.Tensor | None = None
    cov_diag: torch.Tensor | None = None
    scale_tril: torch.Tensor | None = None
    precision: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    active: torch.Tensor | None = None
    model: Callable | None = field(default=None, repr=False)
    x: torch.Tensor | None = field(default=None, repr=False)
    y: torch.Tensor | None = field(default=None, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        for name in _REQUIRED[self.structure]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.structure!r} posterior needs {name!r}")
        if self.loc.dim() != 1 or self.loc.shape[0] != self.layout.dim:
            raise ValueError(f"loc must have shape [{self.layout.dim}], got {tuple(self.loc.shape)}")
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            if t is not None and name != "active" and not torch.isfinite(t).all():
                raise ValueError(f"posterior {name} contains NaN or inf")
        if self.structure == "empirical" and self.log_weights is not None:
            if self.log_weights.shape != self.samples.shape[:1]:
                raise ValueError("log_weights must have one entry per sample")

    # -- basic facts -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def _k(self) -> int:
        return self.dim if self.active is None else len(self.active)

    def _active_cov(self) -> torch.Tensor:
        s = self.structure
        if s == "diag":
            return torch.diag(self.scale**2)
        if s == "lowrank":
            return self.cov_factor @ self.cov_factor.T + torch.diag(self.cov_diag)
        if s == "full":
            return self.scale_tril @ self.scale_tril.T
        if s == "precision":
            return torch.cholesky_inverse(_safe_cholesky(self.precision))
        w = self.weights()
        c = self.samples - self.loc
        return (c * w[:, None]).T @ c

    def covariance(self) -> torch.Tensor:
        """Dense [d, d] covariance (zeros outside ``active``)."""
        cov = self._active_cov()
        if self.active is None:
            return cov
        full = self.loc.new_zeros(self.dim, self.dim)
        full[self.active[:, None], self.active[None, :]] = cov
        return full

    def variance(self) -> torch.Tensor:
        """Marginal variances [d] (cheap for every structure except "precision")."""
        s = self.structure
        if s == "diag":
            v = self.scale**2
        elif s == "lowrank":
            v = self.cov_factor.pow(2).sum(-1) + self.cov_diag
        elif s == "full":
            v = self.scale_tril.pow(2).sum(-1)
        elif s == "precision":
            v = torch.diagonal(self._active_cov())
        else:
            w = self.weights()
            v = (w[:, None] * (self.samples - self.loc) ** 2).sum(0)
        if self.active is None:
            return v
        full = self.loc.new_zeros(self.dim)
        full[self.active] = v
        return full

    def weights(self) -> torch.Tensor:
        """Self-normalised weights of an "empirical" posterior (uniform when no log_weights)."""
        if self.structure != "empirical":
            raise ValueError("weights() is defined for empirical posteriors only")
        if self.log_weights is None:
            return torch.full((len(self.samples),), 1.0 / len(self.samples), dtype=self.samples.dtype)
        return torch.softmax(self.log_weights, dim=0)

    # -- distributions ---------------------------------------------------------------------------
    def _active_distribution(self) -> Distribution:
        loc = self.loc if self.active is None else self.loc[self.active]
        s = self.structure
        if s == "diag":
            return Independent(Normal(loc, self.scale), 1)
        if s == "lowrank":
            return LowRankMultivariateNormal(loc, self.cov_factor, self.cov_diag)
        if s == "full":
            return MultivariateNormal(loc, scale_tril=self.scale_tril)
        if s == "precision":
            return MultivariateNormal(loc, scale_tril=_precision_to_scale_tril(self.precision))
        return MultivariateNormal(loc, covariance_matrix=self._active_cov()
                                  + 1e-9 * torch.eye(len(loc), dtype=loc.dtype))

    def to_distribution(self) -> Distribution:
        """A torch ``Distribution`` over θ (Gaussian; "empirical" is moment-matched; requires no ``active``)."""
        if self.active is not None:
            raise ValueError("a posterior restricted to `active` coordinates is degenerate in the others; "
                             "use to_active_distribution() for the non-degenerate part")
        return self._active_distribution()

    def to_active_distribution(self) -> Distribution:
        """The Gaussian over the ``active`` coordinates (all coordinates when ``active`` is None)."""
        return self._active_distribution()

    def sample(self, num_samples: int, seed: int | None = 0) -> torch.Tensor:
        """Draws θ of shape [num_samples, d]; deterministic for a given seed (global RNG untouched)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if self.structure == "empirical":
                idx = torch.multinomial(self.weights(), num_samples, replacement=True)
                return self.samples[idx].clone()
            draws = self._active_distribution().sample((num_samples,))
        if self.active is None:
            return draws
        out = self.loc.expand(num_samples, self.dim).clone()
        out[:, self.active] = draws
        return out

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """log q(θ) for θ [..., d] (Gaussian structures; on ``active`` coordinates if restricted)."""
        if self.structure == "empirical":
            raise ValueError("an empirical posterior has no density; use to_distribution() for its Gaussian fit")
        t = theta if self.active is None else theta[..., self.active]
        return self._active_distribution().log_prob(t)

    def sample_sites(self, num_samples: int, seed: int | None = 0) -> dict[str, torch.Tensor]:
        """Draws of every latent site in constrained space: {name: [num_samples, *shape]}."""
        return self.layout.unpack(self.sample(num_samples, seed))

    def bound_model(self) -> BoundModel:
        if self.model is None or self.x is None:
            raise ValueError("this posterior carries no model/data; pass model= to Posterior.load")
        return BoundModel(self.model, self.x, self.y)

    def replace(self, **changes) -> "Posterior":
        """A copy with some fields changed (the original is untouched)."""
        return dataclasses.replace(self, **changes)

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path, include_data: bool = True) -> None:
        """Write to ``path`` (safetensors: tensors + JSON metadata; no pickle)."""
        from safetensors.torch import save_file

        tensors = {n: getattr(self, n).contiguous() for n in _TENSOR_FIELDS if getattr(self, n) is not None}
        if include_data and self.x is not None:
            tensors["x"] = self.x.contiguous()
            if self.y is not None:
                tensors["y"] = self.y.contiguous()
        model_cfg = self.model.config() if hasattr(self.model, "config") else None
        folder = Path(path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot save to {str(path)!r}: the folder {str(folder)!r} does not exist; "
                                    "create it first")
        if Path(path).is_dir():
            raise IsADirectoryError(f"cannot save to {str(path)!r}: it is a folder; give a file name")
        header = {"format": FILE_FORMAT, "structure": self.structure, "family": self.family,
                  "layout": self.layout.to_json(), "model": model_cfg, "meta": dict(self.meta),
                  "checksum": _checksum(tensors)}
        save_file(tensors, str(path), metadata={"bayes_unlearn": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path, model: Callable | None = None) -> "Posterior":
        """Read a file written by :meth:`save`. Built-in models are rebuilt from the file; pass
        ``model=`` for your own model (needed for predictions and unlearning)."""
        import warnings

        from safetensors import safe_open

        if Path(path).is_dir():
            raise IsADirectoryError(f"{str(path)!r} is a folder, not a posterior file; give the file written by save")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "bayes_unlearn" not in meta:
                    raise PosteriorFileError(f"{path} is not a bayes-unlearn posterior file")
                header = json.loads(meta["bayes_unlearn"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (PosteriorFileError, FileNotFoundError):
            raise
        except Exception as e:  # safetensors/JSON errors on a damaged file
            raise PosteriorFileError(f"{path} is corrupt or not a posterior file ({type(e).__name__}: {e})") from e
        if header.get("checksum") is not None:
            if _checksum(tensors) != header["checksum"]:
                raise PosteriorFileError(f"{path} is corrupt: its tensor data does not match the checksum written "
                                         "with it; use another copy or refit")
        else:
            warnings.warn(f"{path} has no checksum (format {header.get('format')}): its integrity cannot be checked; "
                          "save it again to add one", stacklevel=2)
        layout = LatentLayout.from_json(header["layout"])
        stored_cfg = header.get("model")
        if model is None and stored_cfg:
            from ..models import model_from_config

            model = model_from_config(stored_cfg)
        elif model is not None:
            given_cfg = model.config() if hasattr(model, "config") else None
            if stored_cfg and given_cfg is not None and given_cfg != stored_cfg:
                diff = sorted(k for k in set(stored_cfg) | set(given_cfg) if stored_cfg.get(k) != given_cfg.get(k))
                raise PosteriorFileError(f"{path} was written for model {stored_cfg}, not {given_cfg} (differs in "
                                         f"{diff}); pass the model it was fitted with, or none to rebuild it")
            x0 = tensors.get("x")
            if x0 is not None:
                given_layout = BoundModel(model, x0, tensors.get("y")).layout
                if given_layout.to_json() != layout.to_json():
                    raise PosteriorFileError(
                        f"{path} was written for a model with latent sites "
                        f"{[(d['name'], d['shape']) for d in layout.to_json()]}, but the given model has "
                        f"{[(d['name'], d['shape']) for d in given_layout.to_json()]}; pass the model it was fitted with")
        x, y = tensors.pop("x", None), tensors.pop("y", None)
        return cls(structure=header["structure"], family=header["family"], layout=layout, model=model, x=x, y=y,
                   meta=header["meta"], **tensors)

    def __repr__(self) -> str:
        return (f"Posterior(family={self.family!r}, structure={self.structure!r}, dim={self.dim}, "
                f"sites={self.layout.names})")


def _safe_cholesky(m: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        ev = torch.linalg.eigvalsh(m.double())
        raise ValueError(f"matrix is not positive definite (smallest eigenvalue {float(ev.min()):.3g}); "
                         "repair it explicitly (e.g. repair='clip') before use")
    return L


def _precision_to_scale_tril(prec: torch.Tensor) -> torch.Tensor:
    """Lower-triangular L with L Lᵀ = Λ⁻¹ (via the flipped Cholesky factor, as in torch)."""
    Lf = _safe_cholesky(torch.flip(prec, (-2, -1)))
    L_inv = torch.transpose(torch.flip(Lf, (-2, -1)), -2, -1)
    eye = torch.eye(prec.shape[-1], dtype=prec.dtype)
    return torch.linalg.solve_triangular(L_inv, eye, upper=False)


def gaussian_from_moments(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale_tril) of a Gaussian, adding the least jitter that makes cov factorise."""
    eye = torch.eye(len(mean), dtype=cov.dtype)
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        L, info = torch.linalg.cholesky_ex(cov + jitter * eye * max(1.0, float(cov.diagonal().mean())))
        if int(info) == 0:
            return mean, L
    raise ValueError("covariance is not positive definite even with jitter")

