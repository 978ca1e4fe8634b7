"""How the benchmarks measure: wall time, peak memory, and the machine they ran on.

Time. :func:`interleaved` runs every candidate once per round, round after round (rotating which goes first),
and reports each one's median; a ratio is always taken between two candidates of the same :func:`interleaved`
call, so both saw the same load on the machine (other processes, thermal state) and the ratio stays meaningful
when the absolute figures drift. Before each run ``gc.collect()`` runs (or once per round for millisecond-sized
candidates), so one candidate does not pay for another's garbage. A warm-up round that is not recorded runs
first unless the caller says the code is already warm (big graphs, where one run costs tens of seconds and the
smaller sizes before it already warmed the code paths).

Memory. Two documented methods, neither of them RSS (which the allocator's caching and the OS decide):

* :func:`peak_tensor_bytes`: ``torch.profiler.profile(profile_memory=True)`` records every allocation and free
  of the CPU allocator as a ``[memory]`` event with a signed byte count. Sorted by time, their running sum is
  the tensor memory allocated since the profiler started; its maximum is the peak *extra* tensor memory of the
  profiled code (tensors that existed before, such as parameters and inputs, are not counted).
* :func:`peak_python_bytes`: ``tracemalloc``'s peak of Python-heap memory over the same span (graph nodes,
  dictionaries, meta-tensor wrappers). Tensor storage is allocated by c10, not by Python, so the two methods
  measure disjoint things and their sum is the code's peak extra memory.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["Timing", "bytecodes_executed", "interleaved", "interleaved_peaks", "machine", "peak_python_bytes",
           "peak_tensor_bytes"]

_CPU_DEVICES = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)


@dataclass(frozen=True)
class Timing:
    """Wall times of one candidate, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": round(self.median_ms, 3), "min_ms": round(self.min_ms, 3),
                "max_ms": round(self.max_ms, 3), "runs": self.runs}


def _once(fn: Callable[[], Any], collect: bool) -> float:
    if collect:
        gc.collect()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(candidates: dict[str, Callable[[], Any]], *, reps: int, warmup: bool = True,
                collect_each: bool = True) -> dict[str, Timing]:
    """Median wall time of each candidate over ``reps`` rounds.

    Each round starts with a different candidate (rotation), so none of them always runs first after the
    collector or after another one's garbage. ``collect_each=False`` collects once per round instead of before
    every run: for candidates of a few milliseconds that make little garbage, where a full collection of a big
    heap would take longer than the run itself.
    """
    if warmup:
        for fn in candidates.values():
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for i in range(reps):
        if not collect_each:
            gc.collect()
        for name in names[i % len(names):] + names[: i % len(names)]:
            samples[name].append(_once(candidates[name], collect_each))
    return {name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in samples.items()}


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the running sum of CPU allocation/free events while ``fn`` runs (profiler method, see above)."""
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() in _CPU_DEVICES]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def interleaved_peaks(candidates: dict[str, Callable[[], Any]], *, runs: int = 3) -> dict[str, int]:
    """Median of :func:`peak_tensor_bytes` over ``runs`` interleaved rounds, after one unrecorded round.

    The first profiled run of a process records a few one-time allocations (profiler and allocator set-up), so
    a single measurement would charge them to whichever candidate happens to go first.
    """
    for fn in candidates.values():
        peak_tensor_bytes(fn)
    samples: dict[str, list[int]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            samples[name].append(peak_tensor_bytes(fn))
    return {name: int(statistics.median(s)) for name, s in samples.items()}


def peak_python_bytes(fn: Callable[[], Any]) -> int:
    """Peak Python-heap memory above the level at the start while ``fn`` runs (``tracemalloc``)."""
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return max(0, peak - base)


def bytecodes_executed(fn: Callable[[], Any]) -> int:
    """How many Python bytecode instructions ``fn()`` executes (``sys.settrace`` with opcode events; 50-100 × slower
    than running it).

    Work, not time: the count does not depend on the machine's load or on how much of the data sits in the CPU
    caches, so it shows whether a pass does more work per node on a bigger graph, which is what "linear in the
    node count" means. What C code does per instruction (a dict lookup, an allocation) is not counted; those are
    constant-time operations whose cost in time the timed measurements show.
    """
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "opcode":
            count += 1
        elif event == "call":
            frame.f_trace_opcodes = True
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    """The checkout the figures belong to (``+dirty`` when files differ from it), or None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "fxgrad"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, torch build and intra-op threads, and how busy the machine was."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "fxgrad_commit": _commit(),
        "load_average_at_start": None if load is None else [round(x, 2) for x in load],
    }
