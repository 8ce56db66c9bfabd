"""Removing a forget set D_f from a posterior: p(θ | D_r) ∝ q(θ | D) / p(D_f | θ).

``unlearn(posterior, x_forget, y_forget, method=...)`` dispatches to a registered method and
returns an :class:`UnlearningResult`; ``unlearn_sequential`` chains deletion requests.
Methods: see :func:`describe_methods` or ``bayes-unlearn methods``.
"""

from __future__ import annotations

from . import eubo, laplace, reference, reweighting, newton, lcodec, refit, auto  # noqa: F401  (register the methods)
from .api import UnlearningFailedError, unlearn, unlearn_sequential
from .base import REGISTRY, UnlearningResult, accepted_options, describe_methods, locate_forget_set

__all__ = ["unlearn", "unlearn_sequential", "UnlearningFailedError", "UnlearningResult", "describe_methods", "accepted_options",
           "REGISTRY", "locate_forget_set"]
