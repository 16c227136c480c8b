"""The model file: one `.pt` with format version, configuration, preprocessing and weights.

Loadable with `torch.load(weights_only=True)`: it holds only tensors and plain Python values, never a
pickled class. A SHA-256 checksum of the weights is verified on load.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmhvae import __version__
from mmhvae.config import RunConfig, _update
from mmhvae.errors import InputError
from mmhvae.io.files import atomic_path
from mmhvae.model.authors import VARIANT as AUTHORS_VARIANT
from mmhvae.model.authors import AuthorsMMHVAE
from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.registry import MMHVAE_VARIANT, build_network
from mmhvae.preprocessing.prepare import AUTHORS_INPUT_NORMALISATION, PreprocessConfig

FORMAT = "mmhvae-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_config", "preprocess", "state_dict", "checksum")


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the weights, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        # clone, not .contiguous(): a channels-last [O, I, 1, 1] weight counts as contiguous yet is strided
        tensor = state_dict[name].detach().cpu().clone(memory_format=torch.contiguous_format)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class LoadedModel:
    model: MMHVAE | ZeroImputationGenerator | AuthorsMMHVAE
    preprocess: PreprocessConfig
    meta: dict[str, Any]
    calibration: dict[str, Any] | None = None  # inference.calibration.Calibration's values, if calibrated

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.config.modalities)

    @property
    def variant(self) -> str:
        """Which network the file holds: "mmhvae" (ours), "mmgan" or "resvit" (baselines) or "authors"
        (`import-authors`)."""
        return getattr(self.model.config, "variant", MMHVAE_VARIANT)

    @property
    def recorded_temperature(self) -> float | None:
        """The inference temperature the model's authors used (in meta), if the file records one."""
        value = self.meta.get("default_temperature") if self.variant == AUTHORS_VARIANT else None
        return None if value is None else float(value)


def calibration_checksum(values: dict[str, Any]) -> str:
    """SHA-256 of a calibration's stored values (key order independent), checked when a model file is read."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def write_payload(path: Path, payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_model_file(path: str | Path, model: MMHVAE | ZeroImputationGenerator | AuthorsMMHVAE,
                    preprocess: PreprocessConfig, meta: dict[str, Any] | None = None) -> Path:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mmhvae_version": __version__,
        "model_config": model.config.to_dict(),
        "preprocess": RunConfig(model.config, preprocess).to_dict()["data"],
        "state_dict": state,
        "checksum": weights_checksum(state),
        "meta": meta or {},
    }
    return write_payload(Path(path), payload)


def save_calibrated_copy(source: str | Path, out: str | Path, calibration: dict[str, Any]) -> Path:
    """`source`'s model file with `calibration` (and its checksum) added or replaced, written to `out`; the
    weights, their checksum and the rest of the file are unchanged."""
    source = Path(source)
    if source.is_dir():
        source = source / "model.pt"
    payload = load_verified_payload(source, "model file", FORMAT, FORMAT_VERSION, REQUIRED_KEYS)
    payload["calibration"] = calibration
    payload["calibration_checksum"] = calibration_checksum(calibration)
    return write_payload(Path(out), payload)


def load_failure(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words (torch's own text is long and, for
    pickled objects, suggests loading unsafely, which no file of ours needs)."""
    if isinstance(exc, pickle.UnpicklingError):
        return "not a PyTorch file of tensors and plain values"
    return f"damaged or truncated ({str(exc).split('. ')[0].splitlines()[0][:160]})"


def load_verified_payload(path: Path, what: str, file_format: str, version: int,
                          required: tuple[str, ...]) -> dict[str, Any]:
    """The dict saved in a project file of kind `what` (e.g. "model file"), loaded with weights_only=True and
    checked for its format tag, required keys and format version; any problem is an InputError naming it."""
    if not path.is_file():
        raise InputError(f"{what} does not exist", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"not a loadable {what}: {load_failure(exc)}", path) from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise InputError(f"not an mmhvae {what}", path)
    missing = [k for k in required if k not in payload]
    if missing:
        raise InputError(f"{what} lacks {missing}", path)
    if payload["format_version"] != version:
        raise InputError(f"{what} format version {payload['format_version']} is not supported "
                         f"(this mmhvae {__version__} reads version {version})", path)
    return payload


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model file; any problem is an InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    payload = load_verified_payload(path, "model file", FORMAT, FORMAT_VERSION, REQUIRED_KEYS)
    if weights_checksum(payload["state_dict"]) != payload["checksum"]:
        raise InputError("the weights do not match their checksum (file damaged or edited)", path)
    try:
        model = build_network(payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"model file does not match its configuration ({str(exc).splitlines()[0]})", path) from None
    preprocess = _update(PreprocessConfig(), recorded_preprocessing(payload), "preprocess", str(path))
    return LoadedModel(for_inference(model, torch.device(device)), preprocess, payload.get("meta", {}),
                       verified_calibration(payload, path))


def verified_calibration(payload: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The calibration a model file carries (None if uncalibrated), checked against its checksum."""
    values = payload.get("calibration")
    if values is not None and calibration_checksum(values) != payload.get("calibration_checksum"):
        raise InputError("the calibration does not match its checksum (file damaged or edited)", path)
    return values


def recorded_preprocessing(payload: dict[str, Any]) -> Any:
    """The preprocessing settings a model file records, with the input normalisation its network expects.

    Files written by earlier versions do not name the input normalisation: those of `import-authors` (network
    variant "authors") were always prepared with the authors' normalisation, every other with ours (the
    default of PreprocessConfig).
    """
    values = payload["preprocess"]
    if (isinstance(values, dict) and "input_normalisation" not in values
            and payload["model_config"].get("variant") == AUTHORS_VARIANT):
        values = values | {"input_normalisation": AUTHORS_INPUT_NORMALISATION}
    return values


def for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """The network on `device` in eval mode, in channels-last on CPUs where that was measured faster.

    Same outputs up to float rounding (tests); training keeps the default layout, which is faster there
    at the paper setting (docs/performance.md).
    """
    model = model.to(device).eval()
    if device.type == "cpu" and getattr(model, "cpu_inference_channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model
