"""Benchmark: parameters, MACs, latency, 15-subset prediction, training step time and memory.

    PYTHONPATH=src python benchmarks/bench_model.py [--configs tiny,paper]
        [--methods mmhvae,mopoe,average,concat-zeros,mmgan] [--repeats 3] [--device cpu|cuda] [--json OUT.json]

Same as `mmhvae benchmark`. Run it alone on the machine: a second busy process makes every figure meaningless.
"""

from __future__ import annotations

import sys

from mmhvae.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
