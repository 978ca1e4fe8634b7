"""The benchmark sections. Each returns a JSON-ready dict with its rows, its notes and what it skipped and why.

1. :func:`analysis_speed`: how long fxgrad takes on models of 10 to 100,000 graph nodes, stage by stage, next to
   ``torch.fx.symbolic_trace``, ``make_fx(functionalize(model))``, ``torch.export`` and anomaly mode.
2. :func:`fix_runtime_cost`: what training a fixed model costs (forward+backward time and peak memory) next to the
   original and the functionalized graph.
3. :func:`dryrun_memory`: the dry-run's peak memory next to one real forward, across batch sizes.
5. :func:`watch_overhead`: a training step inside ``fxgrad.watch`` next to the same step without it and under
   anomaly mode.
4. :func:`capture_speed`: the run capture (``capture="run"``) next to ``fxgrad.trace``, ``torch.compile`` with a
   backend that only collects the graphs, and ``torch.export``; and the static analysis on each of fxgrad's graphs.

fxgrad's dry-run and fix are optional here: when ``fxgrad.dryrun`` or ``fxgrad.fixing`` cannot be imported, their
rows are left out and the section records why, so the harness runs on any checkout.
"""

from __future__ import annotations

import copy
import importlib
import logging
import multiprocessing
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import torch
import torch.fx
from torch import nn

import fxgrad
from fxgrad.facts import compute_facts
from fxgrad.gcpause import gc_paused
from fxgrad.rules import run_rules

from .measure import Timing, bytecodes_executed, interleaved, interleaved_peaks, peak_python_bytes, peak_tensor_bytes
from .models import FAMILIES, build, node_count, nodes_of

