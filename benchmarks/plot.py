"""PNG plots of a results file (matplotlib, the optional ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt

__all__ = ["plot_all"]

_STYLE = {
    "torch.fx.symbolic_trace": ("tab:gray", "o", "-"),
    "fxgrad.trace": ("tab:blue", "o", "-"),
    "static analysis": ("tab:green", "s", "-"),
    "dry-run": ("tab:orange", "^", "-"),
    "fix (no verification)": ("tab:purple", "D", "-"),
    "make_fx(functionalize)": ("tab:red", "x", "--"),
    "torch.export+run_decompositions": ("tab:brown", "+", "--"),
}


def _scaling(results: dict[str, Any], out: Path) -> Path | None:
    section = results.get("analysis_speed")
    if not section or not section["rows"]:
        return None
    rows = section["rows"] + section["alternatives"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4.2), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        for tool, (color, marker, line) in _STYLE.items():
            pts = sorted({(r["nodes"], r["median_ms"]) for r in rows if r["family"] == family and r["tool"] == tool})
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, linestyle=line, color=color, label=tool)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("graph nodes")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median ms")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Time to capture / analyse / fix one model (batch 2)")
    fig.tight_layout()
    path = out / "analysis_speed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cost(results: dict[str, Any], out: Path) -> Path | None:
    rows = results.get("fix_runtime_cost", {}).get("rows", [])
    if not rows:
        return None
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs = [j + i * width for j in range(len(batches))]
        by_batch = {r["batch"]: r for r in rows if r["variant"] == variant}
        axes[0].bar(xs, [by_batch[b]["time_ratio"] for b in batches], width, label=variant)
        axes[1].bar(xs, [by_batch[b]["memory_ratio"] for b in batches], width, label=variant)
    for ax, title, key in zip(axes, ("forward+backward time", "peak tensor memory"), ("time_ratio", "memory_ratio"),
                              strict=True):
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(1.03, color="black", linewidth=0.8, linestyle=":")
        values = [r[key] for r in rows]
        ax.set_ylim(min(0.9, min(values) - 0.03), max(1.1, max(values) + 0.03))  # the differences are percents
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
        ax.set_ylabel("ratio to the original")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(variants), fontsize=8)
    fig.suptitle(f"Training step of the fixed model: {rows[0]['model']} (dotted: +3 %)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out / "fix_runtime_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _memory(results: dict[str, Any], out: Path) -> Path | None:
    rows = results.get("dryrun_memory", {}).get("rows", [])
    if not rows:
        return None
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        rs = sorted((r for r in rows if r["family"] == family), key=lambda r: r["batch"])
        batches = [r["batch"] for r in rs]
        for key, label, color in (("real_forward", "one real forward", "tab:red"),
                                  ("dryrun", "dry-run", "tab:orange"),
                                  ("analyze_with_dryrun", "analyze(model, x)", "tab:blue")):
            total = [(r[f"{key}_tensor_bytes"] + r[f"{key}_python_bytes"]) / 2**20 for r in rs]
            ax.plot(batches, total, marker="o", color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(f"{family} ({rs[0]['nodes']} nodes)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("peak extra MiB (tensors + Python heap)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Dry-run memory vs one real forward")
    fig.tight_layout()
    path = out / "dryrun_memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every plot whose section is in ``results`` into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    return [p for p in (_scaling(results, out), _cost(results, out), _memory(results, out)) if p is not None]
