"""Which network a configuration describes, and the network configuration of each method of `mmhvae train
--method`.

A network's configuration dict carries a `variant` key: missing or "mmhvae" (ours, `MMHVAEConfig`), "mmgan"
(the MM-GAN baseline, `MMGANConfig`), "resvit" (`ResViTConfig`), "m2dn" (`M2DNConfig`) or "authors" (the
authors' released network, `AuthorsConfig`).
`build_network(config_dict)` is the one place that turns such a dict into a network (model files, runs).

The methods themselves (Section 4.3 baselines, Section 4.4.2 ablations) are listed and described in
mmhvae/methods.py. Here each becomes a network configuration: the MMHVAE-family methods override fields of an
MMHVAE configuration (`MMHVAE_METHOD_OVERRIDES`; MHVAE keeps two of its modalities); the zero-imputation
generators (MM-GAN, ResViT, M2DN; model/baselines/), whose variant is the method's name, derive theirs from it
(their `like`) or keep their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from mmhvae.methods import METHODS, MMHVAE_METHOD_OVERRIDES
from mmhvae.modalities import canonical_key
from mmhvae.model.authors import VARIANT as AUTHORS_VARIANT
from mmhvae.model.authors import AuthorsConfig, AuthorsMMHVAE
from mmhvae.model.baselines.m2dn import M2DN, M2DNConfig
from mmhvae.model.baselines.m2dn import VARIANT as M2DN_VARIANT
from mmhvae.model.baselines.mmgan import MMGAN, MMGANConfig
from mmhvae.model.baselines.mmgan import VARIANT as MMGAN_VARIANT
from mmhvae.model.baselines.resvit import VARIANT as RESVIT_VARIANT
from mmhvae.model.baselines.resvit import ResViT, ResViTConfig
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig

MMHVAE_VARIANT = "mmhvae"

# The zero-imputation generators by method (= variant) name: their configuration and network classes.
ZERO_IMPUTATION_NETWORKS: dict[str, tuple[type, type]] = {
    MMGAN_VARIANT: (MMGANConfig, MMGAN),
    RESVIT_VARIANT: (ResViTConfig, ResViT),
    M2DN_VARIANT: (M2DNConfig, M2DN),
}

NetworkConfig = MMHVAEConfig | MMGANConfig | ResViTConfig | M2DNConfig


def network_config_from_dict(values: Mapping[str, Any]) -> NetworkConfig | AuthorsConfig:
    """The configuration object a dict describes, chosen by its `variant` key (see the module docstring)."""
    variant = values.get("variant", MMHVAE_VARIANT)
    if variant == MMHVAE_VARIANT:
        return MMHVAEConfig.from_dict({k: v for k, v in values.items() if k != "variant"})
    if variant in ZERO_IMPUTATION_NETWORKS:
        return ZERO_IMPUTATION_NETWORKS[variant][0].from_dict(values)
    if variant == AUTHORS_VARIANT:
        return AuthorsConfig.from_dict(values)
    known = ", ".join((MMHVAE_VARIANT, *ZERO_IMPUTATION_NETWORKS, AUTHORS_VARIANT))
    raise ValueError(f"unknown network variant {variant!r} (known: {known})")


def build_network(model_config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network for a configuration dict (`config.to_dict()` of any variant)."""
    config = network_config_from_dict(model_config)
    if isinstance(config, MMHVAEConfig):
        return MMHVAE(config)
    if isinstance(config, AuthorsConfig):
        return AuthorsMMHVAE(config)
    return ZERO_IMPUTATION_NETWORKS[config.variant][1](config)


def zero_imputation_config(method: str, config: NetworkConfig) -> NetworkConfig:
    """The configuration of zero-imputation method `method` for a run's configuration: kept when it already
    is one, else derived from an MMHVAE configuration (the method's `like`: same grid, scaled widths)."""
    config_class = ZERO_IMPUTATION_NETWORKS[method][0]
    if isinstance(config, config_class):
        return config
    if not isinstance(config, MMHVAEConfig):
        raise ValueError(f"method {method!r} needs an MMHVAE or {method} model configuration, "
                         f"got variant {config.variant!r}")
    return config_class.like(config)


def network_config_for_method(method: str, config: NetworkConfig) -> NetworkConfig:
    """The network configuration of `method`, derived from a run's configuration (idempotent).

    MMHVAE-family methods override a few fields of an MMHVAE configuration; the zero-imputation methods derive
    their generator from it (`MMGANConfig.like`, `ResViTConfig.like`, `M2DNConfig.like`), or keep their own
    configuration.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method in ZERO_IMPUTATION_NETWORKS:
        return zero_imputation_config(method, config)
    if not isinstance(config, MMHVAEConfig):
        raise ValueError(f"method {method!r} needs an MMHVAE model configuration, got variant {config.variant!r}")
    overrides = MMHVAE_METHOD_OVERRIDES[method]
    keys = {canonical_key(name) for name in config.modalities}
    lacking = [key for key in overrides.get("modalities", ()) if key not in keys]
    if lacking:  # a restriction to some modalities, not a change of them (MHVAE: us and t2)
        raise ValueError(f"method {method!r} handles {', '.join(overrides['modalities'])}; this configuration's "
                         f"modalities ({', '.join(config.modalities)}) lack {', '.join(lacking)}")
    return dataclasses.replace(config, **overrides)
