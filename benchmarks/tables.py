"""Results as tables: plain text for the terminal, GitHub markdown for ``benchmarks/README.md``."""

from __future__ import annotations

import re
from typing import Any

from tabulate import tabulate

__all__ = ["SECTIONS", "render", "render_section"]

_TOOLS = ("torch.fx.symbolic_trace", "fxgrad.trace", "static analysis", "dry-run", "fix (no verification)")


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def _work(row: dict[str, Any], side: str) -> str:
    """Bytecodes per node of one side of the scaling control (results files before it was counted lack it)."""
    value = row.get(f"bytecodes_per_node_{side}")
    return f"{value:,.1f}" if value is not None else "-"


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def _analysis(section: dict[str, Any], fmt: str) -> list[str]:
    out = []
    by_model: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in section["rows"]:
        by_model.setdefault((r["family"], r["nodes"]), {})[r["tool"]] = r
    table = []
    for (family, nodes), tools in by_model.items():
        row: list[Any] = [family, f"{nodes:,}"]
        for tool in _TOOLS:
            r = tools.get(tool)
            row.append("—" if r is None else f"{_ms(r['median_ms'])} ({_ms(r['ms_per_1k_nodes'])})")
        static = tools.get("static analysis")
        row.append("—" if static is None else f"{static['ratio']:.2f}")
        runs = sorted({r["runs"] for r in tools.values()})
        row.append("/".join(map(str, runs)))
        table.append(row)
    out.append("Analysis time, median ms (ms per 1,000 nodes), batch 2")
    out.append(tabulate(table, headers=["family", "nodes", *_TOOLS, "static / symbolic_trace", "runs"],
                        tablefmt=fmt, disable_numparse=True))
    if section.get("scaling_control"):
        out.append("")
        out.append("Static analysis: one graph against the same number of nodes in small graphs, analysed one after "
                   "the other: time, and work (Python bytecodes executed per node)")
        out.append(tabulate(
            [[r["family"], f"{r['nodes']:,}", _ms(r["ms_per_1k_nodes_one_graph"]),
              f"{r['copies']} × {r['small_nodes']:,}", _ms(r["ms_per_1k_nodes_small_graphs"]),
              f"{r['per_node_ratio']:.2f}×", _work(r, "one_graph"), _work(r, "small_graphs"),
              f"{r['bytecode_ratio']:.3f}×" if "bytecode_ratio" in r else "-", r["runs"]]
             for r in section["scaling_control"]],
            headers=["family", "one graph, nodes", "ms per 1k nodes", "small graphs", "ms per 1k nodes",
                     "time: one / small", "bytecodes per node, one graph", "… small graphs", "work: one / small",
                     "runs"], tablefmt=fmt, disable_numparse=True))
    dry = [r for r in section["rows"] if r["tool"] == "dry-run"]
    if dry:
        out.append("")
        out.append("Dry-run next to one eager forward (batch 2)")
        out.append(tabulate([[r["family"], f"{r['nodes']:,}", _ms(r["median_ms"]), _ms(r["baseline_ms"]),
                              f"{r['ratio']:.1f}×", r["runs"]] for r in dry],
                            headers=["family", "nodes", "dry-run ms", "eager forward ms", "ratio", "runs"],
                            tablefmt=fmt, disable_numparse=True))
    if section["alternatives"]:
        out.append("")
        out.append("What users would use instead: functionalizing tracers (batch 2)")
        out.append(tabulate(
            [[r["family"], f"{r['nodes']:,}", r["tool"], _ms(r["median_ms"]), _ms(r["ms_per_1k_nodes"]),
              _ms(r["export_only_median_ms"]) if "export_only_median_ms" in r else "",
              f"{r['fix_speedup']:.0f}×" if "fix_speedup" in r else "", r["runs"]] for r in section["alternatives"]],
            headers=["family", "nodes", "tool", "ms", "ms per 1k nodes", "of which export", "fix is faster by",
                     "runs"], tablefmt=fmt, disable_numparse=True))
    if section["anomaly"]:
        out.append("")
        out.append("torch.autograd.detect_anomaly around one forward+backward (batch 2)")
        pairs: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        for r in section["anomaly"]:
            pairs.setdefault((r["family"], r["nodes"]), {})[r["tool"]] = r
        out.append(tabulate(
            [[f, f"{n:,}", _ms(p["forward+backward"]["median_ms"]),
              _ms(p["detect_anomaly forward+backward"]["median_ms"]),
              f"{p['detect_anomaly forward+backward']['ratio']:.2f}×", p["forward+backward"]["runs"]]
             for (f, n), p in pairs.items()],
            headers=["family", "nodes", "fwd+bwd ms", "with detect_anomaly ms", "ratio", "runs"], tablefmt=fmt,
            disable_numparse=True))
    if section.get("verification"):
        out.append("")
        out.append("Verification (fxgrad.verify on a fixed model) next to one eager forward+backward (batch 2)")
        out.append(tabulate(
            [[r["family"], f"{r['nodes']:,}", r["rewrites"], r["reference"], _ms(r["verify_ms"]),
              _ms(r["eager_fwd_bwd_ms"]), f"{r['ratio']:.1f}×", r["runs"]] for r in section["verification"]],
            headers=["family", "nodes", "rewrites", "reference", "verify ms", "eager fwd+bwd ms", "ratio", "runs"],
            tablefmt=fmt, disable_numparse=True))
    return out


