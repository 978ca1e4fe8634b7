"""Smoke test of ``python -m benchmarks --quick``: every section runs and lands in the JSON. No timing is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.measure import bytecodes_executed

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--quiet", "--no-plots", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["size"] == "quick"
    for key in ("cpu", "cores", "torch", "torch_threads"):
        assert results["machine"][key]
    speed = results["analysis_speed"]
    tools = {r["tool"] for r in speed["rows"]}
    assert {"torch.fx.symbolic_trace", "fxgrad.trace", "static analysis", "dry-run", "fix (no verification)"} <= tools
    assert {r["family"] for r in speed["rows"]} == {"mlp", "resnet", "transformer"}
    assert {r["tool"] for r in speed["alternatives"]} >= {"make_fx(functionalize)", "torch.export+run_decompositions"}
    assert {r["tool"] for r in speed["anomaly"]} == {"forward+backward", "detect_anomaly forward+backward"}
    assert {r["family"] for r in speed["scaling_control"]} == {"mlp", "resnet", "transformer"}
    assert all(r["copies"] >= 2 and r["per_node_ratio"] > 0 and r["bytecodes_per_node_one_graph"] > 0
               and r["bytecodes_per_node_small_graphs"] > 0 and r["bytecode_ratio"] > 0
               for r in speed["scaling_control"])
    assert {r["family"] for r in speed["verification"]} >= {"resnet", "resnet-broken"}
    (capture,) = results["capture_speed"]["rows"]
    assert set(capture["captures_ms"]) == {"fxgrad.trace", "fxgrad run capture", "torch.compile (collecting backend)",
                                           "torch.export"}
    assert all(v > 0 for v in capture["captures_ms"].values()) and capture["recorded_nodes"] > 0
    (watched,) = results["watch_overhead"]["rows"]
    assert set(watched["ms_per_step"]) == {"step", "step inside fxgrad.watch", "step under detect_anomaly"}
    assert watched["watch_ratio"] > 0 and watched["anomaly_ratio"] > 0
    for r in speed["rows"]:
        assert r["median_ms"] > 0 and r["ms_per_1k_nodes"] > 0 and r["runs"] >= 1

    cost = results["fix_runtime_cost"]["rows"]
    assert {r["variant"] for r in cost} == {"original", "original again (A/A control)", 'fix(only="breaking")',
                                            'fix(only="all")', "make_fx(functionalize)"}
    assert all(r["peak_bytes"] > 0 for r in cost)

    memory = results["dryrun_memory"]["rows"]
    assert memory and all(r["real_forward_tensor_bytes"] > 0 for r in memory)

    assert {t["target"] for t in results["targets"]} >= {"static analysis vs symbolic_trace", "dry-run speed",
                                                         "verification cost"}
    assert "Targets" in proc.stdout


def test_bytecodes_executed_counts_work_not_time() -> None:
    """The linearity target's measure: a loop of 3n steps executes exactly 3/2 the extra instructions of one of 2n
    over n (the count is deterministic), and the caller's trace function is back afterwards."""
    def loop(n: int) -> int:
        total = 0
        for i in range(n):
            total += i
        return total

    counts = [bytecodes_executed(lambda n=n: loop(n)) for n in (100, 200, 300, 300)]  # type: ignore[misc]
    assert counts[1] - counts[0] == counts[2] - counts[1] > 0 and counts[2] == counts[3]
    before = sys.gettrace()
    bytecodes_executed(lambda: loop(5))
    assert sys.gettrace() is before
