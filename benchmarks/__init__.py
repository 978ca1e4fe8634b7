"""fxgrad's benchmarks: how fast the analysis is, what a fix costs, next to what users would use instead.

Run ``python -m benchmarks`` (full size, ~10 minutes on 2 cores, writes ``benchmarks/results/latest.json`` and the
plots) or ``python -m benchmarks --quick`` (a smoke run for CI: checks that every section runs, not timings).
"""
