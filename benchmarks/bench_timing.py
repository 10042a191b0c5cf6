"""Latency sampling shared by the benchmark scripts. Standard library only: bench_feast.py
imports it from Feast's own virtualenv, where recsys is not installed."""

from __future__ import annotations

import time

__all__ = ["percentiles", "timed"]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "calls": len(ordered),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
    }


def timed(call, requests: list, warmup: int) -> dict[str, float]:
    """Calls `call` on the first `warmup` requests untimed, then times each of the rest."""
    for request in requests[:warmup]:
        call(request)
    samples = []
    for request in requests[warmup:]:
        start = time.perf_counter()
        call(request)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)
