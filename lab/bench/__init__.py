"""Benchmarks: `python -m lab.bench runtime`, `... mocks` and `... peers`.

Benchmarks are run by hand and reported; tests never assert timings.
"""
