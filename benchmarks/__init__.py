"""Benchmarks: the laboratory's measurements, run from the repository root as modules
(`python -m benchmarks.bench_suite ...`); `make help` lists their targets (benchmarks.mk).

Standard library only here: bench_feast and bench_training's RecBole side import this package
from virtualenvs that have no recsys."""
