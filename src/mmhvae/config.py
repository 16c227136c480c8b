"""Run configuration: three dataclasses (model, data, training) read from and written to YAML.

A YAML file has up to three sections, `model`, `data` and `train`; anything it leaves out keeps the
preset's value. Unknown or wrongly typed fields are input errors naming the file and the field. The exact
configuration of a run is written next to its checkpoints (`config.yaml`).

`with_method` switches a configuration to another method of `mmhvae train --method` (methods.py): that
method's network and, under the values a file sets itself, its training recipe.
"""

from __future__ import annotations

import dataclasses
import re
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
from mmhvae.modalities import ModalitySet, mixture_for
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import (
    ZERO_IMPUTATION_NETWORKS,
    NetworkConfig,
    network_config_for_method,
    zero_imputation_config,
)
from mmhvae.preprocessing.prepare import PreprocessConfig

# The shipped presets, src/mmhvae/configs/<name>.yaml: the one source of every preset.
PRESETS = ("tiny", "paper", "paper-cpu", "paper-cpu-fp32", "brats", "brats-cpu")
KL_NORMALISATIONS = ("image_pixels", "modality_pixels")
SUBSET_SAMPLINGS = ("mixture", "own")


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
    # What the KL term is divided by (objective.mmhvae_losses): "image_pixels", H x W, Eq. 19 per image pixel;
    # "modality_pixels", H x W x M, as runs saved before this field trained (the KL weighed M times less).
    kl_normalisation: str = "image_pixels"
    # How the input subsets r' are drawn for every method: "mixture", r' ~ p_alpha(. | r) of `mixture`
    # (Section 4.3: the same sample selection for all methods); "own", the method's own scheme (MM-GAN,
    # ResViT, M2DN: uniform over the non-empty subsets of r; the MMHVAE family: the mixture itself).
    subset_sampling: str = "mixture"
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
    # Early stopping on the validation split (val_loss, every `validate_every` steps), max_steps staying the
    # cap: stop after this many validations in a row without an improvement by more than
    # `early_stopping_min_delta` of the best val_loss so far (0: off).
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.01
    # > 0: the flat-tail rule instead (training/stopping.py): stop once val_loss has changed by less than
    # `early_stopping_min_delta` over this fraction of the steps so far, a window of at least
    # `early_stopping_patience` validations.
    early_stopping_tail: float = 0.0
    # An "epoch" is `checkpoint_every` steps; a checkpoint closes each one, so a resumed run restarts at an
    # epoch boundary with the batch sampler, RNGs and memory exactly where they were.
    checkpoint_every: int = 500
    log_every: int = 10
    validate_every: int = 500
    val_fraction: float = 0.1  # of subjects, stratified, held out of training for validation
    # Train (and validate) only on subjects that have every modality of the model, as MHVAE [29] did.
    complete_subjects_only: bool = False
    # Cross-validation (Section 4.4.1): with `folds` set, the subjects of fold `test_fold` (stratified by
    # missingness pattern, `split_seed`) are left out of training and validation, for `mmhvae evaluate --folds`.
    folds: int | None = None
    test_fold: int = 0
    # The seed of the folds and of the validation split when it is not `seed`: the runs of a study with several
    # training seeds keep the same subjects in each split, so that their spread is the training's alone.
    fold_seed: int | None = None
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

    @property
    def split_seed(self) -> int:
        """The seed that deals the subjects into folds and the validation split."""
        return self.seed if self.fold_seed is None else self.fold_seed

    def __post_init__(self) -> None:
        choices = {"kl_normalisation": KL_NORMALISATIONS, "subset_sampling": SUBSET_SAMPLINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if not 0 <= self.early_stopping_min_delta < 1:
            raise ValueError("early_stopping_min_delta is a fraction of the best val_loss, in [0, 1), got "
                             f"{self.early_stopping_min_delta}")
        if not 0 <= self.early_stopping_tail < 1:
            raise ValueError(f"early_stopping_tail is a fraction of the steps, in [0, 1), got "
                             f"{self.early_stopping_tail}")


@dataclass
class RunConfig:
    """A run's whole configuration: the network, the preprocessing of its data, and its training."""

    # A zero-imputation generator's configuration (a model section with `variant: mmgan`, `resvit` or `m2dn`)
    # only for the train.method of that name.
    model: NetworkConfig = field(default_factory=MMHVAEConfig)
    data: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The train fields a config file set itself (not its preset): a method's recipe never overrides them
    # (with_method). Not written to YAML: a saved run's file sets every field.
    own_train_fields: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": _plain(dataclasses.asdict(self.data)),
                "train": dataclasses.asdict(self.train)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


YAML_1_2_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


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


def _yaml_float(annotation: Any, value: Any) -> Any:
    """`value` as a float where a float field (optional or not) holds a number YAML 1.1 left a string, such as
    1e-2 (PyYAML reads an exponent as a float only with a dot: 1.0e-2); anything else unchanged."""
    takes_float = annotation is float or float in typing.get_args(annotation)
    if takes_float and isinstance(value, str) and YAML_1_2_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _update(instance: Any, values: dict[str, Any], section: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"section '{section}' must be a mapping", source)
    values = dict(values)
    hints = typing.get_type_hints(type(instance))
    names = {f.name for f in dataclasses.fields(instance)}
    for key, value in values.items():
        if key not in names:
            raise InputError(f"unknown field {f'{section}.{key}'!r} (known: {', '.join(sorted(names))})", source)
        values[key] = value = _yaml_float(hints[key], value)
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
    # A preset's values are defaults, not a file's own choices: a method's recipe replaces them.
    return replace(from_yaml_text(text, f"<preset {name}>", RunConfig()), own_train_fields=frozenset())


def read_yaml(text: str, source: str) -> Any:
    """The values of a YAML text (an empty text is an empty mapping); invalid YAML is an input error."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", source) from None


def from_yaml_text(text: str, source: str, base: RunConfig) -> RunConfig:
    return from_mapping(read_yaml(text, source), source, base)


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
    own = frozenset(train_values) if isinstance(train_values, dict) else frozenset()
    return RunConfig(model, data_for_model(data, model), train, own)


def data_for_model(data: PreprocessConfig, model: NetworkConfig) -> PreprocessConfig:
    """The preprocessing of a network's data: its modalities, slices fitted to its grid."""
    if tuple(data.modalities) != tuple(model.modalities):
        data = dataclasses.replace(data, modalities=tuple(model.modalities))
    if data.image_size != model.image_size:
        data = dataclasses.replace(data, image_size=model.image_size)
    return data


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
    """The run configuration of `method` (methods.py): its network (model/registry.py), the data that network
    reads (its modalities), and its training recipe.

    The recipe (methods.METHOD_TRAIN_RECIPES) is applied only when `run` is switched to another method (as
    `--method` does), and never over the train fields the config file set itself (`own_train_fields`: a
    study sweeping `train.lr` keeps its value for every method). A config that already names `method` is
    taken as written (`from_mapping` gave it the recipe under its own values), so a saved run's or a study
    variant's settings are never overwritten."""
    try:
        model = network_config_for_method(method, run.model)
    except ValueError as exc:
        raise InputError(f"--method {method}: {exc}") from None
    recipe = recipe_on_switch(run.train.method, method, keep=run.own_train_fields)
    train = replace(run.train, method=method, **recipe)
    return RunConfig(model, data_for_model(run.data, model), train, run.own_train_fields)


def names_modalities(name_or_path: str | Path) -> bool:
    """Whether a preset or YAML file, or a preset it builds on (`base:`), names `model.modalities`: when none does,
    `mmhvae train` takes the modalities found in its data."""
    if str(name_or_path) in PRESETS:
        source = f"<preset {name_or_path}>"
        text = resources.files("mmhvae").joinpath("configs", f"{name_or_path}.yaml").read_text()
    else:
        source, text = str(name_or_path), Path(name_or_path).read_text()
    values = read_yaml(text, source)
    if not isinstance(values, dict):
        return False
    model = values.get("model")
    if isinstance(model, dict) and "modalities" in model:
        return True
    return values.get("base") in PRESETS and names_modalities(values["base"])


def with_modalities(run: RunConfig, modalities: tuple[str, ...]) -> RunConfig:
    """`run` on the modality set `modalities` (canonical keys, in order): its network and data take them, and
    without an ultrasound the paper's mixture gives way to the generic one (modalities.mixture_for), unless the
    config file chose the mixture itself."""
    try:
        model = dataclasses.replace(run.model, modalities=tuple(modalities))
    except ValueError as exc:
        raise InputError(f"modalities {','.join(modalities)}: {exc}") from None
    weights = ModalitySet(tuple(modalities)).named_weights(run.train.image_loss_weights, "train.image_loss_weights")
    mixture = run.train.mixture if "mixture" in run.own_train_fields else mixture_for(modalities, run.train.mixture)
    train = dataclasses.replace(run.train, image_loss_weights=weights, mixture=mixture)
    return RunConfig(model, data_for_model(run.data, model), train, run.own_train_fields)
