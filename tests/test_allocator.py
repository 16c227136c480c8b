import os
import subprocess
import sys

import pytest

# In a fresh process (the setting cannot be undone), a loop that allocates, fills and frees tensors of 8-64 MiB,
# as each training step does with its activations: minor page faults over the rounds after two warm-up rounds.
ROUNDS_FAULTS = """
import resource, sys, torch
from mmhvae.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.empty(n * 2**20).fill_(1.0) for n in (2, 16, 4, 8, 16, 2, 4)]
    del activations
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))
"""
PAGES_PER_ROUND = 52 * 2**22 // 4096  # 52 Mi float32 elements


def faults_after_warm_up(mode: str, switch: str = "1") -> tuple[str, int]:
    environment = {**os.environ, "MMHVAE_KEEP_FREED_MEMORY": switch}
    done = subprocess.run([sys.executable, "-c", ROUNDS_FAULTS, mode], capture_output=True, text=True, check=True,
                          env=environment)
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    applied, kept = faults_after_warm_up("keep")
    _, default = faults_after_warm_up("default")
    assert applied == "True"
    assert default > 3 * PAGES_PER_ROUND  # glibc hands freed blocks back and faults them in again each round ...
    assert kept < default / 4  # ... and mostly reuses them with the setting


def test_the_environment_switch_keeps_glibc_defaults() -> None:
    applied, kept = faults_after_warm_up("keep", switch="0")
    assert applied == "False"
    assert kept > 3 * PAGES_PER_ROUND
