"""The trained models a study compares, as variants of a base configuration: each method of Table I and the
ablations of Table II (latent groups, fusion, GAN loss; Section 4.4.2), at any training seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmhvae.config import RunConfig, with_method
from mmhvae.methods import METHODS


@dataclass(frozen=True)
class Variant:
    """One trained model of a study: a method (methods.py) plus network and training overrides."""

    name: str
    method: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def run_config(self, base: RunConfig, max_steps: int, folds: int | None = None, test_fold: int = 0) -> RunConfig:
        """`base` trained as this variant's method, with its overrides and the study's budget and fold."""
        run = with_method(base, self.method)
        model = dataclasses.replace(run.model, **self.model)
        train = dataclasses.replace(run.train, **self.train, max_steps=max_steps, folds=folds, test_fold=test_fold)
        return RunConfig(model, run.data, train)

    def with_seed(self, seed: int, fold_seed: int | None = None) -> Variant:
        """The same variant trained with another seed (named by it); `fold_seed` keeps the folds of a
        cross-validation where they were for every seed."""
        train = {**self.train, "seed": seed} | ({} if fold_seed is None else {"fold_seed": fold_seed})
        return Variant(f"{self.name}-seed{seed}", self.method, self.model, train)


BASELINES = tuple(Variant(method, method) for method in METHODS)

# Section 4.4.2: the paper's L = 1, 2, 3, 5, 7 use these of its 7 groups (1 = finest, 7 = global).
PAPER_LATENT_GROUPS: dict[int, tuple[int, ...]] = {
    1: (7,), 2: (1, 7), 3: (1, 4, 7), 5: (1, 3, 4, 5, 7), 7: (1, 2, 3, 4, 5, 6, 7)}


def matching_latent_groups(paper_groups: Sequence[int], top: int) -> tuple[int, ...]:
    """The paper's group indices mapped onto a network with `top` groups (finest 1 and global kept)."""
    return tuple(sorted({int(round(1 + (g - 1) * (top - 1) / 6)) for g in paper_groups}))


def latent_group_variants(base: RunConfig) -> list[tuple[str, Variant]]:
    """Table II a): (label, variant) per distinct group set; L = 1 is the mopoe baseline, all groups is ours."""
    top = base.model.num_pool + 1
    seen: dict[tuple[int, ...], str] = {}
    variants = []
    for paper_groups in PAPER_LATENT_GROUPS.values():
        groups = matching_latent_groups(paper_groups, top)
        if groups in seen:
            continue
        seen[groups] = f"L={len(groups)}"
        if groups == (top,):
            variant = Variant("mopoe", "mopoe")
        elif len(groups) == top:
            variant = Variant("mmhvae", "mmhvae")
        else:
            variant = Variant(f"L={len(groups)}", "mmhvae", model={"latent_groups": groups})
        label = seen[groups] + (f" (groups {','.join(map(str, groups))})" if top != 7 else "")
        variants.append((label + (" (ours)" if variant.name == "mmhvae" else ""), variant))
    return variants


def ablation_groups(base: RunConfig) -> list[tuple[str, list[tuple[str, Variant]]]]:
    """The three sections of Table II: (title, [(row label, variant)])."""
    return [
        ("a) number of latent groups L", latent_group_variants(base)),
        ("b) fusion", [("concat. w/ zeros (one encoder)", Variant("concat-zeros", "concat-zeros")),
                       ("average", Variant("average", "average")),
                       ("product of experts (ours)", Variant("mmhvae", "mmhvae"))]),
        ("c) GAN loss", [("without GAN", Variant("no-gan", "mmhvae", train={"gan_weight": 0.0})),
                         ("with GAN (ours)", Variant("mmhvae", "mmhvae"))]),
    ]


def ablation_variants(base: RunConfig) -> list[Variant]:
    """Distinct variants of the ablation study (the full model, average and concat-zeros appear once)."""
    return list({v.name: v for _, members in ablation_groups(base) for _, v in members}.values())
