"""``python -m benchmarks``: run the sections, write the JSON results (and plots), print the tables."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .measure import machine
from .suites import PLANS, analysis_speed, capture_speed, dryrun_memory, fix_runtime_cost, watch_overhead
from .tables import SECTIONS as TABLES
from .tables import render, render_section
from .targets import evaluate

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent / "README.md"
SECTIONS = {"analysis": analysis_speed, "cost": fix_runtime_cost, "memory": dryrun_memory, "capture": capture_speed,
            "watch": watch_overhead}
KEYS = {"analysis": "analysis_speed", "cost": "fix_runtime_cost", "memory": "dryrun_memory",
        "capture": "capture_speed", "watch": "watch_overhead"}
SCHEMA_VERSION = 1


def _progress(quiet: bool) -> Any:
    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run(size: str, sections: list[str], *, quiet: bool = False) -> dict[str, Any]:
    """All requested sections of one plan, with the machine they ran on and the targets judged."""
    plan = PLANS[size]
    say = _progress(quiet)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "size": size,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    for name in sections:
        section_start = time.perf_counter()
        results[KEYS[name]] = SECTIONS[name](plan, say)
        results[KEYS[name]]["duration_s"] = round(time.perf_counter() - section_start, 1)
    results["targets"] = evaluate(results)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def update_readme(results: dict[str, Any], readme: Path = README) -> list[str]:
    """Replace each ``<!-- name -->`` … ``<!-- /name -->`` block of the README with that section's tables."""
    text = readme.read_text()
    updated = []
    for name in TABLES:
        if name not in results and name != "machine":
            continue  # a run of some sections leaves the others' tables as they are
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            continue
        text = text[: i + len(start)] + "\n" + render_section(results, name, "github") + "\n" + text[j:]
        updated.append(name)
    readme.write_text(text)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-test size (< 60 s): checks that it runs")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/latest.json, or "
                        "quick.json.tmp with --quick)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine a second thread makes every "
                        "parallel op wait for the OS scheduler, and the figures measure the load, not the code)")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                        help="write PNG plots next to the results (default: on for a full run, off otherwise)")
    parser.add_argument("--tables-from", type=Path, metavar="JSON",
                        help="print the tables of an existing results file and exit")
    parser.add_argument("--markdown", action="store_true", help="print the tables as GitHub markdown")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the tables of benchmarks/README.md from the results")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    ns = parser.parse_args(argv)
    fmt = "github" if ns.markdown else "simple"

    if ns.tables_from is not None:
        results = json.loads(ns.tables_from.read_text())
        results["targets"] = evaluate(results)  # judged by this checkout's criteria
        print(render(results, fmt))
        if ns.update_readme:
            print(f"README tables updated: {', '.join(update_readme(results))}")
        if ns.plots:
            _plots(results, ns.tables_from.parent)
        return 0
    sections = [s.strip() for s in ns.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(ns.threads)
    logging.basicConfig(level=logging.WARNING)

    size = "quick" if ns.quick else "full"
    out: Path = ns.out or RESULTS / ("quick.json.tmp" if ns.quick else "latest.json")
    results = run(size, sections, quiet=ns.quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results, fmt))
    print(f"\nresults: {out} ({results['duration_s']} s)")
    if ns.update_readme:
        print(f"README tables updated: {', '.join(update_readme(results))}")
    if ns.plots if ns.plots is not None else not ns.quick:
        _plots(results, out.parent)
    return 0


def _plots(results: dict[str, Any], folder: Path) -> None:
    try:
        from .plot import plot_all
    except ImportError as e:  # matplotlib is the optional "bench" extra
        print(f"no plots: {e} (pip install 'fxgrad[bench]')")
    else:
        for path in plot_all(results, folder):
            print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