def _cost(section: dict[str, Any], fmt: str) -> list[str]:
    if not section["rows"]:
        return []
    model = section["rows"][0]["model"]
    return [f"Training step (forward+backward) of {model}, {section['rows'][0]['nodes']} nodes",
            tabulate([[r["batch"], r["variant"], "" if r["rewrites"] is None else r["rewrites"], _ms(r["median_ms"]),
                       f"{r['time_ratio']:.3f}", _mib(r["peak_bytes"]), f"{r['memory_ratio']:.3f}", r["runs"]]
                      for r in section["rows"]],
                     headers=["batch", "variant", "rewrites", "ms", "time ratio", "peak MiB", "memory ratio", "runs"],
                     tablefmt=fmt, disable_numparse=True)]


def _memory(section: dict[str, Any], fmt: str) -> list[str]:
    if not section["rows"]:
        return []
    return [*_scaling(section.get("scaling", []), fmt), "Peak extra memory, MiB (tensor memory + Python heap)",
            tabulate([[r["family"], f"{r['nodes']:,}", r["batch"], _mib(r["input_bytes"]),
                       f"{_mib(r['real_forward_tensor_bytes'])} + {_mib(r['real_forward_python_bytes'])}",
                       f"{_mib(r['dryrun_tensor_bytes'])} + {_mib(r['dryrun_python_bytes'])}",
                       f"{_mib(r['analyze_with_dryrun_tensor_bytes'])} + {_mib(r['analyze_with_dryrun_python_bytes'])}"]
                      for r in section["rows"]],
                     headers=["family", "nodes", "batch", "input", "one real forward", "dry-run",
                              "analyze(model, x)"], tablefmt=fmt, disable_numparse=True)]


def _scaling(rows: list[dict[str, Any]], fmt: str) -> list[str]:
    if not rows:
        return []
    return [f"Dry-run vs one real forward+backward, transformer at batch {rows[0]['batch']} (medians; peak = tensor "
            "memory + Python heap)",
            tabulate([[r["blocks"], f"{r['nodes']:,}", _ms(r["fwd_bwd_ms"]), _ms(r["dryrun_ms"]),
                       f"{r['dryrun_ms_per_1k_nodes']:.0f}", f"{r['ratio']:.2f}", _mib(r["fwd_bwd_peak_bytes"]),
                       _mib(r["dryrun_peak_bytes"]), r["runs"]] for r in rows],
                     headers=["blocks", "nodes", "fwd+bwd ms", "dry-run ms", "dry-run ms / 1k nodes",
                              "dry-run / fwd+bwd", "fwd+bwd peak MiB", "dry-run peak MiB", "runs"],
                     tablefmt=fmt, disable_numparse=True)]


