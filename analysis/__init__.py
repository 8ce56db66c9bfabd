"""Diagnostics of unlearned posteriors against exact retraining, figures and the command line.

Modules:

    experiment   one unlearning experiment against exact retraining (``bayes-unlearn run``)
    config       the experiment configuration: defaults, TOML loading and validation
    scenarios    deletion scenarios beyond one request: corrupted rows, sequential requests
    ensemble     a retrain ensemble as the reference, and its leave-one-out noise floor
    metrics      function- and weight-space distances, gap closed, RMSE/NLL, membership signal
    arviz_io     any Posterior as an ArviZ InferenceData (netCDF, summaries, PSIS-LOO, Pareto k̂)
    report       metrics.csv and report.md of a results folder
    figures      the figures of the reports and studies (seaborn / matplotlib)
    files        atomic writes of result files and a run's status.json
    sweep        scenarios × seeds of ``run`` (``bayes-unlearn sweep``), serially or on Ray
    stats        summary statistics over seeds (percentile bootstrap)
    demo         a short fit-and-predict example
    cli          the ``bayes-unlearn`` command line
"""
