"""The methods of `mmhvae train --method`: the one list, with what each changes (Sections 4.3-4.4).

Kept free of torch so that the command line can list them in `--help` without loading a network:
- mmhvae: ours, the configuration as given;
- mopoe: one latent group, the global one (L = 1), Section 4.3 "MoPoE ... with a single latent variable";
- average: deterministic average of per-modality features at each level (Section 4.4.2, "Average");
- concat-zeros: one joint encoder on the concatenated images, zeros for missing ones (Section 4.4.2);
- mmgan, resvit: zero-imputation generators (MM-GAN, Sharma & Hamarneh 2019; ResViT, Dalmaz et al. 2022);
- m2dn: a conditional Brownian-bridge diffusion, noise for missing modalities (Meng et al. 2024, as the paper
  adapted it);
- mhvae: MHVAE [29] (Dorent et al., MICCAI 2023), the authors' earlier two-modality model, Table I's first row:
  our network restricted to the ultrasound and T2 (`MHVAE_MODALITIES`), trained on the subjects that have
  both (see `METHOD_TRAIN_RECIPES`).
The networks themselves are built in model/registry.py. Every method draws its input subsets from the same
p_alpha(r' | r) as MMHVAE unless `train.subset_sampling` is "own" (Section 4.3, "Curriculum learning from our
model was used to ensure standard sample selection for all competing methods").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

METHODS = ("mmhvae", "mopoe", "average", "concat-zeros", "mmgan", "resvit", "m2dn", "mhvae")

# MHVAE [29] handles only intra-operative ultrasound and T2 (Section 4.3).
MHVAE_MODALITIES = ("us", "t2")

# Training recipe of a method where it differs from MMHVAE's, applied where a configuration switches to the
# method (config.from_mapping, config.with_method); values a config file sets itself win. MM-GAN (Sharma &
# Hamarneh 2019, their code): L1 with weight 0.9 and LSGAN with weight 0.1 from the first step, Adam at a
# constant 2e-4 for generator and critic.
METHOD_TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "mmgan": {"image_loss": "l1", "gan_weight": 0.1, "gan_start": 0.0, "lr": 2e-4, "lr_final": 2e-4,
              "critic_lr": 2e-4},
    # ResViT (their code and README): L1 weighted 100 against the LSGAN term's 1, so w = 1/101, from the first
    # step; Adam at 2e-4 for generator and critic, decayed to 0 (theirs: constant, then linear to 0).
    "resvit": {"image_loss": "l1", "gan_weight": 1 / 101, "gan_start": 0.0, "lr": 2e-4, "lr_final": 0.0,
               "critic_lr": 2e-4},
    # M2DN (a diffusion model, no adversarial term): L1 on the predicted images, Adam at a constant 1e-4
    # (BBDM's; M2DN's own settings are not published with code).
    "m2dn": {"image_loss": "l1", "gan_weight": 0.0, "lr": 1e-4, "lr_final": 1e-4},
    # MHVAE [29]: the objective of Eq. 19 with its adversarial term (the MICCAI paper regularises its syntheses
    # with per-modality critics; its code, ReubenDo/MHVAE train.py, adds their LSGAN term after a warm-up), and
    # MMHVAE's recipe otherwise, so that Table I compares the models, not their schedules. Its code reads both
    # images of every subject and, at each step, decodes from the pair and from each image alone: it trains
    # on complete (us, t2) pairs only, and p_alpha of the `paper` mixture on a complete pair puts 1/3 on each of
    # those three subsets, so T = 3 draws from it match that step in expectation.
    "mhvae": {"complete_subjects_only": True},
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
    "mhvae": {"modalities": MHVAE_MODALITIES},
}
