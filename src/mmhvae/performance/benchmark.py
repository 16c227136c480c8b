"""`mmhvae benchmark`: what the networks cost on this machine (docs/performance.md).

For each configuration (tiny, paper) and method it prints parameters, MACs per slice, inference latency per
slice at batch 1 and 16, the time to predict every modality from all 15 input subsets of a slab in one run
against 15 single-subset runs, the training-step time at batch 4 and 16 with T = 3, and the peak memory of
that step, and the time of one training epoch over a ReMIND-sized set (70 volumes x 160 slices) at the
largest batch; plus the phantom generator's subjects per second. Times are medians of repeated runs after a
warm-up. Each training measurement runs in a fresh process, so its peak resident memory is its own.
`precision` "bf16" runs the networks under bf16 autocast (the GPU default of predict and train); `compile`
applies torch.compile to the convolutional stacks of the networks that support it (MMHVAE and the methods built
from it, as `predict --compile` and `train.compile` do); compilation happens in the untimed warm-up.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmhvae.allocator import keep_freed_memory
from mmhvae.inference.device import autocast
from mmhvae.inference.synthesis import synthesise
from mmhvae.modalities import ModalitySet, non_empty_subsets
from mmhvae.model_file import for_inference
from mmhvae.performance.cost import inference_latency, macs_per_slice, median_time, method_network, parameter_count
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreparedSubject
from mmhvae.training.trainer import module_for

# The paper's training set: 70 ReMIND volumes of about 160 slices each (Section 4.1).
REMIND_SLICES = 70 * 160


@dataclass
class Result:
    """The figures of one (configuration, method); times in seconds unless named otherwise."""

    config: str
    method: str
    parameters: int
    macs_all_inputs_g: float
    latency_ms_batch1: float
    latency_ms_per_slice_batch16: float
    slab: str
    all_subsets_one_run_s: float
    all_subsets_separate_runs_s: float
    train_step_s: dict[str, float] = field(default_factory=dict)
    train_peak_memory_gb: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    compiled: bool = False

    @property
    def batched_subset_ratio(self) -> float:
        return self.all_subsets_one_run_s / self.all_subsets_separate_runs_s

    @property
    def remind_epoch_minutes(self) -> float:
        """One pass over REMIND_SLICES at the largest measured batch (steps x step time)."""
        if not self.train_step_s:
            return float("nan")
        batch = max(self.train_step_s, key=int)
        return math.ceil(REMIND_SLICES / int(batch)) * self.train_step_s[batch] / 60


def slab_subject(model: torch.nn.Module, depth: int) -> PreparedSubject:
    """A synthetic subject on the model grid with every modality present, `depth` slices deep."""
    cfg = model.config
    rng = np.random.default_rng(0)
    shape = (len(cfg.modalities), cfg.image_size, cfg.image_size, depth)
    inputs = rng.uniform(-1, 1, shape).astype(np.float32)
    return PreparedSubject("bench", inputs, inputs.copy(), np.ones(len(cfg.modalities), bool),
                           np.ones(shape[1:], bool), np.arange(depth))


def all_subsets_times(model: torch.nn.Module, depth: int, repeats: int, precision: str = "fp32"
                      ) -> tuple[float, float]:
    """(one run over all 2^M - 1 subsets, the same as one run per subset), seconds.

    A single-subset run sees only its subset's modalities, as `predict --inputs` does, so it encodes those
    alone: 32 encoder passes over the 15 runs of 4 modalities, against 4 in the joint run.
    """
    prepared = slab_subject(model, depth)
    modalities = ModalitySet(tuple(model.config.modalities))
    subsets = non_empty_subsets(modalities)
    alone = [(replace(prepared, present=np.array(modalities.indicator(s), bool)), s) for s in subsets]
    together = median_time(lambda: synthesise(model, prepared, subsets, precision=precision), repeats)
    separately = median_time(lambda: [synthesise(model, p, [s], precision=precision) for p, s in alone], repeats)
    return together, separately


def training_step(module: Any, optimiser: torch.optim.Optimizer, data: dict[str, torch.Tensor],
                  precision: str = "fp32") -> None:
    """One Algorithm-1 generator step of a training module: T passes, backward, optimiser."""
    with autocast(data["inputs"].device, precision):
        losses = module.generator_losses(data, module.draw_subsets(data["present"]))
    optimiser.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimiser.step()


def training_step_time(config: str, method: str, batch: int, repeats: int, device: str, precision: str = "fp32",
                       compile_network: bool = False) -> dict[str, float]:
    """One Algorithm-1 step (T passes, backward, optimiser) in this process: median seconds and peak memory."""
    keep_freed_memory()  # as every `mmhvae` command does
    network, run = method_network(config, method)
    run.train.batch_size = batch
    run.train.compile = compile_network
    module = module_for(run).to(device)
    module.model.load_state_dict(network.state_dict())
    optimiser = torch.optim.Adamax(module.model.parameters(), lr=run.train.lr)
    cfg = run.model
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, len(cfg.modalities), cfg.image_size, cfg.image_size, generator=generator) * 2 - 1
    data = {"inputs": inputs.to(device), "targets": inputs.to(device),
            "present": torch.ones(batch, len(cfg.modalities), dtype=torch.bool, device=device)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Two warm-up steps: the allocator settles in the first two (page faults), and training runs thousands.
    seconds = median_time(lambda: training_step(module, optimiser, data, precision), repeats, warmup=2,
                          device=torch.device(device))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB
    return {"seconds": seconds, "peak_gb": peak}


def training_step_in_fresh_process(config: str, method: str, batch: int, repeats: int, device: str,
                                   threads: int, precision: str = "fp32", compile_network: bool = False
                                   ) -> dict[str, float]:
    """Run `training_step_time` in a child process so that its peak memory is measured alone."""
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[6])); "
            "from mmhvae.performance.benchmark import training_step_time; "
            "print(json.dumps(training_step_time(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "
            "sys.argv[5], sys.argv[7], sys.argv[8] == 'compile')))")
    done = subprocess.run([sys.executable, "-c", code, config, method, str(batch), str(repeats), device,
                           str(threads), precision, "compile" if compile_network else "eager"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"seconds": float("nan"), "peak_gb": float("nan"), "error": last[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def phantom_subjects_per_second(subjects: int = 4, size: int = 64) -> float:
    """How fast the phantom generator writes subjects, in a folder deleted afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        simulate_cohort(Path(folder) / "cohort", subjects=subjects, seed=0, size=size)
        return subjects / (time.perf_counter() - start)


