"""``python -m tests.bench``: run every benchmark in turn (each prints its own table)."""

from __future__ import annotations

import importlib
import subprocess
import sys

BENCHMARKS = ("tests.bench.bench_queue", "tests.bench.bench_locks", "tests.bench.bench_frontend")


def main() -> int:
    failed = 0
    for module in BENCHMARKS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"skipping {module}: {exc}", flush=True)
            continue
        # Each benchmark has its own options: run them on their defaults here.
        failed += subprocess.call([sys.executable, "-m", module]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
