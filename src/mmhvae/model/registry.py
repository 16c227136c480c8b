"""Which network a configuration describes, and the methods of `mmhvae train --method`.

A network's configuration dict carries a `variant` key: missing or "mmhvae" (ours, `MMHVAEConfig`), "mmgan"
(the MM-GAN baseline, `MMGANConfig`) or "authors" (the authors' released network, `AuthorsConfig`).
`build_network(config_dict)` is the one place that turns such a dict into a network (model files, runs).

Methods (Section 4.3 baselines, Section 4.4.2 ablations) are MMHVAE configurations, except MM-GAN:
- mmhvae: the configuration as given;
- mopoe: one latent group, the global one (L = 1), Section 4.3 "MoPoE ... with a single latent variable";
- average: deterministic average of per-modality features at each level (Section 4.4.2, "Average");
- concat-zeros: one joint encoder on the concatenated images, zeros for missing ones (Section 4.4.2,
  "Concat. w/ zeros ... only one encoder is used"; not the feature-level `fusion: concat_zeros`);
- mmgan: a U-Net generator with zero imputation and a PatchGAN critic (Sharma & Hamarneh, TMI 2019).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from mmhvae.model.authors import VARIANT as AUTHORS_VARIANT
from mmhvae.model.authors import AuthorsConfig, AuthorsMMHVAE
from mmhvae.model.mmgan import MMGAN, MMGANConfig
from mmhvae.model.mmgan import VARIANT as MMGAN_VARIANT
from mmhvae.model.mmhvae import MMHVAE, MMHVAEConfig

MMHVAE_VARIANT = "mmhvae"

METHODS = ("mmhvae", "mopoe", "average", "concat-zeros", "mmgan")

# Training recipe of a method where it differs from MMHVAE's, applied where a configuration switches to the
# method (config.from_mapping, train.with_method); values a config file sets itself win. MM-GAN (Sharma &
# Hamarneh 2019, their code): L1 with weight 0.9 and LSGAN with weight 0.1 from the first step, Adam at a
# constant 2e-4 for generator and critic.
METHOD_TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "mmgan": {"image_loss": "l1", "gan_weight": 0.1, "gan_start": 0.0, "lr": 2e-4, "lr_final": 2e-4,
              "critic_lr": 2e-4},
}


def recipe_on_switch(previous: str, method: str, keep: Collection[str] = ()) -> dict[str, Any]:
    """The training settings a switch from method `previous` to `method` brings (none when it is no switch),
    leaving out the settings named in `keep` (those a config file sets itself)."""
    if method == previous:
        return {}
    return {k: v for k, v in METHOD_TRAIN_RECIPES.get(method, {}).items() if k not in keep}

# The MMHVAE-family methods as overrides of an MMHVAE configuration.
MMHVAE_METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "mmhvae": {},
    "mopoe": {"num_latent_levels": 1, "latent_groups": None, "encoder": "per_modality"},
    "average": {"fusion": "average", "encoder": "per_modality"},
    "concat-zeros": {"encoder": "joint", "fusion": "poe"},
}

NetworkConfig = MMHVAEConfig | MMGANConfig


def network_config_from_dict(values: Mapping[str, Any]) -> MMHVAEConfig | MMGANConfig | AuthorsConfig:
    """The configuration object a dict describes, chosen by its `variant` key (see the module docstring)."""
    variant = values.get("variant", MMHVAE_VARIANT)
    if variant == MMHVAE_VARIANT:
        return MMHVAEConfig.from_dict({k: v for k, v in values.items() if k != "variant"})
    if variant == MMGAN_VARIANT:
        return MMGANConfig.from_dict(values)
    if variant == AUTHORS_VARIANT:
        return AuthorsConfig.from_dict(values)
    raise ValueError(f"unknown network variant {variant!r} (known: {MMHVAE_VARIANT}, {MMGAN_VARIANT}, "
                     f"{AUTHORS_VARIANT})")


def build_network(model_config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network for a configuration dict (`config.to_dict()` of any variant)."""
    config = network_config_from_dict(model_config)
    if isinstance(config, MMHVAEConfig):
        return MMHVAE(config)
    if isinstance(config, MMGANConfig):
        return MMGAN(config)
    return AuthorsMMHVAE(config)


def network_config_for_method(method: str, config: NetworkConfig) -> NetworkConfig:
    """The network configuration of `method`, derived from a run's configuration (idempotent).

    MMHVAE-family methods override a few fields of an MMHVAE configuration; "mmgan" derives a U-Net of
    comparable size from it (`MMGANConfig.like`), or keeps an MMGAN configuration as it is.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "mmgan":
        return config if isinstance(config, MMGANConfig) else MMGANConfig.like(config)
    if not isinstance(config, MMHVAEConfig):
        raise ValueError(f"method {method!r} needs an MMHVAE model configuration, got variant {config.variant!r}")
    return dataclasses.replace(config, **MMHVAE_METHOD_OVERRIDES[method])
