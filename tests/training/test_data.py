"""The Lightning data module: stratified split, pattern-grouped batches."""

from __future__ import annotations

import pytest
import torch

from mmhvae.preprocessing.prepare import PreprocessConfig
from mmhvae.training.data import SliceDataModule

from conftest import small_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return small_cohort(tmp_path_factory.mktemp("cohort"))


def test_data_module_yields_pattern_batches(cohort, tmp_path):
    config = PreprocessConfig(image_size=16)
    module = SliceDataModule(cohort, config, batch_size=4, batches_per_epoch=12, folds=2, test_fold=1,
                             val_subjects=["sub00"], cache_dir=tmp_path)
    module.setup("fit")
    train, val, test = module.split()
    names = lambda files: {f.name for f in files}  # noqa: E731
    assert not (names(train) & names(test)) and not (names(val) & names(test))
    assert names(val) <= {"sub00"} and len(test) == 4
    batches = list(module.train_dataloader())
    assert len(batches) == 12
    for batch in batches:
        assert batch["inputs"].shape == (4, 4, 16, 16) and batch["inputs"].dtype == torch.float32
        assert (batch["present"] == batch["present"][0]).all()
        missing = ~batch["present"][0]
        assert torch.all(batch["inputs"][:, missing] == -1)
