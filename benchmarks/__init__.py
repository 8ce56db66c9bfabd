"""Benchmarks: unlearning against exact retraining -- speed, fidelity and how cost grows.

    python -m benchmarks.run [--quick] [--out benchmarks/results]

See ``benchmarks/README.md`` for what is measured and the latest results.
"""
