"""Run every benchmark script under bench/ in turn (``make bench``); each prints its own table.

Results are copied by hand into BENCHMARKS.md with the machine they ran on. Run on an otherwise idle
machine: the scripts time wall clock.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = ("bench_classifier.py", "bench_cams.py", "bench_crf.py", "bench_pipeline.py", "bench_walk.py")


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for name in SCRIPTS:
        script = here / name
        if not script.is_file():
            continue
        print(f"\n## {name}\n", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
