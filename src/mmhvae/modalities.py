"""Modality keys, ordered modality sets, subsets, and the mixture distribution p_alpha(r' | r).

Everything that knows about modality names lives here. A *subset* is a tuple of canonical keys in the
order of its ModalitySet; a *missingness vector* r is a tuple of 0/1 in the same order (Section 3.2).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mmhvae.errors import InputError

CANONICAL_KEYS: tuple[str, ...] = ("us", "t1", "t1c", "t2", "flair", "pd")
ALIASES: dict[str, str] = {
    "cet1": "t1c",
    "t1ce": "t1c",
    "t1gd": "t1c",
    "t1n": "t1",
    "t1w": "t1",
    "t2w": "t2",
    "t2f": "flair",
}
ULTRASOUND = "us"
PAPER_MODALITIES: tuple[str, ...] = ("us", "t2", "t1c", "flair")
# The order of the modalities a run takes from its data when neither `--modalities` nor its config names them:
# the paper's us, t2, t1c, flair in the paper's order, with T1 before T2 and PD last.
DATA_ORDER: tuple[str, ...] = ("us", "t1", "t2", "t1c", "flair", "pd")

Subset = tuple[str, ...]


def canonical_key(name: str) -> str | None:
    """Return the canonical key for a modality name or alias (case-insensitive), or None if unknown."""
    key = name.strip().lower()
    if key in CANONICAL_KEYS:
        return key
    return ALIASES.get(key)


def require_key(name: str, path: str | None = None) -> str:
    """Like canonical_key, but an unknown name is an InputError naming the accepted keys."""
    key = canonical_key(name)
    if key is None:
        accepted = ", ".join(CANONICAL_KEYS) + " (aliases: " + ", ".join(sorted(ALIASES)) + ")"
        raise InputError(f"unknown modality '{name}'; accepted: {accepted}", path)
    return key


def parse_modality_list(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse 'us,t2,cet1' (or a list) into canonical keys, refusing unknown and duplicated names."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    keys = tuple(require_key(n) for n in names)
    if len(set(keys)) != len(keys):
        raise InputError(f"modality list '{','.join(names)}' names the same modality twice")
    if not keys:
        raise InputError("the modality list is empty")
    return keys


def in_data_order(keys: Iterable[str]) -> tuple[str, ...]:
    """Modality names or aliases as canonical keys in DATA_ORDER, each once: the modality set of a data folder."""
    wanted = {require_key(k) for k in keys}
    return tuple(k for k in DATA_ORDER if k in wanted)


@dataclass(frozen=True)
class ModalitySet:
    """An ordered set of modalities: the order fixes channel indices, r vectors and subset tuples."""

    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        keys = tuple(require_key(k) for k in self.keys)
        if len(set(keys)) != len(keys):
            raise InputError(f"modality set {self.keys} names the same modality twice")
        if not keys:
            raise InputError("a modality set needs at least one modality")
        object.__setattr__(self, "keys", keys)

    @classmethod
    def parse(cls, text: str | Sequence[str]) -> ModalitySet:
        return cls(parse_modality_list(text))

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def ordered(self, keys: Iterable[str]) -> Subset:
        """Return the given keys (a subset of this set) as a tuple in this set's order."""
        wanted = set(keys)
        unknown = wanted - set(self.keys)
        if unknown:
            raise InputError(f"modalities {sorted(unknown)} are not in the modality set {list(self.keys)}")
        return tuple(k for k in self.keys if k in wanted)

    def indicator(self, keys: Iterable[str]) -> tuple[int, ...]:
        """Missingness vector r (1 observed, 0 missing) of a subset."""
        wanted = set(self.ordered(keys))
        return tuple(int(k in wanted) for k in self.keys)

    def from_indicator(self, r: Sequence[int]) -> Subset:
        if len(r) != len(self.keys):
            raise ValueError(f"indicator {tuple(r)} has {len(r)} entries, modality set has {len(self.keys)}")
        return tuple(k for k, bit in zip(self.keys, r) if bit)

    def subsets(self) -> list[Subset]:
        """All 2^M - 1 non-empty subsets, by size then in set order (the rows of the paper's Table I)."""
        return non_empty_subsets(self.keys)

    def named_weights(self, per_key: dict[str, float], source: str | None = None) -> dict[str, float]:
        """`per_key` (keys or aliases to factors >= 0) checked against this set, under canonical keys."""
        named: dict[str, float] = {}
        for name, value in per_key.items():
            key = require_key(name, source)
            if key not in self.keys:
                raise InputError(f"weight for '{name}', which is not in the modality set {list(self.keys)}", source)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InputError(f"weight for '{name}' must be >= 0, got {value!r}", source)
            named[key] = float(value)
        return named

    def weights(self, per_key: dict[str, float], source: str | None = None) -> tuple[float, ...]:
        """One weight per modality in set order: `per_key`'s value (keys or aliases), 1.0 where it is silent."""
        named = self.named_weights(per_key, source)
        return tuple(named.get(k, 1.0) for k in self.keys)


def non_empty_subsets(keys: Sequence[str]) -> list[Subset]:
    """All non-empty subsets of `keys`, by size, each in the order of `keys`."""
    return [c for size in range(1, len(keys) + 1) for c in itertools.combinations(keys, size)]


