"""Bayesian multi-layer perceptron regression (Neal, 1996; Blundell et al., 2015).

    W_l ~ N(0, s_l² I),  b_l ~ N(0, s_b²),  h_0 = x,  h_l = φ(h_{l-1} W_l + b_l),  f(x) = h_{L-1} W_L + b_L,

with φ ∈ {tanh, relu} and s_l either fixed or fan-in scaled (s_l = s / √fan_in, which keeps the
prior function scale independent of the width). Observation noise is one of

    fixed:            y_i ~ N(f(x_i), σ²)
    learned:          σ ~ HalfNormal(noise_prior_scale),  y_i ~ N(f(x_i), σ²)
    heteroscedastic:  the net has two outputs (f, g);  y_i ~ N(f(x_i), (softplus(g(x_i)) + 10⁻³)²).

Latent sites are named ``w0, b0, w1, b1, ...`` (and ``sigma`` for learned noise), all outside the
``data`` plate, so the model follows the package's ``model(x, y=None)`` convention; ``w_l`` has shape
[in_l, out_l] and ``b_l`` [out_l] (h_{l-1} W_l, a row of inputs times the weight matrix).

:meth:`BayesianMLP.activations` is the forward pass on given weights, returning every layer's input
a_l = h_{l-1} and pre-activation z_l = a_l W_l + b_l: the model itself, L-CODEC's neuron activations
(:mod:`unlearning.lcodec`) and the Kronecker-factored curvature (:mod:`inference.curvature.kfac`) all
use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

__all__ = ["BayesianMLP", "MLPActivations"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


@dataclass(frozen=True)
class MLPActivations:
    """The forward pass of an MLP with L layers on N inputs, layer by layer (l = 0..L-1).

    inputs[l]          a_l = h_{l-1}, the input of layer l: [N, in_l] (a_0 = x)
    preactivations[l]  z_l = a_l W_l + b_l: [N, out_l]; h_l = φ(z_l) for l < L-1, and z_{L-1} is the output
    """

    inputs: tuple[torch.Tensor, ...]
    preactivations: tuple[torch.Tensor, ...]

    @property
    def output(self) -> torch.Tensor:
        """The net's output z_{L-1}: [N, out] (column 0 the mean, column 1 the raw noise for heteroscedastic)."""
        return self.preactivations[-1]

    @property
    def units(self) -> list[torch.Tensor]:
        """Every neuron's activation, per layer: the hidden layers after φ (h_l = a_{l+1}), then the output z_{L-1}."""
        return list(self.inputs[1:]) + [self.output]


class BayesianMLP:
    """``model(x, y=None)``: a Bayesian MLP for scalar regression.

    Parameters
    ----------
    in_dim : number of input features.
    hidden : widths of the hidden layers, e.g. ``(32, 32)``.
    activation : ``"tanh"`` or ``"relu"``.
    prior_scale : prior std of the weights, or ``"fan_in"`` for s/√fan_in with s = ``weight_scale``.
    weight_scale : s for the fan-in scaled prior (ignored when ``prior_scale`` is a number).
    bias_scale : prior std of the biases.
    noise : a positive number (fixed σ), ``"learned"`` (σ ~ HalfNormal(noise_prior_scale)) or
        ``"heteroscedastic"`` (a second output gives the per-input noise scale).
    noise_prior_scale : scale of the HalfNormal prior on σ for ``noise="learned"``.
    """

    def __init__(self, in_dim: int = 1, hidden: Sequence[int] = (32, 32), activation: str = "tanh",
                 prior_scale: float | str = 1.0, weight_scale: float = 1.0, bias_scale: float = 1.0,
                 noise: float | str = 0.1, noise_prior_scale: float = 0.5):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        hidden = tuple(int(h) for h in hidden)
        if int(in_dim) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"in_dim and hidden widths must be positive, got {in_dim!r} and {hidden!r}")
        if isinstance(prior_scale, str):
            if prior_scale != "fan_in":
                raise ValueError(f"prior_scale must be a positive number or 'fan_in', got {prior_scale!r}")
        elif not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale!r}")
        if isinstance(noise, str):
            if noise not in ("learned", "heteroscedastic"):
                raise ValueError(f"noise must be a positive number, 'learned' or 'heteroscedastic', got {noise!r}")
        elif not noise > 0:
            raise ValueError(f"a fixed noise must be positive, got {noise!r}")
        self.in_dim, self.hidden, self.activation = int(in_dim), hidden, activation
        self.prior_scale, self.weight_scale, self.bias_scale = prior_scale, float(weight_scale), float(bias_scale)
        self.noise, self.noise_prior_scale = noise, float(noise_prior_scale)
        out = 2 if noise == "heteroscedastic" else 1
        self.widths = (self.in_dim,) + hidden + (out,)

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def last_layer_sites(self) -> tuple[str, ...]:
        """Sites of the output layer (for last-layer Laplace)."""
        L = self.num_layers - 1
        return (f"w{L}", f"b{L}")

    def config(self) -> dict:
        """JSON-able description from which :func:`models.model_from_config` rebuilds the model."""
        return {"name": "BayesianMLP", "in_dim": self.in_dim, "hidden": list(self.hidden),
                "activation": self.activation, "prior_scale": self.prior_scale,
                "weight_scale": self.weight_scale, "bias_scale": self.bias_scale,
                "noise": self.noise, "noise_prior_scale": self.noise_prior_scale}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"BayesianMLP({args})"

    def _weight_std(self, fan_in: int) -> float:
        if self.prior_scale == "fan_in":
            return self.weight_scale / math.sqrt(fan_in)
        return float(self.prior_scale)

    def activations(self, theta_sites: Mapping[str, torch.Tensor], x: torch.Tensor) -> MLPActivations:
        """The forward pass on weights ``theta_sites`` ({"w0": [in_0, out_0], "b0": [out_0], "w1": ...}, as
        ``LatentLayout.unpack`` returns them) at inputs x [N, in_dim]: each layer's input a_l [N, in_l] and
        pre-activation z_l = a_l W_l + b_l [N, out_l] (see :class:`MLPActivations`). Differentiable in the
        sites and in x; the model's own forward pass is this one."""
        act = _ACTIVATIONS[self.activation]
        h, inputs, pre = x, [], []
        for l in range(self.num_layers):
            inputs.append(h)
            h = h @ theta_sites[f"w{l}"] + theta_sites[f"b{l}"]
            pre.append(h)
            if l < self.num_layers - 1:
                h = act(h)
        return MLPActivations(tuple(inputs), tuple(pre))

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sites = {}
        for l, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            sites[f"w{l}"] = pyro.sample(f"w{l}", dist.Normal(torch.zeros(n_in, n_out, dtype=x.dtype),
                                                              self._weight_std(n_in)).to_event(2))
            sites[f"b{l}"] = pyro.sample(f"b{l}", dist.Normal(torch.zeros(n_out, dtype=x.dtype),
                                                              self.bias_scale).to_event(1))
        h = self.activations(sites, x).output
        mean = h[..., 0]
        if self.noise == "heteroscedastic":
            scale = F.softplus(h[..., 1]) + 1e-3
        elif self.noise == "learned":
            scale = pyro.sample("sigma", dist.HalfNormal(torch.tensor(self.noise_prior_scale, dtype=x.dtype)))
        else:
            scale = torch.as_tensor(float(self.noise), dtype=x.dtype)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, scale), obs=y)
        return mean