__all__ = ["PLANS", "Plan", "SizePlan", "analysis_speed", "capture_speed", "dryrun_memory", "fix_runtime_cost",
           "optional", "watch_overhead"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Plans: what runs at which size, how often. A tool is left out at a size where one run takes longer than the
# whole budget allows (it is recorded in the results with the reason).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizePlan:
    """Repetitions per group of candidates at one model size; 0 leaves the group out."""

    target: int
    families: tuple[str, ...]
    reps: int  # symbolic_trace, fxgrad.trace, static analysis, fix
    dryrun_reps: int
    alternative_reps: int  # make_fx(functionalize), torch.export (+ run_decompositions)
    anomaly_reps: int
    fix: bool = True
    warmup: bool = True
    alternative_families: tuple[str, ...] | None = None  # None: the same as ``families``


@dataclass(frozen=True)
class Plan:
    name: str
    sizes: tuple[SizePlan, ...]
    verify_target: int
    verify_reps: int
    cost_blocks: int
    cost_channels: int
    cost_image: int
    cost_batches: tuple[int, ...]
    cost_reps: int
    cost_memory_runs: int
    memory_batches: tuple[int, ...]
    memory_families: tuple[tuple[str, int], ...]  # (family, target nodes)
    #: the dry-run against one real forward+backward on a transformer that grows: (block counts, batch, reps)
    scaling_blocks: tuple[int, ...] = ()
    scaling_batch: int = 64
    scaling_reps: int = 3
    #: rounds of :func:`scaling_control` (one graph against many small ones)
    scaling_control_reps: int = 3
    #: :func:`capture_speed`: (family, target nodes, rounds)
    capture_models: tuple[tuple[str, int, int], ...] = ()
    #: :func:`watch_overhead`: (family, target nodes, batch, rounds); each round times ``watch_steps`` steps
    watch_models: tuple[tuple[str, int, int, int], ...] = ()
    watch_steps: int = 10
    skipped: dict[str, str] = field(default_factory=dict)


_ALL = ("mlp", "resnet", "transformer")

PLANS: dict[str, Plan] = {
    "quick": Plan(
        "quick",
        sizes=(
            SizePlan(10, _ALL, reps=1, dryrun_reps=1, alternative_reps=1, anomaly_reps=1, warmup=False,
                     alternative_families=("resnet",)),
            SizePlan(100, _ALL, reps=1, dryrun_reps=1, alternative_reps=0, anomaly_reps=1, warmup=False),
        ),
        verify_target=10, verify_reps=1,
        cost_blocks=2, cost_channels=8, cost_image=8, cost_batches=(4, 16), cost_reps=2, cost_memory_runs=1,
        memory_batches=(8, 64), memory_families=(("mlp", 100),),
        scaling_blocks=(1, 2), scaling_batch=8, scaling_reps=1, scaling_control_reps=1,
        capture_models=(("resnet", 100, 1),),
        watch_models=(("resnet", 100, 8, 2),), watch_steps=2,
    ),
    "full": Plan(
        "full",
        sizes=(
            SizePlan(10, _ALL, reps=5, dryrun_reps=5, alternative_reps=3, anomaly_reps=5),
            SizePlan(100, _ALL, reps=5, dryrun_reps=3, alternative_reps=2, anomaly_reps=3, warmup=False),
            SizePlan(1_000, _ALL, reps=15, dryrun_reps=3, alternative_reps=1, anomaly_reps=3, warmup=False,
                     alternative_families=("resnet",)),
            SizePlan(10_000, _ALL, reps=9, dryrun_reps=3, alternative_reps=0, anomaly_reps=1, warmup=False),
            SizePlan(100_000, ("resnet",), reps=5, dryrun_reps=1, alternative_reps=0, anomaly_reps=0, fix=False,
                     warmup=False),
        ),
        verify_target=1_000, verify_reps=3,
        cost_blocks=8, cost_channels=16, cost_image=16, cost_batches=(8, 32, 128), cost_reps=21,
        cost_memory_runs=3,
        memory_batches=(8, 64, 512, 4096), memory_families=(("mlp", 100), ("transformer", 150)),
        scaling_blocks=(1, 4, 16, 64), scaling_batch=64, scaling_reps=5, scaling_control_reps=5,
        capture_models=(("mlp", 100, 7), ("resnet", 100, 7), ("transformer", 100, 7), ("mlp", 1_000, 5),
                        ("resnet", 1_000, 5), ("transformer", 1_000, 5)),
        watch_models=(("resnet", 300, 32, 21), ("transformer", 300, 32, 21)),
        skipped={
            "make_fx(functionalize) and torch.export above 1,000 nodes": (
                "one run takes 10-35 s per model at 1,000 nodes (50-100 s at 3,000) on this machine; at 1,000 "
                "nodes they run once, on the resnet family only"),
            "fix and anomaly mode at 100,000 nodes": "left out to keep the full run within ~10 minutes",
            "families other than resnet at 100,000 nodes": "one run of trace + analysis takes about a minute",
        },
    ),
}


# --------------------------------------------------------------------------------------------------------------
# fxgrad's optional stages.
# --------------------------------------------------------------------------------------------------------------


def optional(module: str) -> tuple[ModuleType | None, str]:
    """The module, or ``None`` and the reason it could not be imported (recorded as the section's note)."""
    try:
        return importlib.import_module(module), ""
    except Exception as e:
        return None, f"{module} unavailable ({type(e).__name__}: {e})"


def _fwd_bwd(model: Callable[..., torch.Tensor], *args: Any) -> Callable[[], None]:
    def run() -> None:
        model(*args).sum().backward()

    return run


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _per_1k(ms: float, nodes: int) -> float:
    return round(ms * 1000.0 / nodes, 3)


def _ratio(a: Timing | float, b: Timing | float) -> float:
    x = a.median_ms if isinstance(a, Timing) else a
    y = b.median_ms if isinstance(b, Timing) else b
    return round(x / y, 4) if y else float("nan")


# --------------------------------------------------------------------------------------------------------------
# Section 1: analysis speed and scaling.
# --------------------------------------------------------------------------------------------------------------


def _alternatives(model: nn.Module, x: torch.Tensor, split: list[float]) -> dict[str, Callable[[], Any]]:
    """``make_fx(functionalize(model))`` and ``torch.export`` + ``run_decompositions({})`` (export alone kept in
    ``split``: export still has the in-place ops, only the decomposition functionalizes them)."""
    from torch.func import functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    def functionalized() -> Any:
        return make_fx(functionalize(model))(x)

    def exported() -> Any:
        import time

        start = time.perf_counter()
        ep = torch.export.export(model, (x,))
        split.append((time.perf_counter() - start) * 1e3)
        return ep.run_decompositions({})

    return {"make_fx(functionalize)": functionalized, "torch.export+run_decompositions": exported}


def capture_group(family: str, target: int, *, reps: int, warmup: bool, fix: bool) -> tuple[int, dict[str, Timing]]:
    """``symbolic_trace``, ``fxgrad.trace``, the static analysis and ``fix`` of one model, interleaved. Returns the
    model's size in nodes of plain ``symbolic_trace`` (the unit of every per-1,000-nodes figure) and the timings.
    Without ``warmup`` the code is warmed on a 100-node model of the same family (one run of each candidate)."""
    fixing = importlib.import_module("fxgrad.fixing") if fix else None
    if not warmup:
        small, _ = build(family, 100)
        for fn in _capture_candidates(small, fixing, []).values():
            fn()
    model, _ = build(family, target)
    counts: list[int] = []
    timings = interleaved(_capture_candidates(model, fixing, counts), reps=reps, warmup=warmup)
    return counts[-1], timings


def _static(gm: torch.fx.GraphModule, model: nn.Module) -> Any:
    """The static analysis as :func:`fxgrad.analyze` runs it: one pause of cyclic GC, the facts freed before it
    ends."""
    with gc_paused():
        return run_rules(compute_facts(gm, model=model))


def _capture_candidates(model: nn.Module, fixing: ModuleType | None, counts: list[int]
                        ) -> dict[str, Callable[[], Any]]:
    def symbolic() -> None:
        counts.append(len(torch.fx.symbolic_trace(model).graph.nodes))

    group: dict[str, Callable[[], Any]] = {
        "torch.fx.symbolic_trace": symbolic,
        "fxgrad.trace": partial(fxgrad.trace, model),
        "static analysis": partial(_static, fxgrad.trace(model), model),
    }
    if fixing is not None:
        group["fix (no verification)"] = partial(fixing.fix, model, only="all", verify=False)
    return group


def scaling_control(family: str, small: int, big: int, *, reps: int) -> dict[str, Any]:
    """The static analysis of one graph of ``big`` nodes against that of ``big / small`` graphs of ``small`` nodes,
    one after the other: the same number of nodes, each graph starting cold (each small graph is evicted by the
    others before its turn comes again). Timed alone, a small graph is cheaper per node for another reason: right
    after the collection that precedes every run, all of it still sits in the CPU caches, which a big graph never
    fits.

    The times still differ in one way the setup cannot hold equal: the pass walks a graph's facts several times
    (forward, backward, verdicts, rules, freeing), and between those walks a small graph's facts stay in the CPU
    caches while a big graph's do not. So the work is counted too (:func:`bytecodes_executed`, once per side):
    a pass whose work grew faster than its graph would execute more instructions per node on the big graph,
    whatever the caches do."""
    big_model, big_blocks = build(family, big)
    first, small_blocks = build(family, small)
    n_big, n_small = nodes_of(family, big_blocks), nodes_of(family, small_blocks)
    copies = max(2, round(n_big / n_small))
    smalls = [(fxgrad.trace(m), m) for m in [first, *(build(family, small, seed=i)[0] for i in range(1, copies))]]
    big_gm = fxgrad.trace(big_model)

    def many() -> None:
        for gm, model in smalls:
            _static(gm, model)

    _static(*smalls[0])  # warm the code paths
    t = interleaved({"one graph": partial(_static, big_gm, big_model), "small graphs": many}, reps=reps,
                    warmup=False)
    per_node_big = t["one graph"].median_ms / n_big
    per_node_small = t["small graphs"].median_ms / (copies * n_small)
    work_big = bytecodes_executed(partial(_static, big_gm, big_model)) / n_big
    work_small = bytecodes_executed(many) / (copies * n_small)
    return {"family": family, "nodes": n_big, "small_nodes": n_small, "copies": copies, "runs": t["one graph"].runs,
            "one_graph_ms": round(t["one graph"].median_ms, 3),
            "small_graphs_ms": round(t["small graphs"].median_ms, 3),
            "ms_per_1k_nodes_one_graph": round(per_node_big * 1e3, 3),
            "ms_per_1k_nodes_small_graphs": round(per_node_small * 1e3, 3),
            "per_node_ratio": round(per_node_big / per_node_small, 4),
            "bytecodes_per_node_one_graph": round(work_big, 2), "bytecodes_per_node_small_graphs": round(work_small, 2),
            "bytecode_ratio": round(work_big / work_small, 4)}


def _isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh interpreter (spawned, as pyperf runs each benchmark in fresh worker
    processes), with this process's torch thread count.

    Why: the sections run many tools in one process, and a process where ``make_fx`` or ``torch.export`` has
    run has a fragmented heap. Measured here, the static pass (about a kilobyte of small objects per node) then
    ran 30-40 % slower (12 -> 16-17 us per node on the 10,000-node MLP) while ``symbolic_trace`` did not slow
    down, so every ratio depended on which tools had run before it. A fresh process gives every model the same
    start, the one ``fxgrad check`` has."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(torch.get_num_threads(),)) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def analysis_speed(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section 1. Rows: one per (family, size, tool) with ms, ms per 1,000 nodes and ratios to the baselines."""
    dryrun, dryrun_note = optional("fxgrad.dryrun")
    fixing, fixing_note = optional("fxgrad.fixing")
    notes = [n for n in (dryrun_note, fixing_note) if n]
    rows: list[dict[str, Any]] = []
    anomaly_rows: list[dict[str, Any]] = []
    alternative_rows: list[dict[str, Any]] = []

    for sp in plan.sizes:
        for family in sp.families:
            model, blocks = build(family, sp.target)
            x = FAMILIES[family].example(2)
            progress(f"analysis: {family}, {blocks} blocks (~{sp.target:,} nodes)")
            nodes, timings = _isolated(capture_group, family, sp.target, reps=sp.reps, warmup=sp.warmup,
                                       fix=fixing is not None and sp.fix)
            gm = fxgrad.trace(model)
            base = timings["torch.fx.symbolic_trace"]
            for tool, t in timings.items():
                rows.append({"family": family, "blocks": blocks, "nodes": nodes, "tool": tool, **t.to_dict(),
                             "ms_per_1k_nodes": _per_1k(t.median_ms, nodes),
                             "baseline": "torch.fx.symbolic_trace", "ratio": _ratio(t, base)})

            if dryrun is not None and sp.dryrun_reps:
                facts = compute_facts(gm, model=model)

                def dry(gm: torch.fx.GraphModule = gm, facts: Any = facts, x: torch.Tensor = x) -> Any:
                    return dryrun.run_dryrun(gm, facts, (x,), real=False)

                dt = interleaved({"eager forward": partial(model, x), "dry-run": dry},
                                 reps=sp.dryrun_reps, warmup=sp.warmup)
                t = dt["dry-run"]
                rows.append({"family": family, "blocks": blocks, "nodes": nodes, "tool": "dry-run", **t.to_dict(),
                             "ms_per_1k_nodes": _per_1k(t.median_ms, nodes),
                             "baseline": "eager forward (batch 2)", "ratio": _ratio(t, dt["eager forward"]),
                             "baseline_ms": round(dt["eager forward"].median_ms, 3)})

            alt_families = sp.alternative_families or sp.families
            if sp.alternative_reps and family in alt_families:
                split: list[float] = []
                group = _alternatives(model, x, split)
                if fixing is not None:
                    group["fix (no verification)"] = partial(fixing.fix, model, only="all", verify=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    at = interleaved(group, reps=sp.alternative_reps, warmup=sp.warmup)
                export_only = sorted(split[-at["torch.export+run_decompositions"].runs:])
                for tool, t in at.items():
                    row = {"family": family, "blocks": blocks, "nodes": nodes, "tool": tool, **t.to_dict(),
                           "ms_per_1k_nodes": _per_1k(t.median_ms, nodes)}
                    if tool == "torch.export+run_decompositions":
                        row["export_only_median_ms"] = round(export_only[len(export_only) // 2], 3)
                    if "fix (no verification)" in at and tool != "fix (no verification)":
                        row["fix_speedup"] = _ratio(t, at["fix (no verification)"])
                    alternative_rows.append(row)

            if sp.anomaly_reps:
                plain = _fwd_bwd(model, x)

                def anomalous(plain: Callable[[], None] = plain) -> None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        with torch.autograd.detect_anomaly():
                            plain()

                an = interleaved({"forward+backward": plain, "detect_anomaly forward+backward": anomalous},
                                 reps=sp.anomaly_reps, warmup=sp.warmup)
                _clear_grads(model)
                for tool, t in an.items():
                    anomaly_rows.append({"family": family, "nodes": nodes, "tool": tool, **t.to_dict(),
                                         "ratio": _ratio(t, an["forward+backward"])})
            del model, gm

    # linearity, with the caches held equal (see scaling_control): per family, its largest size against graphs of
    # the smallest size of 1,000 nodes or more (of the smallest size, in a plan without one)
    scaling: list[dict[str, Any]] = []
    for family in FAMILIES:
        sizes = sorted(sp.target for sp in plan.sizes if family in sp.families)
        small = next((n for n in sizes if n >= 1000), sizes[0] if sizes else 0)
        if sizes and sizes[-1] > small:
            progress(f"analysis scaling: {family}, one graph of ~{sizes[-1]:,} nodes vs graphs of ~{small:,}")
            scaling.append(_isolated(scaling_control, family, small, sizes[-1], reps=plan.scaling_control_reps))

    return {
        "method": "median wall time over interleaved rounds (see runs); batch 2; ratio = median / median of the "
                  "baseline measured in the same interleaved call. symbolic_trace, fxgrad.trace, 'static "
                  "analysis' and 'fix (no verification)' of each model run in a fresh worker process (see "
                  "_isolated). 'static analysis' is compute_facts + "
                  "run_rules on an already traced graph, in one pause of cyclic GC as fxgrad.analyze runs them; "
                  "'dry-run' is fxgrad.dryrun.run_dryrun (meta tensors) on "
                  "an already traced and analysed graph; 'fix (no verification)' is fxgrad.fix(model, "
                  "only='all', verify=False): trace + static analysis + rewrite. torch.export keeps in-place "
                  "ops until run_decompositions({}), so the alternative timed is export + run_decompositions "
                  "(export alone: export_only_median_ms). make_fx runs the ops on real tensors (batch 2).",
        "notes": notes,
        "skipped": plan.skipped,
        "rows": rows,
        "alternatives": alternative_rows,
        "anomaly": anomaly_rows,
        "scaling_control": scaling,
        "verification": _verification_cost(plan, fixing, progress) if fixing is not None else [],
    }


def _verification_cost(plan: Plan, fixing: ModuleType, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """``fxgrad.verify.verify`` on a fixed model next to one eager forward+backward of the model it checks."""
    from fxgrad.verify import verify

    rows = []
    for family in ("resnet", "resnet-broken", "transformer"):
        model, _ = build(family, plan.verify_target)
        nodes = node_count(model)
        x = FAMILIES[family].example(2)
        progress(f"verification: {family} {nodes} nodes")
        fixed = fixing.fix(model, (x,), only="breaking" if family == "resnet-broken" else "all", verify=False)
        record = fixing.fix_record(fixed)
        # the eager baseline is the fixed model's: the broken original has no backward to time
        baseline = _fwd_bwd(fixed if family == "resnet-broken" else model, x)
        results: list[Any] = []

        def check(model: nn.Module = model, fixed: nn.Module = fixed, x: torch.Tensor = x, r: Any = record,
                  results: list[Any] = results) -> None:
            results.append(verify(model, fixed, (x,), rewrites=r.rewrites))

        t = interleaved({"eager forward+backward": baseline, "verify": check}, reps=plan.verify_reps)
        result = results[-1]
        rows.append({"family": family, "nodes": nodes, "rewrites": len(record.rewrites),
                     "reference": result.reference, "verify_ms": round(t["verify"].median_ms, 3),
                     "eager_fwd_bwd_ms": round(t["eager forward+backward"].median_ms, 3),
                     "runs": t["verify"].runs, "ratio": _ratio(t["verify"], t["eager forward+backward"])})
        _clear_grads(model)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Section 2: what the fix costs at training time.
# --------------------------------------------------------------------------------------------------------------


def _functionalized(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """fwd+bwd of ``make_fx(functionalize(functional_call(model)))``: parameters and buffers are graph inputs, so
    backward reaches the real parameters and BatchNorm's statistics are copied back as in eager."""
    from torch.func import functional_call, functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def f(state: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
        return functional_call(model, state, (inp,))

    detached = {k: v.detach() for k, v in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = make_fx(functionalize(f))(copy.deepcopy(detached), x)

    def run() -> None:
        graph(state, x).sum().backward()

    return run


CONTROL = "original again (A/A control)"


def fix_runtime_cost(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section 2. Rows: one per (batch, variant) with fwd+bwd ms, peak tensor bytes and ratios to the original."""
    from .models import ResNet

    fixing, note = optional("fxgrad.fixing")
    torch.manual_seed(0)
    model = ResNet(plan.cost_blocks, channels=plan.cost_channels)
    nodes = node_count(model)
    rows: list[dict[str, Any]] = []
    for batch in plan.cost_batches:
        progress(f"fix cost: resnet batch {batch}")
        x = torch.randn(batch, 3, plan.cost_image, plan.cost_image)
        # The control runs the original again under another name: how far apart two identical candidates come
        # out is the noise floor of this machine, against which the fixed variants' ratios can be read.
        variants: dict[str, Callable[[], None]] = {"original": _fwd_bwd(model, x), CONTROL: _fwd_bwd(model, x)}
        rewrites: dict[str, int] = {"original": 0, CONTROL: 0}
        if fixing is not None:
            for only in ("breaking", "all"):
                fixed = fixing.fix(model, (x,), only=only)  # verified once, here, outside the timing
                variants[f'fix(only="{only}")'] = _fwd_bwd(fixed, x)
                rewrites[f'fix(only="{only}")'] = len(fixing.fix_record(fixed).rewrites)
        variants["make_fx(functionalize)"] = _functionalized(model, x)

        def cleared(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                _clear_grads(model)  # every variant allocates its .grad tensors afresh
                fn()

            return run

        timed = {k: cleared(v) for k, v in variants.items()}
        t = interleaved(timed, reps=plan.cost_reps, collect_each=False)
        peaks = interleaved_peaks(timed, runs=plan.cost_memory_runs)
        for k in timed:
            rows.append({"model": f"resnet ({plan.cost_blocks} blocks, {plan.cost_channels} channels, "
                                  f"{plan.cost_image}x{plan.cost_image})",
                         "nodes": nodes, "batch": batch, "variant": k, "rewrites": rewrites.get(k),
                         **t[k].to_dict(), "time_ratio": _ratio(t[k], t["original"]),
                         "peak_bytes": peaks[k], "memory_ratio": round(peaks[k] / peaks["original"], 4)})
        _clear_grads(model)
    return {
        "method": "forward + loss.sum().backward() in training mode, .grad cleared before each run; time: median "
                  "over interleaved rounds; memory: peak of the running sum of the profiler's CPU [memory] "
                  "events (torch.profiler.profile(profile_memory=True)) during one run, i.e. peak tensor memory "
                  "allocated on top of the parameters and inputs (median of interleaved runs after a warm-up "
                  "run). The fixed models are made once per batch size with fxgrad.fix(model, (x,), only=...) "
                  "(verified) before timing. The A/A control is the original timed a second time under another "
                  "name: its ratio shows the noise floor. 'make_fx(functionalize)' is "
                  "the graph of make_fx(functionalize(functional_call(model))) with parameters and buffers as "
                  "inputs, run eagerly.",
        "notes": [note] if note else [],
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------------------------
# Section 3: the dry-run's memory.
# --------------------------------------------------------------------------------------------------------------


def dryrun_memory(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section 3. Rows: one per (family, batch) with the peak extra memory of a real forward and of the dry-run."""
    dryrun, note = optional("fxgrad.dryrun")
    rows: list[dict[str, Any]] = []
    if dryrun is None:
        return {"method": "", "notes": [note], "rows": rows}
    for family, target in plan.memory_families:
        model, _ = build(family, target)
        nodes = node_count(model)
        gm = fxgrad.trace(model)
        facts = compute_facts(gm, model=model)
        for batch in plan.memory_batches:
            progress(f"dry-run memory: {family} batch {batch}")
            x = FAMILIES[family].example(batch)

            def forward(model: nn.Module = model, x: torch.Tensor = x) -> Any:
                return model(x)  # grad mode on: the activations backward needs stay alive until it returns

            def dry(gm: torch.fx.GraphModule = gm, facts: Any = facts, x: torch.Tensor = x) -> Any:
                return dryrun.run_dryrun(gm, facts, (x,), real=False)

            def analyze(model: nn.Module = model, x: torch.Tensor = x) -> Any:
                return fxgrad.analyze(model, (x,))

            dry()  # warm the op memo and lazy imports, as any second call would find them
            row: dict[str, Any] = {"family": family, "nodes": nodes, "batch": batch,
                                   "input_bytes": x.numel() * x.element_size()}
            for name, fn in (("real_forward", forward), ("dryrun", dry), ("analyze_with_dryrun", analyze)):
                row[f"{name}_tensor_bytes"] = peak_tensor_bytes(fn)
                row[f"{name}_python_bytes"] = peak_python_bytes(fn)
            rows.append(row)
    return {
        "scaling": _dryrun_scaling(plan, dryrun, progress),
        "method": "peak extra memory of one call, by two methods: tensor bytes = peak of the running sum of the "
                  "profiler's CPU [memory] events (torch.profiler.profile(profile_memory=True)); python bytes = "
                  "tracemalloc peak above the level at the start (Python heap: graph, meta-tensor wrappers; "
                  "tensor storage is not on the Python heap). 'real_forward' is one forward in grad mode "
                  "(returns with the activations backward needs); 'dryrun' is fxgrad.dryrun.run_dryrun on a "
                  "traced graph; 'analyze_with_dryrun' is fxgrad.analyze(model, (x,)) from scratch. Inputs are "
                  "real tensors allocated before the measurement.",
        "notes": [],
        "rows": rows,
    }


def _dryrun_scaling(plan: Plan, dryrun: ModuleType, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """The dry-run against what it spares you: one real forward+backward of the same transformer at the same
    batch, as the model grows (time: interleaved medians; memory: peak extra tensor + Python bytes)."""
    rows: list[dict[str, Any]] = []
    for blocks in plan.scaling_blocks:
        progress(f"dry-run vs forward+backward: transformer, {blocks} blocks, batch {plan.scaling_batch}")
        torch.manual_seed(0)
        model = FAMILIES["transformer"].make(blocks)
        x = FAMILIES["transformer"].example(plan.scaling_batch)
        gm = fxgrad.trace(model)
        facts = compute_facts(gm, model=model)
        nodes = len(gm.graph.nodes)
        fwd_bwd = _fwd_bwd(model, x)

        def dry(gm: torch.fx.GraphModule = gm, facts: Any = facts, x: torch.Tensor = x) -> Any:
            return dryrun.run_dryrun(gm, facts, (x,), real=False)

        t = interleaved({"forward+backward": fwd_bwd, "dry-run": dry}, reps=plan.scaling_reps)
        row: dict[str, Any] = {"blocks": blocks, "nodes": nodes, "batch": plan.scaling_batch,
                               "fwd_bwd_ms": round(t["forward+backward"].median_ms, 3),
                               "dryrun_ms": round(t["dry-run"].median_ms, 3),
                               "dryrun_ms_per_1k_nodes": _per_1k(t["dry-run"].median_ms, nodes),
                               "ratio": _ratio(t["dry-run"], t["forward+backward"]), "runs": t["dry-run"].runs}
        for name, fn in (("fwd_bwd", fwd_bwd), ("dryrun", dry)):
            row[f"{name}_peak_bytes"] = peak_tensor_bytes(fn) + peak_python_bytes(fn)
        _clear_grads(model)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Section 4: capturing a model by running it.
# --------------------------------------------------------------------------------------------------------------


def _compile_capture(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """``torch.compile`` with a backend that only collects the graphs, from a cold Dynamo cache each time."""

    def collect(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        return gm.forward

    def run() -> Any:
        torch._dynamo.reset()
        return torch.compile(model, backend=collect)(x)

    return run


def capture_speed(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section 4. Per model: the four captures' medians (interleaved), and the static analysis of fxgrad's traced and
    recorded graphs with ``symbolic_trace`` of the same model as the unit."""
    from fxgrad.record import record

    rows: list[dict[str, Any]] = []
    for family, target, reps in plan.capture_models:
        progress(f"capture: {family} {target} nodes")
        model, _ = build(family, target)
        x = FAMILIES[family].example(2)
        captures = interleaved({
            "fxgrad.trace": partial(fxgrad.trace, model),
            "fxgrad run capture": partial(record, model, (x,)),
            "torch.compile (collecting backend)": _compile_capture(model, x),
            "torch.export": partial(torch.export.export, model, (x,)),
        }, reps=reps)
        torch._dynamo.reset()
        traced, recorded = fxgrad.trace(model), record(model, (x,))
        analysis = interleaved({"symbolic_trace": partial(torch.fx.symbolic_trace, model),
                                "static analysis, traced graph": partial(_static, traced, model),
                                "static analysis, recorded graph": partial(_static, recorded, model)}, reps=reps)
        rows.append({
            "family": family, "nodes": len(torch.fx.symbolic_trace(model).graph.nodes),
            "recorded_nodes": len(recorded.graph.nodes), "runs": reps,
            "captures_ms": {k: round(t.median_ms, 3) for k, t in captures.items()},
            "analysis_ms": {k: round(t.median_ms, 3) for k, t in analysis.items()},
            "run_vs_trace": _ratio(captures["fxgrad run capture"], captures["fxgrad.trace"]),
            "run_vs_compile": _ratio(captures["fxgrad run capture"], captures["torch.compile (collecting backend)"]),
            "run_vs_export": _ratio(captures["fxgrad run capture"], captures["torch.export"]),
            "static_recorded_vs_symbolic_trace": _ratio(analysis["static analysis, recorded graph"],
                                                        analysis["symbolic_trace"]),
            "static_traced_vs_symbolic_trace": _ratio(analysis["static analysis, traced graph"],
                                                      analysis["symbolic_trace"]),
        })
    return {"rows": rows, "notes": [
        "each capture from a cold start: torch.compile after torch._dynamo.reset(); the run capture runs one real "
        "forward of the model (batch 2) on copies of its parameters",
        "static analysis in this process (the analysis section measures it in a fresh worker per model)"]}


# --------------------------------------------------------------------------------------------------------------
# Section 5: what fxgrad.watch costs a training loop that works.
# --------------------------------------------------------------------------------------------------------------


def _watch_candidates(model: nn.Module, x: torch.Tensor, n: int) -> dict[str, Callable[[], None]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # every step's work, and weights that never diverge
    watcher = fxgrad.watch(model)

    def steps() -> None:
        for _ in range(n):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()

    def watched() -> None:
        with watcher:
            steps()

    def anomaly() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autograd.detect_anomaly():
                steps()

    return {"step": steps, "step inside fxgrad.watch": watched, "step under detect_anomaly": anomaly}


def _watch_row(family: str, target: int, batch: int, reps: int, steps: int) -> dict[str, Any]:
    model, _ = build(family, target)
    t = interleaved(_watch_candidates(model, FAMILIES[family].example(batch), steps), reps=reps)
    per_step = {k: v.median_ms / steps for k, v in t.items()}
    return {"family": family, "nodes": node_count(model), "batch": batch, "runs": reps, "steps_per_run": steps,
            "ms_per_step": {k: round(v, 4) for k, v in per_step.items()},
            "watch_ratio": _ratio(per_step["step inside fxgrad.watch"], per_step["step"]),
            "anomaly_ratio": _ratio(per_step["step under detect_anomaly"], per_step["step"])}


def watch_overhead(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Section 5. Per model, in a fresh worker process (see :func:`_isolated`): ``watch_steps`` SGD steps
    (forward, backward, step) plain, inside ``fxgrad.watch`` (its hooks installed for the whole run, as around a
    loop) and under ``torch.autograd.detect_anomaly``, interleaved; medians per step and the ratios to the plain
    step."""
    rows: list[dict[str, Any]] = []
    for family, target, batch, reps in plan.watch_models:
        progress(f"watch: {family} {target} nodes, batch {batch}")
        rows.append(_isolated(_watch_row, family, target, batch, reps, plan.watch_steps))
    return {"rows": rows, "notes": ["each model in a fresh worker process: run after torch.compile and "
                                    "torch.export in the same process, the plain step itself was 30-50 % slower "
                                    "and the ratios moved by several per cent",
                                    "the watch's hooks stay installed across the steps of a run, as around a "
                                    "training loop; its one-time check of .grad runs in the warm-up"]}
