"""Diagnostics of unlearned posteriors against exact retraining, figures and the command line.

This issue's scope: the ``bayes-unlearn`` command line (``analysis.cli``) and the fit-and-predict
demo (``analysis.demo``). Metrics, ArviZ conversion and figures build on these.
"""
