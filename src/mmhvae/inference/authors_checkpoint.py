"""The authors' released model in our tool: checkpoint conversion and their input conventions.

`import_authors` turns their raw state_dict (e.g. `pretrained/mmhvae_f0/models/CP_main_1000.pth` of
ReubenDo/MMHVAE, trained on ReMIND fold 0) into our model file, holding the `authors` variant
(`mmhvae.model.authors`). Nothing is downloaded: the user fetches the checkpoint from their repository.

Their conventions, recorded in the model file (its preprocessing and meta) and applied by `mmhvae predict`
and `mmhvae evaluate`:
- modality keys us, t2, cet1, flair (ours: us, t2, t1c, flair), passed to the network in that order;
- input normalisation of their utilities/dataset.py (`preprocessing.authors`), which differs slightly
  from ours (`preprocessing.intensity.normalise_input`, see there);
- outputs on the scale 2t - 1 of the harmonised intensities t (their pred.py writes 255 t as integers;
  we write t, as for our own models);
- inference temperature 0.7 in their pred.py (paper and our default: 0.5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.model.authors import AuthorsConfig, AuthorsMMHVAE
from mmhvae.model_file import load_failure, save_model_file
from mmhvae.preprocessing.intensity import INPUT_PERCENTILE
from mmhvae.preprocessing.prepare import AUTHORS_INPUT_NORMALISATION, PreprocessConfig

AUTHORS_REPOSITORY = "https://github.com/ReubenDo/MMHVAE"
AUTHORS_TEMPERATURE = 0.7
# How many key names an error message lists before it says "and N more".
_LISTED = 6


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _describe(config: AuthorsConfig) -> str:
    return (f"base {config.base_features}, max {config.max_features}, {config.num_pool} poolings, "
            f"{config.image_size}x{config.image_size}, modalities {','.join(config.checkpoint_keys)}")


def check_state_dict(state: object, config: AuthorsConfig, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors if they match `config` key by key and shape by shape, else an InputError."""
    if isinstance(state, Mapping) and state.get("format") == "mmhvae-model":
        raise InputError("this is already an mmhvae model file; use it directly with --model", path)
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError("not a state_dict (a mapping of parameter names to tensors)", path)
    expected = {k: tuple(v.shape) for k, v in AuthorsMMHVAE(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [f"{k} expected {expected[k]} found {found[k]}" for k in expected
                 if k in found and found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped keys: {_listed(misshaped)}")
    if problems:
        raise InputError(f"does not match the authors' network ({_describe(config)}): {'; '.join(problems)}", path)
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise InputError(f"NaN or infinite values in {len(non_finite)} tensors: {_listed(non_finite)}", path)
    return dict(state)


def import_authors(checkpoint: str | Path, out: str | Path, config: AuthorsConfig | None = None,
                   overwrite: bool = False) -> Path:
    """Convert the authors' raw state_dict into our model file at `out`; returns `out`.

    config: their network's hyper-parameters (default: the released model, base 16, max 128, 6 poolings,
    192x192, us/t2/cet1/flair; `AuthorsConfig.from_authors_arguments` builds one from their flags).
    Any mismatch (missing, unexpected or mis-shaped keys) is an InputError naming the file; nothing is
    written then (save_model_file writes through a temporary file).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    config = config or AuthorsConfig()
    if not checkpoint.is_file():
        raise InputError("checkpoint file does not exist", checkpoint)
    if out.is_dir():
        raise InputError("is a folder; give the model file to write, e.g. authors.pt", out)
    refuse_to_overwrite(out, overwrite)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"not a loadable PyTorch checkpoint: {load_failure(exc)}", checkpoint) from None
    state = check_state_dict(state, config, checkpoint)

    model = AuthorsMMHVAE(config)
    model.load_state_dict(state)
    preprocess = PreprocessConfig(modalities=config.modalities, input_percentile=INPUT_PERCENTILE,
                                  crop_to_ultrasound_fov=True, image_size=config.image_size,
                                  input_normalisation=AUTHORS_INPUT_NORMALISATION)
    meta = {
        "source": f"authors' released checkpoint ({AUTHORS_REPOSITORY})",
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "modality_mapping": dict(zip(config.checkpoint_keys, config.modalities)),
        "input_normalisation": AUTHORS_INPUT_NORMALISATION,
        "input_normalisation_note": "per volume: foreground > 0, clip at its 99.95th percentile, min-max to "
                                    "[-255/256, 1], background -1 (their utilities/dataset.py)",
        "output_scaling": "network output y in [-1, 1] is 2t - 1 of the harmonised intensity t; predict writes t "
                          "(their pred.py writes int(255 t))",
        "output_mask": "outputs are -1 outside the foreground of the first input in the order "
                       f"{','.join(config.modalities)}",
        "default_temperature": AUTHORS_TEMPERATURE,
    }
    return save_model_file(out, model, preprocess, meta)
