"""Benchmarks and diagnostics of vwl_lightning, run from the repository root as modules:
``python -m bench.<script> [args]`` (e.g. ``python -m bench.bench_cams --help``, ``python -m bench.run_all``).
Shared helpers are in :mod:`bench.common`. Results go into BENCHMARKS.md by hand."""