def _capture(section: dict[str, Any], fmt: str) -> list[str]:
    rows = [[r["family"], f"{r['nodes']:,}", *(_ms(v) for v in r["captures_ms"].values()),
             f"{r['run_vs_trace']:.2f}×", f"{r['run_vs_compile']:.2f}×", f"{r['run_vs_export']:.2f}×",
             f"{r['static_traced_vs_symbolic_trace']:.3f}×", f"{r['static_recorded_vs_symbolic_trace']:.3f}×",
             r["runs"]] for r in section["rows"]]
    names = list(section["rows"][0]["captures_ms"]) if section["rows"] else []
    return ["Capturing a model: median ms from a cold start, batch 2; static analysis of each fxgrad graph in units of "
            "symbolic_trace of the same model",
            tabulate(rows, headers=["family", "nodes", *names, "run / trace", "run / compile", "run / export",
                                    "static on traced", "static on recorded", "runs"],
                     tablefmt=fmt, disable_numparse=True)]


def _watch(section: dict[str, Any], fmt: str) -> list[str]:
    rows = [[r["family"], f"{r['nodes']:,}", r["batch"], *(_ms(v) for v in r["ms_per_step"].values()),
             f"{r['watch_ratio']:.3f}×", f"{r['anomaly_ratio']:.2f}×", f"{r['runs']} × {r['steps_per_run']}"]
            for r in section["rows"]]
    names = list(section["rows"][0]["ms_per_step"]) if section["rows"] else []
    return ["A training step (forward, backward, SGD step) with fxgrad.watch and with anomaly mode: median ms per step",
            tabulate(rows, headers=["family", "nodes", "batch", *names, "watch / plain", "anomaly / plain",
                                    "runs × steps"], tablefmt=fmt, disable_numparse=True)]


def _targets(targets: list[dict[str, Any]], fmt: str) -> list[str]:
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    return ["Targets", tabulate([[t["target"], t["goal"], verdict[t["met"]], t["measured"]] for t in targets],
                                headers=["target", "goal", "verdict", "measured"], tablefmt=fmt,
                                disable_numparse=True)]


def _machine(results: dict[str, Any], fmt: str) -> list[str]:
    m = results["machine"]
    rows = [["CPU", f"{m['cpu']} ({m['cores']} cores)"], ["platform", m["platform"]], ["Python", m["python"]],
            ["torch", f"{m['torch']}, {m['torch_threads']} intra-op thread(s)"],
            ["fxgrad commit", m.get("fxgrad_commit") or "unknown"],
            ["load average (1/5/15 min) at start / end",
             f"{m.get('load_average_at_start')} / {m.get('load_average_at_end')}"],
            ["date, size, duration", f"{results['date']}, {results['size']}, {results['duration_s']} s"]]
    return [tabulate(rows, headers=["machine", ""], tablefmt=fmt, disable_numparse=True)]


_RENDERERS = {"machine": lambda r, fmt: _machine(r, fmt),
              "analysis_speed": lambda r, fmt: _analysis(r["analysis_speed"], fmt),
              "fix_runtime_cost": lambda r, fmt: _cost(r["fix_runtime_cost"], fmt),
              "dryrun_memory": lambda r, fmt: _memory(r["dryrun_memory"], fmt),
              "capture_speed": lambda r, fmt: _capture(r["capture_speed"], fmt),
              "watch_overhead": lambda r, fmt: _watch(r["watch_overhead"], fmt),
              "targets": lambda r, fmt: _targets(r["targets"], fmt)}

SECTIONS = tuple(_RENDERERS)


def render_section(results: dict[str, Any], name: str, fmt: str = "simple") -> str:
    """One section's tables (titles in bold for markdown) and its notes; empty when it is not in ``results``."""
    if name not in results and name != "machine":
        return ""
    lines = _RENDERERS[name](results, fmt)
    notes = results[name].get("notes", []) if name not in ("machine", "targets") else []
    if fmt == "github":
        # titles are the lines that are not tables; markdown needs blank lines around tables
        out = []
        for line in lines:
            out.append(line if "\n" in line or not line else f"**{line}**")
            out.append("")
        lines = out
    text = "\n".join([*lines, *(f"note: {n}" for n in notes)]).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def render(results: dict[str, Any], fmt: str = "simple") -> str:
    """Every section present in ``results``, then the targets."""
    parts = [render_section(results, name, fmt) for name in SECTIONS]
    return "\n\n".join(p for p in parts if p)
