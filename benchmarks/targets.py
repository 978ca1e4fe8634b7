"""The targets fxgrad set itself, judged against a results file: met, not met, or not measured, with the number.

No test asserts these; the benchmark reports them so the README can say honestly where fxgrad stands.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def _target(name: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met}


def _rows(results: dict[str, Any], section: str, key: str = "rows") -> list[dict[str, Any]]:
    return list(results.get(section, {}).get(key, []))


def _static(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _rows(results, "analysis_speed")
    static = [r for r in rows if r["tool"] == "static analysis"]
    out = []
    big = [r for r in static if r["nodes"] >= 1000]
    if big:
        worst = max(big, key=lambda r: r["ratio"])
        best = min(big, key=lambda r: r["ratio"])
        out.append(_target(
            "static analysis vs symbolic_trace", "≤ 0.1 × torch.fx.symbolic_trace of the same model",
            f"{best['ratio']:.2f}× to {worst['ratio']:.2f}× over models of ≥ 1,000 nodes (worst: {worst['family']}, "
            f"{worst['nodes']:,} nodes, {worst['median_ms']:.0f} ms vs {worst['median_ms'] / worst['ratio']:.0f} ms)",
            worst["ratio"] <= 0.1))
    else:
        out.append(_target("static analysis vs symbolic_trace", "≤ 0.1 × symbolic_trace", "not measured", None))
    # Linear: ms per 1,000 nodes at the largest size within 1.5× of the figure at about 1,000 nodes.
    per_family: dict[str, list[dict[str, Any]]] = {}
    for r in static:
        per_family.setdefault(r["family"], []).append(r)
    symbolic = {(r["family"], r["nodes"]): r for r in rows if r["tool"] == "torch.fx.symbolic_trace"}
    parts, ok = [], True
    for family, rs in per_family.items():
        rs.sort(key=lambda r: r["nodes"])
        ref = next((r for r in rs if r["nodes"] >= 900), None)
        top = rs[-1]
        if ref is None or top is ref:
            continue
        growth = top["ms_per_1k_nodes"] / ref["ms_per_1k_nodes"]
        ok = ok and growth <= 1.5
        sym_ref, sym_top = symbolic.get((family, ref["nodes"])), symbolic.get((family, top["nodes"]))
        context = (f"; symbolic_trace itself {sym_top['ms_per_1k_nodes'] / sym_ref['ms_per_1k_nodes']:.2f}×"
                   if sym_ref and sym_top else "")
        parts.append(f"{family}: {ref['ms_per_1k_nodes']:.0f} → {top['ms_per_1k_nodes']:.0f} ms per 1,000 nodes "
                     f"from {ref['nodes']:,} to {top['nodes']:,} nodes ({growth:.2f}×{context})")
    control = _rows(results, "analysis_speed", "scaling_control")
    if control and all("bytecode_ratio" in r for r in control):
        # The work per node decides: it is what "linear in the node count" is about, and no cache or load changes
        # it. The times stay beside it (see benchmarks.suites.scaling_control for why they cannot decide).
        measured = "; ".join(
            f"{r['family']}: one graph of {r['nodes']:,} nodes executes {r['bytecodes_per_node_one_graph']:,.1f} "
            f"bytecodes per node, {r['copies']} graphs of {r['small_nodes']:,} "
            f"{r['bytecodes_per_node_small_graphs']:,.1f} ({r['bytecode_ratio']:.3f}×); time "
            f"{r['ms_per_1k_nodes_one_graph']:.1f} against {r['ms_per_1k_nodes_small_graphs']:.1f} ms per 1,000 "
            f"nodes ({r['per_node_ratio']:.2f}×)" for r in control)
        if parts:
            measured += ". Each size timed alone: " + "; ".join(parts)
        out.append(_target("static analysis is linear",
                           "work per node (Python bytecodes executed) of one graph of the largest size ≤ 1.1 × that "
                           "of the same number of nodes in graphs of 1,000 nodes; times reported beside it",
                           measured, all(r["bytecode_ratio"] <= 1.1 for r in control)))
        return out
    out.append(_target("static analysis is linear", "ms per 1,000 nodes at the largest size ≤ 1.5 × at 1,000 nodes",
                       "; ".join(parts) if parts else "not measured", ok if parts else None))
    return out


def _dryrun(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    dry = [r for r in _rows(results, "analysis_speed") if r["tool"] == "dry-run" and r["nodes"] >= 900]
    if dry:
        worst = max(dry, key=lambda r: r["ms_per_1k_nodes"])
        best = min(dry, key=lambda r: r["ms_per_1k_nodes"])
        out.append(_target("dry-run speed", "≤ 200 ms per 1,000 nodes",
                           f"{best['ms_per_1k_nodes']:.0f} to {worst['ms_per_1k_nodes']:.0f} ms per 1,000 nodes over "
                           f"models of ≥ 1,000 nodes (worst: {worst['family']}, {worst['nodes']:,} nodes)",
                           worst["ms_per_1k_nodes"] <= 200))
    else:
        out.append(_target("dry-run speed", "≤ 200 ms per 1,000 nodes", "not measured", None))
    mem = _rows(results, "dryrun_memory")
    if mem:
        parts, ok = [], True
        for family in dict.fromkeys(r["family"] for r in mem):
            rs = sorted((r for r in mem if r["family"] == family), key=lambda r: r["batch"])
            lo, hi = rs[0], rs[-1]
            d_lo = lo["dryrun_tensor_bytes"] + lo["dryrun_python_bytes"]
            d_hi = hi["dryrun_tensor_bytes"] + hi["dryrun_python_bytes"]
            f_lo = lo["real_forward_tensor_bytes"] + lo["real_forward_python_bytes"]
            f_hi = hi["real_forward_tensor_bytes"] + hi["real_forward_python_bytes"]
            ok = ok and d_hi <= 1.1 * d_lo
            parts.append(f"{family}: dry-run {d_lo / 2**20:.2f} → {d_hi / 2**20:.2f} MiB from batch {lo['batch']} to "
                         f"{hi['batch']} (real forward {f_lo / 2**20:.2f} → {f_hi / 2**20:.2f} MiB)")
        out.append(_target("dry-run memory independent of batch size",
                           "peak at the largest batch ≤ 1.1 × peak at the smallest", "; ".join(parts), ok))
    else:
        out.append(_target("dry-run memory independent of batch size", "flat across batch sizes", "not measured",
                           None))
    return out


def _fix(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    alts = [r for r in _rows(results, "analysis_speed", "alternatives") if "fix_speedup" in r]
    if alts:
        worst = min(alts, key=lambda r: r["fix_speedup"])
        parts = [f"{worst['fix_speedup']:.1f}× at worst ({worst['tool']}, {worst['family']}, {worst['nodes']:,} nodes)"]
        for tool in ("make_fx(functionalize)", "torch.export+run_decompositions"):
            big = [r["fix_speedup"] for r in alts if r["tool"] == tool and r["nodes"] >= 90]
            if big:
                parts.append(f"vs {tool} on models of ≥ 100 nodes: {min(big):.0f}× to {max(big):.0f}×")
        out.append(_target("fix vs torch.export / make_fx(functionalize)", "fix (trace + rewrite) ≥ 5× faster",
                           "; ".join(parts), worst["fix_speedup"] >= 5))
    else:
        out.append(_target("fix vs torch.export / make_fx(functionalize)", "≥ 5× faster", "not measured", None))
    ver = results.get("analysis_speed", {}).get("verification", [])
    if ver:
        worst = max(ver, key=lambda r: r["ratio"])
        listed = ", ".join(f"{r['family']} {r['ratio']:.1f}× ({r['reference']} reference)" for r in ver)
        out.append(_target("verification cost", "≤ 2.5 × one eager forward+backward",
                           f"{listed}", worst["ratio"] <= 2.5))
    else:
        out.append(_target("verification cost", "≤ 2.5 × one eager forward+backward", "not measured", None))
    cost = _rows(results, "fix_runtime_cost")
    # The noise floor: the original timed twice under two names. A ratio inside the control's spread cannot be
    # told apart from 1.0 on this machine, so the ±3 % band widens to it when it is wider.
    control = [r["time_ratio"] for r in cost if "control" in r["variant"]]
    lo, hi = min([0.97, *control]), max([1.03, *control])
    noise = (f"; the A/A control (the original timed twice) came out {min(control):.3f}× to {max(control):.3f}×"
             if control else "")
    for only, goal, time_ok, mem_ok in (
        ("breaking", "zero rewrites; time within ±3 % (or the A/A control's spread, if wider); identical peak memory",
         lambda t: lo <= t <= hi, lambda m: m == 1.0),
        ("all", "time and peak memory within +3 % (or the A/A control's spread, if wider)",
         lambda t: t <= hi, lambda m: m <= 1.03),
    ):
        rs = [r for r in cost if r["variant"] == f'fix(only="{only}")']
        if not rs:
            out.append(_target(f'fix(only="{only}") at training time', goal, "not measured", None))
            continue
        rewrites = sorted({r["rewrites"] for r in rs})
        times = [r["time_ratio"] for r in rs]
        mems = [r["memory_ratio"] for r in rs]
        met = all(time_ok(t) for t in times) and all(mem_ok(m) for m in mems)
        if only == "breaking":
            met = met and rewrites == [0]
        batches = ", ".join(str(r["batch"]) for r in rs)
        out.append(_target(
            f'fix(only="{only}") at training time', goal,
            f"rewrites {'/'.join(map(str, rewrites))}; time {min(times):.3f}× to {max(times):.3f}×, peak memory "
            f"{min(mems):.3f}× to {max(mems):.3f}× of the original (batches {batches}){noise}", met))
    return out


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured figure and ``met`` (``None`` where the section did not run)."""
    return [*_static(results), *_dryrun(results), *_fix(results)]
