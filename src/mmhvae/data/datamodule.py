"""The Lightning data module of training: the slices of `dataset.py` in pattern-grouped batches, split by rank.

Kept apart from `dataset.py` so that inference, which never needs Lightning, does not pay for importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from mmhvae.data.dataset import (
    PatternBatchSampler,
    PreprocessConfig,
    SliceDataset,
    cross_validation_split,
    load_prepared,
)
from mmhvae.io import SubjectFiles


class SliceDataModule(pl.LightningDataModule):
    """Training and validation slices for Lightning, with pattern-grouped training batches.

    Use `Trainer(use_distributed_sampler=False)`: the batch sampler already splits work across ranks.
    """

    def __init__(self, data: str | Path, config: PreprocessConfig, batch_size: int = 16,
                 batches_per_epoch: int = 100, folds: int | None = None, test_fold: int = 0,
                 val_subjects: Sequence[str] = (), seed: int = 0, cache_dir: str | Path | None = None,
                 num_workers: int = 0):
        super().__init__()
        self.data, self.config = Path(data), config
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.folds, self.test_fold, self.val_names = folds, test_fold, set(val_subjects)
        self.seed, self.num_workers = seed, num_workers
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.train_set: SliceDataset | None = None
        self.val_set: SliceDataset | None = None
        self.test_files: list[SubjectFiles] = []

    def split(self) -> tuple[list[SubjectFiles], list[SubjectFiles], list[SubjectFiles]]:
        """(train, validation, test) subject files: test = one stratified fold when `folds` is set."""
        candidates, test = cross_validation_split(self.data, self.config.modality_set, self.folds, self.test_fold,
                                                  self.seed)
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
