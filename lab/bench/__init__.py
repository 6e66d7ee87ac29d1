"""Benchmarks: `python -m lab.bench runtime` and `python -m lab.bench mocks`.

Benchmarks are run by hand and reported; tests never assert timings.
"""