def benchmark(configs: list[str], methods: list[str], repeats: int = 3, device: str = "cpu", depth: int = 32,
              train_batches: tuple[int, ...] = (4, 16), phantom_subjects: int = 4, precision: str = "fp32",
              compile_network: bool = False) -> dict[str, Any]:
    """Every figure of the Performance section for each (config, method); returns a JSON-ready dict."""
    keeps_freed_memory = keep_freed_memory()  # as every `mmhvae` command does
    torch_device = torch.device(device)
    results = []
    for config in configs:
        for method in methods:
            model, _ = method_network(config, method)
            cfg = model.config
            parameters, macs = parameter_count(model), macs_per_slice(model.eval())  # counted on the eager network
            model = for_inference(model, torch_device)  # as `predict` loads it
            compiled = compile_network and hasattr(model, "compile_blocks")
            if compiled:
                model.compile_blocks()
            together, separately = all_subsets_times(model, depth, repeats, precision)
            result = Result(
                config=config, method=method, parameters=parameters, macs_all_inputs_g=macs / 1e9,
                latency_ms_batch1=0.0, latency_ms_per_slice_batch16=0.0,
                slab=f"{cfg.image_size}x{cfg.image_size}x{depth}",
                all_subsets_one_run_s=together, all_subsets_separate_runs_s=separately, precision=precision,
                compiled=compiled)
            result.latency_ms_batch1 = 1000 * inference_latency(model, 1, repeats, torch_device, precision)
            result.latency_ms_per_slice_batch16 = 1000 * inference_latency(model, 16, repeats, torch_device,
                                                                           precision)
            for batch in train_batches:
                measured = training_step_in_fresh_process(config, method, batch, repeats, device,
                                                          torch.get_num_threads(), precision, compiled)
                result.train_step_s[str(batch)] = measured["seconds"]
                result.train_peak_memory_gb[str(batch)] = measured["peak_gb"]
            results.append(result)
    return {
        "machine": {**machine_description(device), "keeps_freed_memory": keeps_freed_memory},
        "results": [{**asdict(r), "batched_subset_ratio": r.batched_subset_ratio,
                     "remind_epoch_minutes": r.remind_epoch_minutes} for r in results],
        "phantom_subjects_per_second": phantom_subjects_per_second(phantom_subjects) if phantom_subjects else None,
        "repeats": repeats,
    }


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU by name, family and model, and whether it has AVX-512.

    numpy, ITK and torch choose vectorised code paths per CPU, so the same library versions can give other
    figures on another CPU of one machine kind; benchmarks and report pages name it so a mismatch can be
    attributed. Read from `cpuinfo` (Linux); without it the family, model and AVX-512 are "?".
    """
    text = cpuinfo.read_text() if cpuinfo.exists() else ""

    def entry(name: str) -> str:
        match = re.search(rf"^{name}\s*: (.*)$", text, re.MULTILINE)
        return match.group(1).strip() if match else "?"

    return {
        "cpu": entry("model name") if text else (platform.processor() or platform.machine()),
        "cpu_family": entry("cpu family"), "cpu_model": entry("model"),
        "avx512": ("yes" if re.search(r"\bavx512f\b", text) else "no") if text else "?",
        "cpus": os.cpu_count(),
    }


def machine_description(device: str) -> dict[str, Any]:
    """The machine, CPU, threads, torch version and device that the figures were measured on."""
    cpu = cpu_description()
    description = {
        "platform": platform.platform(), "processor": cpu.pop("cpu"), **cpu,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": device,
    }
    if device == "cuda":
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def markdown(report: dict[str, Any]) -> str:
    """The benchmark as a Markdown table (docs/performance.md)."""
    machine = report["machine"]
    batches = sorted({b for r in report["results"] for b in r["train_step_s"]}, key=int)
    lines = [
        f"Machine: {machine['processor']} (family {machine['cpu_family']}, model {machine['cpu_model']}, AVX-512 "
        f"{machine['avx512']}), {machine['usable_cpus']} usable CPUs, {machine['torch_threads']} torch "
        f"threads, torch {machine['torch']}, device {machine['device']}"
        + (f" ({machine['gpu']})" if machine.get("gpu") else "")
        + f", precision {report['results'][0]['precision'] if report['results'] else 'fp32'}; medians of "
        f"{report['repeats']} runs after a warm-up (training: two). Freed memory kept by the allocator: "
        f"{'yes' if machine.get('keeps_freed_memory') else 'no'}. Epoch: one pass over 70 x 160 slices "
        "(ReMIND-sized) at the largest batch.",
        "",
        "| config | method | parameters | GMACs/slice | ms/slice (b1) | ms/slice (b16) | 15 subsets, one run (s) "
        "| 15 separate runs (s) | ratio | " + " | ".join(f"train step b{b} (s) | peak mem b{b} (GB)" for b in batches)
        + " | epoch (min) |",
        "|---" * (10 + 2 * len(batches)) + "|",
    ]
    for r in report["results"]:
        steps, memory = r["train_step_s"], r["train_peak_memory_gb"]
        training = " | ".join(f"{steps[b]:.2f} | {memory[b]:.2f}" for b in batches)
        method = f"{r['method']} (compiled)" if r.get("compiled") else r["method"]
        lines.append(
            f"| {r['config']} | {method} | {r['parameters']:,} | {r['macs_all_inputs_g']:.2f} | "
            f"{r['latency_ms_batch1']:.1f} | {r['latency_ms_per_slice_batch16']:.1f} | "
            f"{r['all_subsets_one_run_s']:.2f} ({r['slab']}) | {r['all_subsets_separate_runs_s']:.2f} | "
            f"{r['batched_subset_ratio']:.2f} | {training} | {r['remind_epoch_minutes']:.1f} |")
    if report.get("phantom_subjects_per_second"):
        lines += ["", f"Phantom generator: {report['phantom_subjects_per_second']:.2f} subjects/s at size 64."]
    return "\n".join(lines)
