"""Wall-clock time per phase of one fxgrad call, for ``fxgrad check --timings``.

:func:`phase` marks a step of the library (capture, facts and rules, dry-run); it costs one context-variable read
unless a caller collects with :func:`collect`, so the library can keep the marks in place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["collect", "phase"]

_phases: ContextVar[list[tuple[str, float]] | None] = ContextVar("fxgrad_phases", default=None)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as ``name`` when a collector is active (a phase met twice is added up by the reader)."""
    phases = _phases.get()
    if phases is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        phases.append((name, time.perf_counter() - start))


@contextmanager
def collect() -> Iterator[list[tuple[str, float]]]:
    """The phases run inside, in order: ``(name, seconds)``."""
    phases: list[tuple[str, float]] = []
    token = _phases.set(phases)
    try:
        yield phases
    finally:
        _phases.reset(token)
