"""Where and at which precision the networks run: the --device and --precision options of predict and
evaluate."""

from __future__ import annotations

import torch

from mmhvae.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 autocast on CUDA and float32 on CPU (exact, and the reference for evaluation)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}' ({', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The networks' precision: bf16 autocast (convolutions and matrix products in bf16) or plain float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"unknown device '{device}' (cpu, cuda or auto)")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))
