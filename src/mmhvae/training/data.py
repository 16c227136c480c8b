"""The Lightning data module of training: the slices of `dataset.py` in pattern-grouped batches, split by rank.

Kept apart from `dataset.py` so that inference, which never needs Lightning, does not pay for importing it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmhvae.errors import InputError
from mmhvae.io.layouts import SubjectFiles
from mmhvae.preprocessing.prepare import Pattern, PreparedSubject, PreprocessConfig, load_prepared
from mmhvae.training.folds import complete_subjects, cross_validation_split


class SliceDataModule(pl.LightningDataModule):
    """Training and validation slices for Lightning, with pattern-grouped training batches.

    Use `Trainer(use_distributed_sampler=False)`: the batch sampler already splits work across ranks.
    """

    def __init__(self, data: str | Path, config: PreprocessConfig, batch_size: int = 16,
                 batches_per_epoch: int = 100, folds: int | None = None, test_fold: int = 0,
                 val_subjects: Sequence[str] = (), seed: int = 0, cache_dir: str | Path | None = None,
                 num_workers: int = 0, complete_subjects_only: bool = False, split_seed: int | None = None):
        super().__init__()
        self.data, self.config = Path(data), config
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.folds, self.test_fold, self.val_names = folds, test_fold, set(val_subjects)
        self.complete_subjects_only = complete_subjects_only
        # `seed` draws the batches; `split_seed` (default `seed`) dealt the folds (TrainConfig.fold_seed).
        self.seed, self.num_workers = seed, num_workers
        self.split_seed = seed if split_seed is None else split_seed
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.train_set: SliceDataset | None = None
        self.val_set: SliceDataset | None = None
        self.test_files: list[SubjectFiles] = []

    def split(self) -> tuple[list[SubjectFiles], list[SubjectFiles], list[SubjectFiles]]:
        """(train, validation, test) subject files: test = one stratified fold when `folds` is set; train and
        validation only subjects with every modality when `complete_subjects_only`."""
        candidates, test = cross_validation_split(self.data, self.config.modality_set, self.folds, self.test_fold,
                                                  self.split_seed)
        if self.complete_subjects_only:
            candidates = complete_subjects(candidates, self.config.modality_set)
        train = [s for s in candidates if s.name not in self.val_names]
        val = [s for s in candidates if s.name in self.val_names]
        return train, val, test

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, self.test_files = self.split()
        prepare = [load_prepared(f, self.config, self.cache_dir) for f in train]
        self.train_set = SliceDataset(prepare)
        if val:
            self.val_set = SliceDataset([load_prepared(f, self.config, self.cache_dir) for f in val])

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = PatternBatchSampler(self.train_set.patterns(), self.batch_size, self.batches_per_epoch,
                                      self.seed, rank, world)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


# ----------------------------------------------------------------------------------------------------
# Slices and batches
# ----------------------------------------------------------------------------------------------------


class SliceDataset(Dataset):
    """2D slices (third array axis) of prepared subjects, as tensors.

    Item: inputs [M, H, W], targets [M, H, W], present [M] bool, fov [H, W] bool, subject and slice index.
    """

    def __init__(self, subjects: Sequence[PreparedSubject]):
        if not subjects:
            raise InputError("no subjects to make slices from")
        self.subjects = list(subjects)
        self.index = [(i, int(k)) for i, s in enumerate(self.subjects) for k in s.slices]
        if not self.index:
            raise InputError("no slice has any foreground in the field of view")

    def __len__(self) -> int:
        return len(self.index)

    def pattern_of(self, item: int) -> Pattern:
        return self.subjects[self.index[item][0]].pattern

    def patterns(self) -> list[Pattern]:
        return [self.subjects[i].pattern for i, _ in self.index]

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i, k = self.index[item]
        subject = self.subjects[i]
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(subject.inputs[..., k])),
            "targets": torch.from_numpy(np.ascontiguousarray(subject.targets[..., k])),
            "present": torch.from_numpy(subject.present.copy()),
            "fov": torch.from_numpy(np.ascontiguousarray(subject.fov[..., k])),
            "subject": torch.tensor(i),
            "slice": torch.tensor(k),
        }


class PatternBatchSampler(Sampler[list[int]]):
    """Batches of B slices sharing one missingness pattern r (Algorithm 1, lines 3-4).

    r is drawn from the training set's observed patterns in proportion to their number of slices (i.e. as
    the r of a random training slice), then B slices are drawn among those with that r, without replacement
    when there are enough. Deterministic for (seed, epoch, rank); each rank of a distributed run draws its
    own batches.
    """

    def __init__(self, patterns: Sequence[Pattern], batch_size: int, num_batches: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1 or num_batches < 1:
            raise ValueError("batch_size and num_batches must be positive")
        groups: dict[Pattern, list[int]] = defaultdict(list)
        for item, pattern in enumerate(patterns):
            groups[tuple(pattern)].append(item)
        self.patterns = sorted(groups)
        self.members = [np.array(groups[p]) for p in self.patterns]
        sizes = np.array([len(m) for m in self.members], float)
        self.pattern_probs = sizes / sizes.sum()
        self.batch_size, self.num_batches = batch_size, num_batches
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.world_size])
        for _ in range(self.num_batches):
            members = self.members[rng.choice(len(self.members), p=self.pattern_probs)]
            replace = len(members) < self.batch_size
            yield [int(i) for i in rng.choice(members, self.batch_size, replace=replace)]


def pattern_counts(patterns: Sequence[Pattern]) -> Counter:
    return Counter(tuple(p) for p in patterns)
