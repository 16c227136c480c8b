"""Ultrasound tumour segmentation learnt from synthetic ultrasound (Sections 4.4.3, 5.3, Table IV): metrics against
MONAI and analytic values, training, the network file, the experiment end to end on tiny phantom cohorts."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, SurfaceDistanceMetric

from mmhvae.errors import InputError
from mmhvae.experiments.downstream.labelled_ultrasound import LabelledVolume
from mmhvae.experiments.downstream.segmentation import (
    markdown_table,
    segmentation_experiment,
    segmentation_scores,
    train_segmentation_network,
)
from mmhvae.experiments.downstream.segmenter import (
    FORMAT,
    SegmenterConfig,
    SliceSet,
    build_unet,
    load_segmenter,
    save_segmenter,
    segment_ultrasound,
    segment_volume,
    subject_folds,
    train_network,
    train_segmenter,
    training_slices,
)
from mmhvae.phantom.cohort import simulate_cohort

DEMO_MODEL = Path(__file__).resolve().parents[3] / "models" / "phantom-tiny.pt"
# Seed 0, size 48: subject 0 is low grade (no tumour core), subjects 1-4 high grade.
TINY = {"size": 48, "slices": 12, "seed": 0, "missing": "complete"}


# ---------------------------------------------------------------------------------------------------- metrics


def cube(shape=(14, 14, 14), start=(4, 4, 4), side=4) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def test_shifted_cubes_give_the_analytic_dice_and_assd():
    # A 4-voxel cube shifted by one voxel: 3/4 overlap -> Dice 0.75. Surface voxels: 64 - 8 = 56 per cube; those
    # on the two faces across the shift (16 + 4 interior ones of the far face) are one voxel from the other
    # cube's surface, the others on it: ASSD = spacing * 20 / 56.
    reference, shifted = cube(), cube(start=(5, 4, 4))
    scores = segmentation_scores(shifted, reference, (1.5, 1.5, 1.5))
    assert scores["dice"] == pytest.approx(0.75)
    assert scores["assd_mm"] == pytest.approx(1.5 * 20 / 56, rel=1e-5)
    assert not scores["empty_prediction"] and scores["predicted_voxels"] == scores["reference_voxels"] == 64
    # A 2-voxel cube (all voxels on the surface) shifted along the first axis: half at 0, half at one spacing.
    small = segmentation_scores(cube(start=(5, 4, 4), side=2), cube(side=2), (1.5, 2.0, 3.0))
    assert small["dice"] == pytest.approx(0.5)
    assert small["assd_mm"] == pytest.approx(0.75, rel=1e-5)
    assert segmentation_scores(reference, reference, (1.0, 1.0, 1.0))["assd_mm"] == 0.0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # inside MONAI 1.5-1.6
def test_scores_match_monai_metric_classes():
    rng = np.random.default_rng(0)
    grid = np.indices((20, 18, 10)).astype(float)
    reference = ((grid[0] - 10) ** 2 + (grid[1] - 9) ** 2 + (grid[2] - 5) ** 2) < 30
    prediction = reference ^ (rng.random(reference.shape) < 0.05)
    spacing = (1.2, 0.8, 2.5)
    scores = segmentation_scores(prediction, reference, spacing)
    y_pred, y = (torch.from_numpy(a)[None, None].float() for a in (prediction, reference))
    dice = DiceMetric(include_background=True)
    dice(y_pred, y)
    assd = SurfaceDistanceMetric(include_background=True, symmetric=True)
    assd(y_pred, y, spacing=list(spacing))
    assert scores["dice"] == pytest.approx(float(dice.aggregate()), rel=1e-6)
    assert scores["assd_mm"] == pytest.approx(float(assd.aggregate()), rel=1e-6)


def test_empty_prediction_scores_dice_zero_and_the_grid_diagonal():
    reference = cube()
    scores = segmentation_scores(np.zeros_like(reference), reference, (1.0, 2.0, 2.0))
    assert scores["dice"] == 0.0 and scores["empty_prediction"]
    assert scores["assd_mm"] == pytest.approx(math.sqrt(14**2 + 28**2 + 28**2))
    with pytest.raises(InputError, match="no tumour"):
        segmentation_scores(reference, np.zeros_like(reference), (1.0, 1.0, 1.0))


def test_table_reports_median_iqr_and_counts_empty_predictions():
    rows = [{"method": "m", "test_set": "t", "subject": f"s{i}", "dice": d, "assd_mm": a, "empty_prediction": e}
            for i, (d, a, e) in enumerate([(0.5, 2.0, False), (0.7, 4.0, False), (0.0, 99.0, True)])]
    table = markdown_table(rows)
    assert "| m | 50.0 [25.0 - 60.0] | 4.0 [3.0 - 51.5] (1/3 empty) |" in table


# ---------------------------------------------------------------------------------------------------- training


def toy_volumes(count=3, shape=(32, 32, 6), seed=0) -> list[LabelledVolume]:
    """Speckle with a brighter disc (the 'tumour') at a random place."""
    rng = np.random.default_rng(seed)
    volumes = []
    for i in range(count):
        x, y = np.indices(shape[:2])
        cx, cy = rng.integers(10, 22, 2)
        tumour = np.repeat((((x - cx) ** 2 + (y - cy) ** 2) < 25)[..., None], shape[2], axis=2)
        image = np.clip(0.3 * rng.rayleigh(0.5, shape) + 0.4 * tumour, 0, 1).astype(np.float32)
        volumes.append(LabelledVolume(f"toy{i}", image, tumour, np.ones(shape, bool), (1.5, 1.5, 1.5)))
    return volumes


def fixed_batch_loss(network, data: SliceSet) -> float:
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    with torch.no_grad():
        return float(loss(network(torch.from_numpy(data.images[:, None])),
                          torch.from_numpy(data.labels[:, None].astype(np.int64))))


def test_training_reduces_the_loss_on_a_toy_set():
    volumes = toy_volumes()
    config = SegmenterConfig((1.5, 1.5), channels=(8, 16, 32), strides=(2, 2))
    data = training_slices(volumes, config.multiple)
    assert data.images.shape == (18, 32, 32) and data.labels.any()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)  # the initialisation train_network(seed=3) starts from
        before = fixed_batch_loss(build_unet(config).eval(), data)
    network, losses = train_network(data, config, steps=40, seed=3, batch_size=8, learning_rate=3e-3)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert fixed_batch_loss(network, data) < 0.8 * before
    again, _ = train_network(data, config, steps=2, seed=3, batch_size=8)
    other, _ = train_network(data, config, steps=2, seed=3, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), other.state_dict().values()))


def test_folds_hold_out_every_subject_once_and_refuse_too_few_subjects():
    folds = subject_folds(["a", "b", "c", "d", "e"], 2, seed=1)
    assert sorted(sum(folds, [])) == ["a", "b", "c", "d", "e"] and len(folds) == 2
    assert subject_folds(["a"], 1) == [[]]
    with pytest.raises(InputError, match="3 folds need at least 3"):
        subject_folds(["a", "b"], 3)


def test_network_file_round_trip_and_single_volume_segmentation(tmp_path):
    volumes = toy_volumes(count=2)
    segmenter, log = train_segmenter(volumes, steps=2, seed=0, folds=2, batch_size=4)
    assert len(segmenter.networks) == 2 and [r["fold"] for r in log] == [0, 0, 1, 1]
    path = save_segmenter(tmp_path / "net.pt", segmenter)
    assert torch.load(path, weights_only=True)["format"] == FORMAT
    loaded = load_segmenter(path)
    assert loaded.config == segmenter.config and loaded.meta["folds"] == 2
    image, fov = volumes[0].image, volumes[0].fov
    assert np.array_equal(segment_volume(loaded, image, fov), segment_volume(segmenter, image, fov))

    us = nib.Nifti1Image(np.where(fov, image + 0.1, 0).astype(np.float32)[:30, :27], np.diag([1.5, 1.5, 1.5, 1]))
    nib.save(us, tmp_path / "us.nii.gz")
    written = segment_ultrasound(path, tmp_path / "us.nii.gz", tmp_path / "mask.nii.gz")
    mask = nib.load(written)
    assert mask.shape == (30, 27, 6) and mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    with pytest.raises(InputError, match="already exists"):
        segment_ultrasound(path, tmp_path / "us.nii.gz", tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(us.get_fdata().astype(np.float32), np.diag([3.0, 3.0, 3.0, 1])), tmp_path / "us3.nii.gz")
    with pytest.raises(InputError, match="voxel size"):
        segment_ultrasound(path, tmp_path / "us3.nii.gz", tmp_path / "mask3.nii.gz")


def test_bad_network_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_segmenter(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a loadable"):
        load_segmenter(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not an mmhvae segmentation"):
        load_segmenter(DEMO_MODEL)
    segmenter, _ = train_segmenter(toy_volumes(count=1), steps=1, batch_size=2)
    payload = torch.load(save_segmenter(tmp_path / "net.pt", segmenter), weights_only=True)
    next(iter(payload["state_dicts"][0].values())).add_(1.0)
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(InputError, match="checksum"):
        load_segmenter(tmp_path / "edited.pt")


# ---------------------------------------------------------------------------------------------------- experiment


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segmentation")
    simulate_cohort(root / "mr", subjects=2, first_index=0, **TINY)  # sub-000 low grade: left out
    simulate_cohort(root / "test", subjects=1, first_index=3, **TINY)
    simulate_cohort(root / "alt", subjects=1, first_index=4, us_probe="alt", **TINY)
    simulate_cohort(root / "supervised", subjects=1, first_index=2, **TINY)
    return {name: root / name for name in ("mr", "test", "alt", "supervised")}


def run_experiment(cohorts, out: Path, **overrides):
    arguments = {"models": [DEMO_MODEL], "mr_cohort": cohorts["mr"], "supervised_cohort": cohorts["supervised"],
                 "test_cohorts": {"default probe": cohorts["test"], "alt probe": cohorts["alt"]}, "out": out,
                 "steps": 3, "seed": 0} | overrides
    return segmentation_experiment(**arguments)


def test_experiment_end_to_end_on_tiny_cohorts(cohorts, tmp_path):
    rows = run_experiment(cohorts, tmp_path / "out")
    assert [(r["method"], r["test_set"]) for r in rows] == [
        ("mmhvae", "default probe"), ("mmhvae", "alt probe"),
        ("fully supervised", "default probe"), ("fully supervised", "alt probe")]
    assert all(0.0 <= r["dice"] <= 1.0 and np.isfinite(r["assd_mm"]) and r["reference_voxels"] > 0 for r in rows)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "nan" not in table.lower() and "| mmhvae |" in table and "| fully supervised |" in table
    assert "left out without tumour core: sub-000" in table
    with open(tmp_path / "out" / "segmentation.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 4 and all(np.isfinite(float(r["dice"])) for r in written)
    with open(tmp_path / "out" / "training-loss.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 3
    network = load_segmenter(tmp_path / "out" / "networks" / "mmhvae.pt")
    assert network.meta["training_subjects"] == ["sub-001"]
    assert network.meta["training_slices"] == 7 * 12  # 7 MR subsets x 12 slices of the one high-grade subject
    with pytest.raises(InputError, match="already has results"):
        run_experiment(cohorts, tmp_path / "out")


def test_single_networks_train_from_acquired_or_synthetic_ultrasound(cohorts, tmp_path):
    supervised = train_segmentation_network(cohorts["supervised"], tmp_path / "supervised.pt", steps=2)
    assert "acquired ultrasound" in load_segmenter(supervised).config.trained_on
    synthetic = train_segmentation_network(cohorts["mr"], tmp_path / "synthetic.pt", steps=2, model=DEMO_MODEL)
    segmenter = load_segmenter(synthetic)
    assert "synthesised by mmhvae" in segmenter.config.trained_on and segmenter.meta["training_slices"] == 7 * 12
    with pytest.raises(InputError, match="already exists"):
        train_segmentation_network(cohorts["supervised"], supervised, steps=2)


def test_experiment_refuses_bad_input_before_training(cohorts, tmp_path):
    with pytest.raises(InputError, match="no ultrasound image"):  # an MR-only folder as a test set
        run_experiment(cohorts, tmp_path / "a", test_cohorts={"mr": cohorts["mr"] / "sub-001" / "targets"})
    with pytest.raises(InputError, match="no subject with a tumour core"):
        run_experiment(cohorts, tmp_path / "b", test_cohorts={"low grade": cohorts["mr"] / "sub-000"})
    with pytest.raises(InputError, match="model file"):
        run_experiment(cohorts, tmp_path / "c", models=[cohorts["mr"] / "cohort.json"])
    with pytest.raises(InputError, match="at least 1"):
        run_experiment(cohorts, tmp_path / "d", steps=0)
    with pytest.raises(InputError, match="at least one test cohort"):
        run_experiment(cohorts, tmp_path / "e", test_cohorts={})
    assert not any((tmp_path / name).exists() for name in "abcde")
