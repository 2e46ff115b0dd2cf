"""Run every benchmark script under bench/ in turn (``make bench``, or ``python -m bench.run_all`` from the
repository root); each prints its own table.

Results are copied by hand into BENCHMARKS.md with the machine they ran on. Run on an otherwise idle
machine: the scripts time wall clock.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import child_env

SCRIPTS = ("bench_classifier", "bench_cams", "bench_crf", "bench_pipeline", "bench_walk")


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n## bench.{name}\n", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False, env=child_env()).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
