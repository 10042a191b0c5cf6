"""Experiments: model quality, cold start, privacy, debiasing and explanation studies on
ML-100K, run from the repository root as modules (`python -m experiments.quality ...`);
`make help` lists their targets (experiments.mk)."""
