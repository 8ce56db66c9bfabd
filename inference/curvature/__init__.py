"""Curvature back-ends: the second-order information a Laplace posterior and its down-date are built from.

    autodiff   exact Hessians (and their diagonals) and the generalised Gauss-Newton matrix G = Σ_i J_iᵀ J_i / s_i²
               (dense or its diagonal) from per-example Jacobians; any conforming model
    kfac       the Kronecker-factored GGN of a fixed-noise ``BayesianMLP`` (Martens & Grosse, 2015; Ritter,
               Botev & Barber, 2018): per layer (Σ a aᵀ) ⊗ (Σ g gᵀ) / (N σ²), never a d × d matrix

``from ..inference.curvature import ggn, ...`` gives the same names as before the split into back-ends.
"""

from __future__ import annotations

from .autodiff import (ggn, ggn_diagonal, hessian, hessian_diagonal, mean_jacobian, observation_params,
                       per_example_jacobians, prior_curvature, prior_curvature_diagonal, scale_depends_on_theta,
                       whitened_jacobian)
from .kfac import KronFactors, KronPrecision, LayerSignals, kfac_curvature_term, kfac_factors, layer_signals

__all__ = ["hessian", "hessian_diagonal", "per_example_jacobians", "scale_depends_on_theta", "whitened_jacobian", "ggn",
           "ggn_diagonal", "prior_curvature", "prior_curvature_diagonal", "observation_params", "mean_jacobian",
           "KronFactors", "KronPrecision", "LayerSignals", "kfac_factors", "kfac_curvature_term", "layer_signals"]
