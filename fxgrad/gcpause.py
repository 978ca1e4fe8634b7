"""Cyclic garbage collection paused while fxgrad builds its per-node records.

The analysis allocates a few small objects per node (facts, op views, edges, findings) that form no reference
cycles, and frees them all by reference counting when it is done. A collection that runs in the meantime frees
nothing, but walks every one of them that is still alive, slot by slot: on large graphs that was a third of the
cost, and it grew with the size of the graph. Objects made while collection is paused wait in the youngest
generation, so the pause is best held until they are freed: :func:`fxgrad.analyze` holds one pause from the
facts to the report, and drops the facts before it ends. A pause inside a pause leaves the outer one in charge.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause cyclic GC for the block; turn it back on afterwards only if it was on before, whatever happens."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
