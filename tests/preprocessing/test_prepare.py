from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.preprocessing.authors import normalise_input_authors
from mmhvae.preprocessing.grid import centre_pad_crop
from mmhvae.preprocessing.masks import field_of_view
from mmhvae.preprocessing.prepare import PreprocessConfig, load_prepared
from mmhvae.training.data import PatternBatchSampler, SliceDataset
from mmhvae.training.folds import fold_split, stratified_folds

from conftest import SHAPE, small_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return small_cohort(tmp_path_factory.mktemp("cohort"))


def test_prepared_subject_scales_crop_and_skips_empty_slices(cohort):
    config = PreprocessConfig()
    files = discover_subjects(cohort)[0]
    prepared = load_prepared(files, config)
    assert prepared.inputs.shape == (4, *SHAPE) and prepared.present.all()
    assert list(prepared.slices) == [2, 3, 4, 5, 6]  # slices with no ultrasound FOV are skipped
    assert prepared.inputs.min() == -1 and prepared.inputs.max() == pytest.approx(1, abs=1e-5)
    assert np.all(prepared.inputs[:, ~prepared.fov] == -1) and np.all(prepared.targets[:, ~prepared.fov] == -1)
    # targets/ files are used as given (here: image / max), on the network's scale 2t - 1
    assert prepared.targets[1][prepared.fov].max() == pytest.approx(1.0, abs=1e-5)


def test_harmonised_targets_computed_from_tissue_labels(cohort):
    files = discover_subjects(cohort)[1]  # us + t1c, no targets folder
    prepared = load_prepared(files, PreprocessConfig())
    wm = np.zeros(SHAPE, bool)
    wm[6:18, 6:14] = True
    wm[10:13, 9:11] = False  # the CSF label inside
    target = (prepared.targets[2] + 1) / 2
    assert np.median(target[wm & prepared.fov]) == pytest.approx(1 / 5, rel=1e-4)
    assert np.all(prepared.targets[[1, 3]] == -1) and list(prepared.present) == [1, 0, 1, 0]


def test_cache_returns_the_same_arrays_and_is_invalidated_by_a_new_setting(cohort, tmp_path):
    files = discover_subjects(cohort)[0]
    first = load_prepared(files, PreprocessConfig(), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = load_prepared(files, PreprocessConfig(), cache_dir=tmp_path)
    for name in ("inputs", "targets", "present", "fov", "slices"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    load_prepared(files, PreprocessConfig(input_percentile=99.0), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_the_authors_input_normalisation_changes_the_inputs_only(cohort, tmp_path):
    files = discover_subjects(cohort)[0]
    ours = load_prepared(files, PreprocessConfig())
    theirs = load_prepared(files, PreprocessConfig(input_normalisation="authors"), cache_dir=tmp_path)
    subject = load_subject(files, PreprocessConfig().modality_set)
    fov = field_of_view(subject)
    for index, key in enumerate(PreprocessConfig().modalities):
        raw = subject.volumes[key].array
        np.testing.assert_array_equal(theirs.inputs[index], normalise_input_authors(raw, fov & np.isfinite(raw)))
    assert not np.array_equal(theirs.inputs, ours.inputs)
    for name in ("targets", "present", "fov", "slices"):
        np.testing.assert_array_equal(getattr(theirs, name), getattr(ours, name))
    load_prepared(files, PreprocessConfig(), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the cache tells the two apart
    with pytest.raises(ValueError, match="input_normalisation must be one of mmhvae, authors, got 'z-score'"):
        PreprocessConfig(input_normalisation="z-score")


def test_pad_crop_to_the_model_grid(cohort):
    files = discover_subjects(cohort)[0]
    prepared = load_prepared(files, PreprocessConfig(image_size=16))
    assert prepared.inputs.shape == (4, 16, 16, 8) and prepared.fov.shape == (16, 16, 8)
    padded = centre_pad_crop(np.zeros((3, 5, 7)), 9, fill=-1, axes=(1, 2))
    assert padded.shape == (3, 9, 9) and padded[0, 0, 0] == -1 and padded[0, 2, 1] == 0


def test_sampler_batches_share_one_pattern_and_cover_all_patterns(cohort):
    subjects = [load_prepared(f, PreprocessConfig()) for f in discover_subjects(cohort)]
    dataset = SliceDataset(subjects)
    sampler = PatternBatchSampler(dataset.patterns(), batch_size=4, num_batches=300, seed=3)
    seen = Counter()
    for batch in sampler:
        assert len(batch) == 4
        patterns = {dataset.pattern_of(i) for i in batch}
        assert len(patterns) == 1
        seen[patterns.pop()] += 1
    assert set(seen) == set(dataset.patterns())
    # r is drawn in proportion to its share of the training slices
    share = Counter(dataset.patterns())
    for pattern, count in seen.items():
        assert count / 300 == pytest.approx(share[pattern] / len(dataset), abs=0.09)


def test_sampler_is_deterministic_per_epoch_and_rank():
    patterns = [(1, 0)] * 10 + [(1, 1)] * 6
    a = list(PatternBatchSampler(patterns, 3, 20, seed=1))
    assert a == list(PatternBatchSampler(patterns, 3, 20, seed=1))
    other_rank = PatternBatchSampler(patterns, 3, 20, seed=1, rank=1, world_size=2)
    assert a != list(other_rank)
    later = PatternBatchSampler(patterns, 3, 20, seed=1)
    later.set_epoch(1)
    assert a != list(later)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    k=st.integers(2, 5),
    seed=st.integers(0, 1000),
)
def test_folds_are_disjoint_balanced_and_stratified(counts, k, seed):
    patterns = [tuple(int(b) for b in np.binary_repr(p + 1, 4)) for p, n in enumerate(counts) for _ in range(n)]
    if len(patterns) < k:
        with pytest.raises(InputError):
            stratified_folds(patterns, k, seed)
        return
    folds = stratified_folds(patterns, k, seed)
    tests = [set(fold_split(folds, f)[1]) for f in range(k)]
    assert set().union(*tests) == set(range(len(patterns)))
    assert sum(len(t) for t in tests) == len(patterns)  # disjoint
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    for pattern, n in Counter(patterns).items():
        per_fold = [sum(patterns[i] == pattern for i in t) for t in tests]
        assert max(per_fold) - min(per_fold) <= 1  # stratified: each pattern spread evenly
        if n >= k:
            assert min(per_fold) >= 1  # every input combination in every test fold
