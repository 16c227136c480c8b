"""Run configuration: three dataclasses (model, data, training) read from and written to YAML.

A YAML file has up to three sections, `model`, `data` and `train`; anything it leaves out keeps the
preset's value. Unknown or wrongly typed fields are input errors naming the file and the field. The exact
configuration of a run is written next to its checkpoints (`config.yaml`).

`with_method` switches a configuration to another method of `mmhvae train --method` (methods.py): that
method's network and, under the values a file sets itself, its training recipe.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmhvae.errors import InputError
from mmhvae.io.files import write_text_atomic
from mmhvae.methods import METHODS, recipe_on_switch
from mmhvae.modalities import ModalitySet
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import (
    ZERO_IMPUTATION_NETWORKS,
    NetworkConfig,
    network_config_for_method,
    zero_imputation_config,
)
from mmhvae.preprocessing.prepare import PreprocessConfig

# The shipped presets, src/mmhvae/configs/<name>.yaml: the one source of every preset.
PRESETS = ("tiny", "paper", "paper-cpu", "paper-cpu-fp32")


@dataclass
class TrainConfig:
    """Training schedule and losses (Algorithm 1, Section 4.2; authors' choices noted)."""

    batch_size: int = 16
    passes: int = 3  # T, draws r' ~ p_alpha(. | r) per step (Algorithm 1)
    mixture: str = "paper"  # p_alpha preset (modalities.MIXTURE_PRESETS)
    image_loss: str = "l2"  # paper: squared error; "l1": authors' code
    # Per-modality factor on the image loss, e.g. {flair: 2.0}; modalities left out weigh 1 (the paper: all 1).
    image_loss_weights: dict[str, float] = field(default_factory=dict)
    kl_weight: float = 1e-3
    kl_warmup: float = 0.05  # fraction of max_steps over which the KL weight ramps up linearly
    gan_weight: float = 0.025  # paper; authors' code default 0.05
    gan_start: float = 0.8  # fraction of max_steps before which the GAN weight is 0 (paper: 800/1000 epochs)
    gan_loss: str = "lsgan"  # "lsgan" or "paper" (Eq. 15-16)
    memory_size: int = 64  # recent real images kept per modality for critics of missing modalities
    lr: float = 2e-3  # Adamax (authors)
    lr_final: float = 1e-4  # end of the cosine decay (authors)
    critic_lr: float = 2e-4  # Adam (authors)
    grad_clip: float = 200.0
    ema_decay: float = 0.999
    max_steps: int = 20_000
    max_minutes: float | None = None
    # An "epoch" is `checkpoint_every` steps; a checkpoint closes each one, so a resumed run restarts at an
    # epoch boundary with the batch sampler, RNGs and memory exactly where they were.
    checkpoint_every: int = 500
    log_every: int = 10
    validate_every: int = 500
    val_fraction: float = 0.1  # of subjects, stratified, held out of training for validation
    # Cross-validation (Section 4.4.1): with `folds` set, the subjects of fold `test_fold` (stratified by
    # missingness pattern, `seed`) are left out of training and validation, for `mmhvae evaluate --folds`.
    folds: int | None = None
    test_fold: int = 0
    max_nonfinite_in_a_row: int = 20
    seed: int = 0
    # Finest levels whose activations are recomputed in the backward pass (activation checkpointing): memory
    # for about one more forward pass; 0 = off.
    activation_checkpointing: int = 0
    precision: str = "auto"  # "auto": bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the convolutional stacks (MMHVAE.compile_blocks); needs a C++ compiler
    num_workers: int = 0
    # Top-level parts of the network that are trained, e.g. [decoders]; the others stay frozen (empty: all).
    # With `--init-from` a model file whose architecture differs only in these parts: fit new parts onto a
    # trained model without disturbing what it has learned.
    trainable: tuple[str, ...] = ()
    # What is trained (`mmhvae train --method`): mmhvae, or a baseline of Section 4.3-4.4 (methods.py).
    method: str = "mmhvae"


@dataclass
class RunConfig:
    """A run's whole configuration: the network, the preprocessing of its data, and its training."""

    # A zero-imputation generator's configuration (a model section with `variant: mmgan`, `resvit` or `m2dn`)
    # only for the train.method of that name.
    model: NetworkConfig = field(default_factory=MMHVAEConfig)
    data: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": _plain(dataclasses.asdict(self.data)),
                "train": dataclasses.asdict(self.train)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` (from YAML) fits a dataclass field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _update(instance: Any, values: dict[str, Any], section: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"section '{section}' must be a mapping", source)
    hints = typing.get_type_hints(type(instance))
    names = {f.name for f in dataclasses.fields(instance)}
    for key, value in values.items():
        if key not in names:
            raise InputError(f"unknown field {f'{section}.{key}'!r} (known: {', '.join(sorted(names))})", source)
        if not _accepts(hints[key], value):
            raise InputError(f"field '{section}.{key}' has the wrong type: {value!r} (expected {hints[key]})", source)
    merged = dataclasses.asdict(instance) | values
    try:
        return type(instance)(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})
    except (ValueError, TypeError, InputError) as exc:
        raise InputError(f"section '{section}': {exc}", source) from None


def preset(name: str) -> RunConfig:
    """A shipped preset: `tiny` (64x64, CPU-sized), `paper` (Section 4.2), or `paper-cpu` / `paper-cpu-fp32` (the
    paper's network and maths, lean for training on a CPU)."""
    if name not in PRESETS:
        raise InputError(f"unknown config preset '{name}' (presets: {', '.join(PRESETS)}, or a .yaml file)")
    text = resources.files("mmhvae").joinpath("configs", f"{name}.yaml").read_text()
    return from_yaml_text(text, f"<preset {name}>", RunConfig())


def from_yaml_text(text: str, source: str, base: RunConfig) -> RunConfig:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", source) from None
    return from_mapping(values, source, base)


def from_mapping(values: Any, source: str, base: RunConfig) -> RunConfig:
    """A run configuration from sections `model`, `data`, `train` (and `base`), validated field by field."""
    if not isinstance(values, dict):
        raise InputError("a config file must be a mapping with sections model, data, train", source)
    unknown = sorted(set(values) - {"model", "data", "train", "base"})
    if unknown:
        raise InputError(f"unknown section(s) {unknown} (sections: model, data, train)", source)
    if "base" in values:
        base = preset(values["base"])
    base_model = base.model
    model_values = values.get("model", {})
    variant = model_values.get("variant") if isinstance(model_values, dict) else None
    if variant in ZERO_IMPUTATION_NETWORKS:
        # A zero-imputation generator; fields it leaves out follow the preset (same grid, scaled widths).
        try:
            base_model = zero_imputation_config(variant, base_model)
        except ValueError as exc:
            raise InputError(f"section 'model': {exc}", source) from None
    model = _update(base_model, model_values, "model", source)
    data = _update(base.data, values.get("data", {}), "data", source)
    train_values = values.get("train", {})
    train = _update(base.train, train_values, "train", source)
    if train.method not in METHODS:
        raise InputError(f"field 'train.method': unknown method {train.method!r} (methods: {', '.join(METHODS)})",
                         source)
    model_variant = getattr(model, "variant", None)
    if model_variant in ZERO_IMPUTATION_NETWORKS and train.method != model_variant:
        if "method" in train_values:
            raise InputError(f"train.method {train.method!r} does not match the model section (variant "
                             f"{model_variant})", source)
        train = dataclasses.replace(train, method=model_variant)  # the model section says what is trained
    if train.method in ZERO_IMPUTATION_NETWORKS and isinstance(model, MMHVAEConfig):
        model = zero_imputation_config(train.method, model)  # on the same grid, widths scaled
    # A file that switches method gets the method's recipe, under the values it sets itself.
    train = dataclasses.replace(train, **recipe_on_switch(base.train.method, train.method, keep=train_values))
    # Checked at load, not in training, and saved under canonical keys (`T2F: 2` is written `flair: 2.0`).
    weights = ModalitySet(tuple(model.modalities)).named_weights(train.image_loss_weights, source)
    train = dataclasses.replace(train, image_loss_weights=weights)
    if tuple(data.modalities) != tuple(model.modalities):
        data = dataclasses.replace(data, modalities=tuple(model.modalities))
    if data.image_size != model.image_size:  # slices are fitted to the model's grid
        data = dataclasses.replace(data, image_size=model.image_size)
    return RunConfig(model, data, train)


def load_config(name_or_path: str | Path) -> RunConfig:
    """A preset name (PRESETS) or a YAML file (optionally `base: <preset>` plus overrides)."""
    if str(name_or_path) in PRESETS:
        return preset(str(name_or_path))
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(f"config file does not exist (or use a preset: {', '.join(PRESETS)})", path)
    return from_yaml_text(path.read_text(), str(path), RunConfig())


def save_config(config: RunConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def with_method(run: RunConfig, method: str) -> RunConfig:
    """The run configuration of `method` (methods.py): its network (model/registry.py) and its training recipe.

    The recipe (methods.METHOD_TRAIN_RECIPES) is applied only when `run` is switched to another method (as
    `--method` does). A config that already names `method` is taken as written (`from_mapping` gave it the
    recipe under its own values), so a saved run's or a study variant's settings are never overwritten."""
    try:
        model = network_config_for_method(method, run.model)
    except ValueError as exc:
        raise InputError(f"--method {method}: {exc}") from None
    train = replace(run.train, method=method, **recipe_on_switch(run.train.method, method))
    return RunConfig(model, run.data, train)