def subset_from_code(keys: Sequence[str], code: int) -> Subset:
    """The subset of `keys` whose bit is set in `code` (bit i keeps keys[i]): codes 1 .. 2^n - 1 are the
    non-empty subsets, so a uniform code is a uniform non-empty subset (MM-GAN's input dropout)."""
    if not 0 < code < 2 ** len(keys):
        raise ValueError(f"code {code} is not a non-empty subset of {len(keys)} modalities")
    return tuple(k for i, k in enumerate(keys) if code >> i & 1)


def subset_label(subset: Sequence[str]) -> str:
    """Human-readable label, e.g. 'us+t2'."""
    return "+".join(subset)


# ----------------------------------------------------------------------------------------------------
# The mixture distribution p_alpha(r' | r) of Section 3.3 (Eq. 7-8), with the weights of Section 4.2.
# ----------------------------------------------------------------------------------------------------

MIXTURE_PRESETS = ("paper", "default", "uniform", "singles")


def _add(dist: dict[Subset, float], subset: Subset, p: float) -> None:
    dist[subset] = dist.get(subset, 0.0) + p


def _share_among_possible(branches: list[list[Subset]]) -> dict[Subset, float]:
    """Each non-empty branch gets equal mass, spread uniformly over its subsets.

    A branch that is impossible for this r (no subsets) passes its mass to the others, as the paper's
    weights are defined only relative to one another.
    """
    possible = [b for b in branches if b]
    dist: dict[Subset, float] = {}
    for branch in possible:
        for subset in branch:
            _add(dist, subset, 1.0 / len(possible) / len(branch))
    return dist


def mixture_distribution(
    observed: Sequence[str], preset: str = "paper", anchor: str = ULTRASOUND
) -> dict[Subset, float]:
    """Explicit weights alpha^(r)_{r'} over the non-empty subsets r' of the observed set r (Eq. 7).

    `observed` is r as a tuple of keys in the modality-set order; subsets keep that order.

    - `paper` (Section 4.2): probability 1/3 each for the full observed set, the `anchor` modality
      (ultrasound) alone, and a uniformly drawn non-empty subset of the other observed modalities
      (the MR sequences). A branch impossible for this r shares its mass with the others.
    - `default` (any modality set): 1/3 for the full observed set, 2/3 uniform over its non-empty
      proper subsets (all mass on the full set when it has a single modality).
    - `uniform`: every non-empty subset of r equally likely, the mixture weights of MoPoE (Sutter et al.,
      ICLR 2021). Unlike `paper`, it also trains the subsets that pair the ultrasound with some, not all,
      of the MR sequences (`paper` never draws them when r holds more than one MR sequence), and it weighs
      every subset as `mmhvae evaluate` does.
    - `singles`: half the mass on the single modalities of r (alike), half as `uniform`. It trains the
      one-input paths (each modality's encoder and experts on their own) far more often, the harmonisation
      each one serves at inference; not a weighting from the paper.
    """
    observed = tuple(observed)
    if not observed:
        raise ValueError("the observed set r must not be empty")
    if preset == "paper":
        anchor_branch = [(anchor,)] if anchor in observed else []
        others = tuple(k for k in observed if k != anchor)
        return _share_among_possible([[observed], anchor_branch, non_empty_subsets(others)])
    if preset == "default":
        proper = non_empty_subsets(observed)[:-1]
        if not proper:
            return {observed: 1.0}
        dist = {observed: 1.0 / 3.0}
        for subset in proper:
            _add(dist, subset, 2.0 / 3.0 / len(proper))
        return dist
    if preset == "uniform":
        subsets = non_empty_subsets(observed)
        return {subset: 1.0 / len(subsets) for subset in subsets}
    if preset == "singles":
        return _share_among_possible([[(key,) for key in observed], non_empty_subsets(observed)])
    raise InputError(f"unknown mixture preset '{preset}'; choose one of {', '.join(MIXTURE_PRESETS)}")


def mixture_for(modalities: Sequence[str], preset: str) -> str:
    """The mixture preset a modality set trains with: `paper` anchors one branch on the ultrasound (Section 4.2),
    so a set without one trains with the generic `default` instead; any other preset is kept."""
    return "default" if preset == "paper" and ULTRASOUND not in modalities else preset


class SubsetSampler:
    """Draws r' ~ p_alpha(. | r) (Algorithm 1, line 10), caching the weights of each observed set r."""

    def __init__(self, preset: str = "paper", anchor: str = ULTRASOUND):
        self.preset = preset
        self.anchor = anchor
        self._cache: dict[Subset, tuple[list[Subset], np.ndarray]] = {}
        mixture_distribution(("_",), preset)  # fail early on an unknown preset

    def distribution(self, observed: Sequence[str]) -> dict[Subset, float]:
        return mixture_distribution(observed, self.preset, self.anchor)

    def sample(self, observed: Sequence[str], rng: np.random.Generator, size: int | None = None):
        """One subset (size=None) or a list of `size` independent subsets."""
        key = tuple(observed)
        if key not in self._cache:
            dist = self.distribution(key)
            self._cache[key] = (list(dist), np.array(list(dist.values())))
        subsets, probs = self._cache[key]
        picks = rng.choice(len(subsets), size=1 if size is None else size, p=probs)
        drawn = [subsets[i] for i in picks]
        return drawn[0] if size is None else drawn
