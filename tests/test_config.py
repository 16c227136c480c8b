"""Run configuration: presets, overrides, strict validation, round trip."""

from __future__ import annotations

import pytest

from mmhvae.cli.main import main
from mmhvae.config import load_config, save_config
from mmhvae.errors import InputError


def test_presets_follow_the_paper_and_the_cpu_setting():
    paper = load_config("paper")
    assert paper.model.image_size == 192 and paper.model.num_pool == 6
    assert paper.model.latent_channels == (8, 16, 32, 64, 64, 64) and paper.model.global_latent == 256
    assert paper.model.decoder_blocks == 5 and paper.model.fusion == "poe" and paper.model.topdown == "full"
    assert (paper.train.batch_size, paper.train.passes, paper.train.kl_weight, paper.train.gan_weight) == \
        (16, 3, 1e-3, 0.025)
    assert paper.train.gan_start == 0.8 and paper.train.mixture == "paper" and paper.train.image_loss == "l2"
    tiny = load_config("tiny")
    assert tiny.model.image_size == 64 and tiny.data.image_size == 64


@pytest.mark.parametrize(("name", "precision"), [("paper-cpu", "bf16-mixed"), ("paper-cpu-fp32", "auto")])
def test_the_lean_cpu_paper_configs_change_only_speed_settings(name: str, precision: str) -> None:
    lean = load_config(name)
    paper = load_config("paper")
    assert (lean.train.precision, lean.train.activation_checkpointing) == (precision, 6)
    assert lean.model == paper.model and lean.data == paper.data
    lean.train.precision, lean.train.activation_checkpointing = paper.train.precision, 0
    assert lean.train == paper.train


def test_yaml_overrides_a_base_and_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: paper\nmodel:\n  topdown: markov\n  heads: shared\ntrain:\n  image_loss: l1\n")
    config = load_config(path)
    assert config.model.topdown == "markov" and config.model.heads == "shared" and config.model.image_size == 192
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-2 as a string; a float field takes it as the number it spells.
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1e-2\n  lr_final: 5E-5\n")
    config = load_config(path)
    assert config.train.lr == 0.01 and config.train.lr_final == 5e-5
    path.write_text("train:\n  max_minutes: 1e2\n")
    assert load_config(path).train.max_minutes == 100.0
    for word in ("fast", "nan"):
        path.write_text(f"train:\n  lr: {word}\n")
        with pytest.raises(InputError, match="field 'train.lr' has the wrong type"):
            load_config(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("train:\n  batch_sise: 4\n", "unknown field 'train.batch_sise'"),
        ("train:\n  batch_size: four\n", "field 'train.batch_size' has the wrong type"),
        ("model:\n  fusion: sum\n", "fusion must be one of"),
        ("trian:\n  batch_size: 4\n", "unknown section"),
        ("train: [1, 2]\n", "must be a mapping"),
        ("model: {image_size: 100}\n", "image_size 100 must be divisible"),
        ("- just\n- a list\n", "must be a mapping"),
        ("train:\n  lr: [\n", "not valid YAML"),
        ("train:\n  kl_normalisation: per_voxel\n", "kl_normalisation must be one of image_pixels, modality_pixels"),
        ("train:\n  subset_sampling: uniform\n", "subset_sampling must be one of mixture, own"),
        ("train:\n  early_stopping_patience: -1\n", "early_stopping_patience must be >= 0"),
        ("train:\n  early_stopping_min_delta: 1.5\n", "early_stopping_min_delta is a fraction"),
        ("train:\n  early_stopping_tail: 1.0\n", "early_stopping_tail is a fraction"),
    ],
)
def test_bad_config_files_are_input_errors(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=problem.replace("[", r"\[")) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)


def test_unknown_preset():
    with pytest.raises(InputError, match="config file does not exist"):
        load_config("huge")


def test_info_reports_the_paper_parameter_count(capsys):
    assert main(["info", "--config", "paper"]) == 0
    out = capsys.readouterr().out
    count = int(next(line for line in out.splitlines() if "parameters" in line).split()[-1].replace(",", ""))
    assert 13_000_000 <= count <= 15_000_000
    assert "MACs per slice" in out


def test_new_training_fields_default_to_eq19_the_shared_mixture_and_no_early_stopping():
    train = load_config("tiny").train
    assert (train.kl_normalisation, train.subset_sampling) == ("image_pixels", "mixture")
    assert (train.early_stopping_patience, train.early_stopping_min_delta, train.complete_subjects_only) == \
        (0, 0.01, False)
    assert train.early_stopping_tail == 0.0  # the patience rule when early stopping is on


@pytest.mark.parametrize("method", ["mmgan", "m2dn"])
def test_a_learning_rate_a_file_sets_wins_over_the_method_s_recipe(tmp_path, method):
    """A study sweeping train.lr: the file's value holds for any method, by --method or in the file."""
    from mmhvae.config import with_method

    recipe_lr = with_method(load_config("tiny"), method).train.lr  # the method's own, replacing the preset's
    assert recipe_lr != load_config("tiny").train.lr
    sweep = tmp_path / "lr.yaml"
    sweep.write_text("base: tiny\ntrain:\n  lr: 3.0e-5\n")
    switched = with_method(load_config(sweep), method)  # as `train --config lr.yaml --method M`
    assert switched.train.method == method and switched.train.lr == 3.0e-5
    assert switched.train.image_loss == "l1"  # the rest of the recipe still applies
    named = tmp_path / "named.yaml"
    named.write_text(f"base: tiny\ntrain:\n  method: {method}\n  lr: 3.0e-5\n")
    assert load_config(named).train.lr == 3.0e-5 and with_method(load_config(named), method).train.lr == 3.0e-5


def test_mhvae_is_mmhvae_on_us_and_t2_trained_on_complete_pairs(tmp_path):
    from mmhvae.config import with_method

    run = with_method(load_config("tiny"), "mhvae")
    assert run.model.modalities == ("us", "t2") and run.data.modalities == ("us", "t2")
    assert run.train.method == "mhvae" and run.train.complete_subjects_only
    assert run.model.num_latent_levels == load_config("tiny").model.num_latent_levels  # the same hierarchy
    assert run.train.gan_weight == load_config("tiny").train.gan_weight > 0  # with its adversarial term
    save_config(run, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == run
    brats = tmp_path / "brats.yaml"
    brats.write_text("base: tiny\nmodel:\n  modalities: [t1, t1c, t2, flair]\n")
    with pytest.raises(InputError, match="--method mhvae: .*handles us, t2.* lack us"):
        with_method(load_config(brats), "mhvae")
