"""Benchmark: phantom cohort generation speed (target: 20 subjects at size 64 in under a minute on 2 cores).

    PYTHONPATH=src python benchmarks/bench_phantom.py [--subjects 20] [--size 64] [--json OUT.json]

Prints one JSON object: wall time including the one-off template preparation, subjects per second, and the
machine (CPU count, threads available to this process, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy

from mmhvae.phantom.cohort import default_slices, simulate_cohort
from mmhvae.phantom.template import load_template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = parser.parse_args()

    start = time.perf_counter()
    load_template()
    template_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        begin = time.perf_counter()
        simulate_cohort(Path(folder), subjects=args.subjects, size=args.size, slices=args.slices, seed=0)
        cohort_s = time.perf_counter() - begin
        written_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
    total_s = template_s + cohort_s
    result = {
        "benchmark": "phantom cohort",
        "subjects": args.subjects,
        "size": args.size,
        "slices": args.slices or default_slices(args.size),
        "template_s": round(template_s, 2),
        "cohort_s": round(cohort_s, 2),
        "total_s": round(total_s, 2),
        "subjects_per_s": round(args.subjects / cohort_s, 3),
        "written_mb": round(written_mb, 1),
        "cpus": os.cpu_count(),
        "threads_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
