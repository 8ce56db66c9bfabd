"""bayes_unlearn: Bayesian machine unlearning of regression models written in Pyro.

The repository root is the ``bayes_unlearn`` package (this file); its four layers install as
sub-packages, each importing only the layers below it::

    bayes_unlearn.models      Pyro programs ``model(x, y=None)``, data sources, forget sets, validation
    bayes_unlearn.inference   SVI / Laplace / NUTS  ->  ``Posterior`` (one covariance class per structure)
    bayes_unlearn.unlearning  p(θ | D_r) ∝ q(θ | D) / p(D_f | θ): the registered methods and ``retrain``
    bayes_unlearn.analysis    diagnostics against retraining, ArviZ, figures, the ``bayes-unlearn`` CLI

The facade below is what a user needs for the usual fit → unlearn → predict loop::

    import bayes_unlearn as bu
    post = bu.fit(bu.models.BayesianMLP(), x, y, method="laplace")
    result = bu.unlearn(post, x_f, y_f, method="auto")
    pred = bu.predict(result.posterior, x_test)
"""

from __future__ import annotations

# Absolute imports of its own package, unlike the layers (which import each other relatively): test runners
# that meet this file at the repository root import it under the folder's name (pytest imports a rootdir
# ``__init__.py`` as ``main``, or as ``__init__`` when the folder's name is not an identifier, e.g. a
# ``mktemp`` clone), where a relative import has no parent package; absolute ones load the one installed copy.
from bayes_unlearn import analysis, inference, models, unlearning
from bayes_unlearn.inference import Posterior, Prediction, fit, predict
from bayes_unlearn.unlearning import UnlearningResult, describe_methods, unlearn, unlearn_sequential

__version__ = "0.1.0"

__all__ = ["fit", "predict", "unlearn", "unlearn_sequential", "describe_methods", "Posterior", "Prediction",
           "UnlearningResult", "models", "inference", "unlearning", "analysis", "__version__"]
