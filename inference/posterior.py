"""``Posterior``: the one currency of the package -- a distribution over the flat latent vector θ.

Every inference and unlearning method returns a ``Posterior`` over θ ∈ ℝ^d, the model's latent
sites in unconstrained space (see :mod:`inference.latent`). It is either Gaussian,

    q(θ) = N(μ, Σ),  with Σ held by one covariance object (``cov``, :mod:`inference.covariance`)
      Diag       "diag"      Σ = diag(s²)                     (mean-field SVI, diagonal GGN)
      LowRank    "lowrank"   Σ = F Fᵀ + diag(c)               (low-rank SVI)
      Full       "full"      Σ = L Lᵀ, L lower triangular      (full-rank SVI)
      Precision  "precision" Σ = Λ⁻¹                            (Laplace: Λ = -∇² log p̃(θ*, D))

optionally restricted to a subset of coordinates (the covariance's ``active``; the rest are point
masses at μ, as in last-layer Laplace), or ``Empirical`` ("empirical"): S draws θ_s with
self-normalised log-weights (NUTS, importance reweighting), whose mean and covariance are the
weighted moments. The structure-specific maths (sampling, densities, Σv, Λv, diag(JΣJᵀ), the Laplace
down-date) lives in the covariance classes; this class scatters their active coordinates into ℝ^d and
writes files.

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
from torch.distributions import Distribution

from .covariance import STRUCTURES, Covariance, structure_class
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


@dataclass(frozen=True, eq=False)
class Posterior:
    """A posterior over the flat unconstrained latent vector θ (see the module docstring).

    Attributes
    ----------
    loc : [d] mean (for weighted draws, their weighted mean).
    cov : the covariance, a :class:`~inference.covariance.Covariance` (``Diag``, ``LowRank``, ``Full``,
        ``Precision``, ``Empirical``), over its ``active`` coordinates when it has them.
    layout : how θ splits into the model's latent sites.
    family : the inference family that produced it (e.g. "fullrank", "laplace", "nuts").
    model : the Pyro model (not written to files; rebuilt from ``meta['model']`` for built-ins).
    x, y : the training data the posterior conditions on.
    meta : JSON-able facts: how it was fitted (``meta['fit']``), diagnostics, warnings.

    ``structure`` (the covariance's name), ``active`` and the covariance's tensors by name (``scale``,
    ``cov_factor``, ``cov_diag``, ``scale_tril``, ``precision``, ``samples``, ``log_weights``: None when the
    structure has no such tensor) are read-only properties.
    """

    loc: torch.Tensor
    cov: Covariance
    layout: LatentLayout
    family: str
    model: Callable | None = field(default=None, repr=False)
    x: torch.Tensor | None = field(default=None, repr=False)
    y: torch.Tensor | None = field(default=None, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.cov, Covariance):
            raise TypeError(f"cov must be a Covariance (one of {sorted(STRUCTURES)}, from inference.covariance), "
                            f"got {type(self.cov).__name__}")
        if self.loc.dim() != 1 or self.loc.shape[0] != self.layout.dim:
            raise ValueError(f"loc must have shape [{self.layout.dim}], got {tuple(self.loc.shape)}")
        if not torch.isfinite(self.loc).all():
            raise ValueError("posterior loc contains NaN or inf")
        active = self.cov.active
        if active is None and self.cov.size != self.dim:
            raise ValueError(f"the covariance is over {self.cov.size} coordinates but θ has {self.dim}; give the "
                             "covariance active= coordinates for a subset")
        if active is not None and len(active) and not (0 <= int(active.min()) and int(active.max()) < self.dim):
            raise ValueError(f"active coordinates must lie in [0, {self.dim}), got {int(active.min())}.."
                             f"{int(active.max())}")

    # -- basic facts -----------------------------------------------------------------------------
    @property
    def structure(self) -> str:
        """The covariance structure's name (as in files and reports)."""
        return self.cov.name

    @property
    def active(self) -> torch.Tensor | None:
        """The coordinates that carry uncertainty (None: all of them)."""
        return self.cov.active

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def cov_tensor(self, name: str) -> torch.Tensor | None:
        """The covariance's tensor ``name`` (see its class's ``tensor_fields``), None when it has no such one."""
        return self.cov.fields().get(name)

    scale = property(lambda self: self.cov_tensor("scale"), doc="Diag: the marginal stds [k], else None.")
    cov_factor = property(lambda self: self.cov_tensor("cov_factor"), doc="LowRank: F [k, r], else None.")
    cov_diag = property(lambda self: self.cov_tensor("cov_diag"), doc="LowRank: c [k], else None.")
    scale_tril = property(lambda self: self.cov_tensor("scale_tril"), doc="Full: L [k, k], else None.")
    precision = property(lambda self: self.cov_tensor("precision"), doc="Precision: Λ [k, k], else None.")
    samples = property(lambda self: self.cov_tensor("samples"), doc="Empirical: draws [S, k], else None.")
    log_weights = property(lambda self: self.cov_tensor("log_weights"), doc="Empirical: log-weights [S] or None.")

    @property
    def active_loc(self) -> torch.Tensor:
        """μ over the active coordinates [k]."""
        return self.loc if self.active is None else self.loc[self.active]

    def _embed(self, draws: torch.Tensor) -> torch.Tensor:
        """[n, k] draws of the active coordinates placed into the mean: [n, d]."""
        if self.active is None:
            return draws
        out = self.loc.expand(len(draws), self.dim).clone()
        out[:, self.active] = draws
        return out

    def _scatter(self, v: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return v
        full = self.loc.new_zeros(self.dim)
        full[self.active] = v
        return full

    def covariance(self) -> torch.Tensor:
        """Dense [d, d] covariance (zeros outside ``active``)."""
        cov = self.cov.dense()
        if self.active is None:
            return cov
        full = self.loc.new_zeros(self.dim, self.dim)
        full[self.active[:, None], self.active[None, :]] = cov
        return full

    def variance(self) -> torch.Tensor:
        """Marginal variances [d] (zeros outside ``active``)."""
        return self._scatter(self.cov.variance())

    def weights(self) -> torch.Tensor:
        """Self-normalised weights of a posterior of draws (uniform when it has no log_weights)."""
        if self.cov.gaussian:
            raise ValueError(f"weights() is defined for posteriors of weighted draws only, not a {self.structure!r} "
                             "one")
        return self.cov.weights()

    # -- distributions ---------------------------------------------------------------------------
    def to_distribution(self) -> Distribution:
        """A torch ``Distribution`` over θ (Gaussian; draws are moment-matched; requires no ``active``)."""
        if self.active is not None:
            raise ValueError("a posterior restricted to `active` coordinates is degenerate in the others; "
                             "use to_active_distribution() for the non-degenerate part")
        return self.cov.to_distribution(self.loc)

    def to_active_distribution(self) -> Distribution:
        """The Gaussian over the ``active`` coordinates (all coordinates when ``active`` is None)."""
        return self.cov.to_distribution(self.active_loc)

    def sample(self, num_samples: int, seed: int | None = 0) -> torch.Tensor:
        """Draws θ of shape [num_samples, d]; deterministic for a given seed (global RNG untouched)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            draws = self.cov.draw(self.active_loc, num_samples)
        return self._embed(draws)

    def draws(self, num_samples: int, seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(θ [S, d], weights [S] or None): a posterior of draws gives its own draws and weights
        (``num_samples`` and ``seed`` are not used); a Gaussian gives ``num_samples`` i.i.d. draws with
        ``seed`` and None (equal weights)."""
        if self.cov.gaussian:
            return self.sample(num_samples, seed), None
        return self._embed(self.cov.samples), self.cov.weights()

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """log q(θ) for θ [..., d] (Gaussian structures; on ``active`` coordinates if restricted)."""
        t = theta if self.active is None else theta[..., self.active]
        return self.cov.log_prob(t - self.active_loc)

    def sample_sites(self, num_samples: int, seed: int | None = 0) -> dict[str, torch.Tensor]:
        """Draws of every latent site in constrained space: {name: [num_samples, *shape]}."""
        return self.layout.unpack(self.sample(num_samples, seed))

    def bound_model(self) -> BoundModel:
        if self.model is None or self.x is None:
            raise ValueError("this posterior carries no model/data; pass model= to Posterior.load")
        return BoundModel(self.model, self.x, self.y)

    def replace(self, **changes) -> "Posterior":
        """A copy with some fields changed (the original is untouched). Besides the dataclass fields, the
        covariance's tensors (e.g. ``precision=``) and ``active=`` may be given: the covariance is rebuilt."""
        cls = type(self.cov)
        names = set(cls.tensor_fields) | {"active"}
        cov_changes = {k: changes.pop(k) for k in list(changes) if k in names}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"replace() got {sorted(unknown)}, which a {self.structure!r} posterior does not have; "
                            "pass cov= to change the structure")
        if cov_changes:
            tensors = {**self.cov.fields(), **{k: v for k, v in cov_changes.items() if k != "active"}}
            changes["cov"] = cls.from_fields(tensors, active=cov_changes.get("active", self.active))
        return dataclasses.replace(self, **changes)

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path, include_data: bool = True) -> None:
        """Write to ``path`` (safetensors: tensors + JSON metadata; no pickle)."""
        from safetensors.torch import save_file

        tensors = {"loc": self.loc.contiguous(), **{n: t.contiguous() for n, t in self.cov.fields().items()}}
        if self.active is not None:
            tensors["active"] = self.active.contiguous()
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
        try:
            cov = structure_class(header["structure"]).from_fields(tensors, active=tensors.get("active"))
        except ValueError as e:
            raise PosteriorFileError(f"{path} holds no valid covariance: {e}") from e
        return cls(loc=tensors["loc"], cov=cov, family=header["family"], layout=layout, model=model, x=x, y=y,
                   meta=header["meta"])

    def __repr__(self) -> str:
        return (f"Posterior(family={self.family!r}, structure={self.structure!r}, dim={self.dim}, "
                f"sites={self.layout.names})")
