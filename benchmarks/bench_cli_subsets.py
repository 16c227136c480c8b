"""Benchmark: one `mmhvae predict --all-subsets` run against 15 `mmhvae predict --inputs S` runs.

    PYTHONPATH=src python benchmarks/bench_cli_subsets.py [--model models/phantom-tiny.pt | --config paper]
        [--slices 32] [--repeats 1] [--json OUT.json]

`mmhvae benchmark` times the network alone (in one process, subject already in memory). This script times
what a user pays for the same job from the command line: each run is a fresh `mmhvae predict` process, so
Python start-up, model loading, reading the subject and writing every NIfTI output are counted, once for the
joint run and 15 times for the separate runs. `--config` times an untrained network of that configuration
(speed does not depend on the weights); the subject is a phantom with every modality, on the model's grid.
Run it alone on the machine: a second busy process makes every figure meaningless.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmhvae.io.layouts import discover_subjects
from mmhvae.modalities import non_empty_subsets, subset_label
from mmhvae.model_file import load_model_file, save_model_file
from mmhvae.performance.benchmark import machine_description
from mmhvae.performance.cost import method_network
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreprocessConfig

CLI = "import sys; from mmhvae.cli.main import main; sys.exit(main(sys.argv[1:]))"


def run_cli(*args: str) -> float:
    """Seconds of one fresh `mmhvae ...` process, start-up included."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CLI, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def untrained_model_file(config: str, path: Path) -> Path:
    model, _ = method_network(config, "mmhvae")
    preprocess = PreprocessConfig(modalities=tuple(model.config.modalities), image_size=model.config.image_size)
    return save_model_file(path, model.eval(), preprocess, meta={"note": f"untrained {config}, for timing only"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/phantom-tiny.pt")
    parser.add_argument("--config", default=None, help="time an untrained network of this config instead")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = untrained_model_file(args.config, work / "model.pt") if args.config else Path(args.model)
        loaded = load_model_file(model)
        size = loaded.model.config.image_size
        simulate_cohort(work / "data", subjects=1, modalities=loaded.modalities, size=size, slices=args.slices,
                        seed=4242, missing="complete")
        (subject,) = discover_subjects(work / "data")
        common = ["predict", "--model", str(model), "--input", str(work / "data" / subject.name), "--overwrite"]
        subsets = non_empty_subsets(loaded.modalities)
        run_cli(*common, "--out", str(work / "warm-up"))  # file-system and import caches
        bare_start_up = statistics.median(run_cli("--help") for _ in range(3))  # interpreter + argument parsing
        joint, separate = [], []
        for _ in range(args.repeats):
            joint.append(run_cli(*common, "--out", str(work / "joint"), "--all-subsets"))
            separate.append(sum(run_cli(*common, "--out", str(work / "separate" / subset_label(s)),
                                        "--inputs", ",".join(s)) for s in subsets))
    report = {
        "machine": machine_description("cpu"),
        "model": args.config or str(args.model),
        "slab": f"{size}x{size}x{args.slices}",
        "subsets": len(subsets),
        "repeats": args.repeats,
        "cli_help_s": bare_start_up,
        "one_run_all_subsets_s": statistics.median(joint),
        "separate_runs_s": statistics.median(separate),
    }
    report["ratio"] = report["one_run_all_subsets_s"] / report["separate_runs_s"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
