"""Training: a short CPU run, the mixture sampler in use, exact resume, skipping non-finite updates."""

from __future__ import annotations

import csv
import logging
import math

import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.model_file import load_model_file
from mmhvae.training.module import MMHVAEModule
from mmhvae.training.objective import gan_weight, kl_weight
from mmhvae.training.trainer import train

from conftest import SMALL_CONFIG, small_cohort, vit_checkpoint


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return small_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_CONFIG)
    return path


def read_log(run):
    """Rows of every session's log of a run folder, in session order."""
    rows = []
    for path in sorted((run / "logs").glob("session-*/metrics.csv")):
        with open(path) as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_a_short_cpu_run_writes_config_logs_checkpoints_and_a_model(cohort, config_file, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        model_path = train(cohort, run, config_file, max_steps=4, progress=False)
    lightning_says = caplog.text
    assert "GPU available" in lightning_says and "💡" not in lightning_says  # its information, not its adverts
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    loaded = load_model_file(model_path)
    assert loaded.meta["steps"] == 4 and loaded.modalities == ("us", "t2", "t1c", "flair")
    assert loaded.meta["stop_reason"] == "max_steps"  # no early stopping without train.early_stopping_patience
    rows = [r for r in read_log(run) if r.get("loss")]
    assert rows and all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, logged
    assert any(r.get("val_psnr_all") for r in read_log(run))  # validated on the held-out subjects
    assert all(float(r["val_loss"]) > 0 for r in read_log(run) if r.get("val_psnr_all"))  # beside the PSNRs
    assert any(r.get("critic") for r in read_log(run))  # GAN phase reached (gan_start 0.5)
    with pytest.raises(InputError, match="already holds a run"):
        train(cohort, run, config_file, max_steps=4, progress=False)



def test_validation_is_off_without_held_out_subjects(cohort, config_file, tmp_path, recwarn, caplog):
    none = tmp_path / "none"
    model = train(cohort, none, config_file, max_steps=2, progress=False,
                  overrides={"val_fraction": 0.0, "early_stopping_patience": 1})
    assert read_log(none) and not any(r.get("val_psnr_all") for r in read_log(none))
    assert not [w for w in recwarn if "across ranks is zero" in str(w.message)]  # Lightning's empty-loader notice
    assert "no subject is held out for validation: training runs to train.max_steps" in caplog.text
    assert load_model_file(model).meta["stop_reason"] == "max_steps"


def test_bf16_mixed_precision_trains_with_the_gan_phase(cohort, tmp_path):
    """The GPU default (bf16 autocast), run on the CPU: every loss finite, critics included."""
    config = tmp_path / "bf16.yaml"
    config.write_text(SMALL_CONFIG + "  precision: bf16-mixed\n")
    run = tmp_path / "run"
    model_path = train(cohort, run, config, max_steps=4, progress=False)
    rows = read_log(run)
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    critics = [float(r["critic"]) for r in rows if r.get("critic")]
    assert losses and critics and all(map(math.isfinite, losses + critics))
    assert load_model_file(model_path).meta["steps"] == 4


def test_schedules():
    class T:
        kl_weight, kl_warmup, gan_weight, gan_start, max_steps = 1e-3, 0.1, 0.025, 0.8, 100

    assert kl_weight(0, T) == pytest.approx(1e-4) and kl_weight(50, T) == pytest.approx(1e-3)
    assert gan_weight(79, T) == 0 and gan_weight(80, T) == 0.025


def test_the_mixture_sampler_varies_the_encoded_subsets(cohort, config_file):
    from mmhvae.config import load_config

    module = MMHVAEModule(load_config(config_file).to_dict())
    present = torch.tensor([[True, True, True, False]] * 4)
    drawn = {tuple(map(tuple, module.draw_subsets(present).tolist())) for _ in range(30)}
    subsets = {s for draw in drawn for s in draw}
    assert len(subsets) >= 4  # full, us alone, and several MR subsets
    for subset in subsets:
        assert any(subset) and all(not s or p for s, p in zip(subset, present[0].tolist()))


def test_image_loss_weights_scale_each_modality_s_term(config_file):
    """The image loss is linear in a modality's weight, and a weight reaches the synthesis terms too."""
    from mmhvae.config import from_mapping, load_config

    base = load_config(config_file)
    torch.manual_seed(0)
    batch = {"inputs": torch.randn(2, 4, 32, 32), "present": torch.ones(2, 4, dtype=torch.bool)}
    batch["targets"] = batch["inputs"]
    subsets = torch.tensor([[True, True, False, False]])  # FLAIR observed in r, synthesised from r'

    def image_loss(flair_weight):
        run = base.to_dict()
        if flair_weight is not None:
            run["train"]["image_loss_weights"] = {"flair": flair_weight}
        torch.manual_seed(1)  # the same initial weights for every module
        module = MMHVAEModule(from_mapping(run, "<test>", base).to_dict())
        return module.generator_losses(batch, subsets)["image"].item()

    default, without_flair, triple_flair = image_loss(None), image_loss(0.0), image_loss(3.0)
    assert default > without_flair
    assert triple_flair - default == pytest.approx(2 * (default - without_flair), rel=1e-4)


def test_image_loss_weights_with_an_unknown_modality_are_refused(tmp_path):
    from mmhvae.config import load_config

    path = tmp_path / "weights.yaml"
    path.write_text("base: tiny\ntrain:\n  image_loss_weights: {t1: 2.0}\n")
    with pytest.raises(InputError, match="weights.yaml.*'t1', which is not in the modality set"):
        load_config(path)
    path.write_text("base: tiny\ntrain:\n  image_loss_weights: {T2F: 2}\n")
    assert load_config(path).train.image_loss_weights == {"flair": 2.0}  # saved under the canonical key
    path.write_text("base: tiny\ntrain:\n  image_loss_weights: {flair: -1}\n")
    with pytest.raises(InputError, match="must be >= 0"):
        load_config(path)


def test_non_finite_losses_are_skipped_counted_and_abort(cohort, config_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MMHVAEModule.generator_losses

    def poisoned(self, batch, subsets):
        losses = original(self, batch, subsets)
        calls["n"] += 1
        if calls["n"] == 2:  # one injected NaN: skipped and counted, training goes on
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(MMHVAEModule, "generator_losses", poisoned)
    model_path = train(cohort, tmp_path / "run", config_file, max_steps=3, progress=False)
    assert load_model_file(model_path).meta["skipped_updates"] == 1

    def always_nan(self, batch, subsets):
        losses = original(self, batch, subsets)
        losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(MMHVAEModule, "generator_losses", always_nan)
    from mmhvae.training.module import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(cohort, tmp_path / "run2", config_file, max_steps=50, progress=False,
              overrides={"max_nonfinite_in_a_row": 5})


def test_resume_continues_at_the_same_step_with_the_same_losses(cohort, config_file, tmp_path):
    straight = tmp_path / "straight"
    train(cohort, straight, config_file, max_steps=6, progress=False)
    run = tmp_path / "interrupted"
    train(cohort, run, config_file, max_steps=6, progress=False, stop_at_step=4)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    first_session = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["mmhvae"]["wall_minutes"]
    train(cohort, run, resume=True, progress=False)
    meta = load_model_file(run / "model.pt").meta
    assert meta["steps"] == 6
    assert meta["train_minutes"] > first_session > 0  # the model file counts every session of the run

    def losses(folder):
        return {int(float(r["train_step"])): float(r["loss"]) for r in read_log(folder) if r.get("loss")}

    reference, continued = losses(straight), losses(run)
    assert set(reference) == set(continued) == set(range(6))
    for step in range(6):
        assert continued[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), step
    torch.testing.assert_close(fixed_input_outputs(run / "model.pt"), fixed_input_outputs(straight / "model.pt"),
                               rtol=1e-4, atol=1e-5)


def fixed_input_outputs(model_file):
    """Posterior-mean images of a model from every single input and from all inputs, on a fixed random batch.

    Compared instead of the weights: a conv bias right before an instance norm has no effect and an analytic
    gradient of zero, and Adamax turns that gradient's rounding noise into steps of +-lr, so such biases differ
    between two runs that compute the same function."""
    model = load_model_file(model_file).model.eval()
    m, size = model.num_modalities, model.config.image_size
    images = torch.rand(m + 1, m, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    present = torch.ones(m + 1, m, dtype=torch.bool)
    subsets = torch.cat([torch.eye(m, dtype=torch.bool), torch.ones(1, m, dtype=torch.bool)])
    with torch.no_grad():
        return model.decode(model.encode(images, present), subsets, temperature=0.0).images


def cli_train(*args, env=None):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "mmhvae.cli", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def losses_by_step(run):
    """Loss of each step; a step logged by two sessions (redone after a kill) keeps the last session's."""
    return {int(float(r["train_step"])): float(r["loss"]) for r in read_log(run) if r.get("loss")}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(cohort, config_file, tmp_path):
    """Five SIGKILLs of one run at random moments (mid-step, mid-checkpoint, before the first checkpoint),
    each followed by --resume: the run ends at the same losses as an uninterrupted one."""
    import random
    import signal
    import time

    steps = 12
    straight = tmp_path / "straight"
    train(cohort, straight, config_file, max_steps=steps, progress=False)
    reference = losses_by_step(straight)
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    chance = random.Random(7)
    kills = []
    for attempt in range(5):
        # Wait for a random amount of progress past the last checkpoint (0: kill while starting up),
        # then a random fraction of a second more, so kills land anywhere in a step or a save.
        saved_before = torch.load(last, weights_only=False)["global_step"] if last.is_file() else 0
        wait_for = saved_before + chance.choice([0, 2, 2, 4]) if attempt else 0
        args = ("--resume",) if attempt else ("--config", config_file, "--max-steps", steps)
        process = cli_train("--data", cohort, "--out", run, *args)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if wait_for == 0 and (run / "config.yaml").is_file():
                break
            if last.is_file() and torch.load(last, weights_only=False)["global_step"] >= wait_for > 0:
                break
            time.sleep(0.02)
        time.sleep(chance.uniform(0.0, 0.4))
        if process.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(torch.load(last, weights_only=False)["global_step"] if last.is_file() else None)
    assert len(kills) >= 4, kills
    resumed = cli_train("--data", cohort, "--out", run, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert load_model_file(run / "model.pt").meta["steps"] == steps
    assert not list((run / "checkpoints").glob(".*.tmp*")), "stale temporary checkpoint left behind"
    continued = losses_by_step(run)
    assert set(continued) == set(reference), kills
    for step in reference:
        assert continued[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), (kills, step)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(cohort, config_file, tmp_path, monkeypatch):
    import errno

    real_save = torch.save
    checkpoint_saves = []

    def save_on_a_disk_that_fills_up(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "global_step" in obj:
            checkpoint_saves.append(obj["global_step"])
            if obj["global_step"] > 2:  # the step-2 checkpoint fits; the next one fills the disk half-way
                with open(f, "wb") as handle:
                    handle.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_on_a_disk_that_fills_up)
    with pytest.raises(InputError, match="No space left on device.*previous checkpoint is intact"):
        train(cohort, run, config_file, max_steps=6, progress=False)
    monkeypatch.undo()
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert not list((run / "checkpoints").glob(".*")), "temporary file left behind"
    assert not (run / "model.pt").exists()
    train(cohort, run, resume=True, progress=False)  # once there is space again, the run continues
    assert load_model_file(run / "model.pt").meta["steps"] == 6


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_again(cohort, config_file, tmp_path):
    run = tmp_path / "run"
    train(cohort, run, config_file, max_steps=4, progress=False, stop_at_step=1)
    (run / "checkpoints" / "last.ckpt").unlink()  # as if killed before the first save
    for stale in (run / "checkpoints").glob("*.ckpt"):
        stale.unlink()
    with pytest.warns(UserWarning, match="before its first checkpoint"):
        train(cohort, run, resume=True, progress=False)
    assert load_model_file(run / "model.pt").meta["steps"] == 4


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_replicas_in_sync(cohort, config_file, tmp_path):
    run = tmp_path / "ddp"
    process = cli_train("--data", cohort, "--out", run, "--config", config_file, "--max-steps", 3,
                        "--devices", 2, "--accelerator", "cpu")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    meta = load_model_file(run / "model.pt").meta
    assert meta["world_size"] == 2 and meta["replicas_in_sync"] is True and meta["steps"] == 3


def test_init_from_copies_a_model_files_weights_and_refuses_another_architecture(cohort, config_file, tmp_path):
    from mmhvae.config import load_config
    from mmhvae.model_file import weights_checksum
    from mmhvae.training.initialisation import initialise_from

    first = train(cohort, tmp_path / "first", config_file, max_steps=2, progress=False)
    run = load_config(config_file)
    module = MMHVAEModule(run.to_dict())
    provenance = initialise_from(module, first, run)
    expected = load_model_file(first).model.state_dict()
    for network in (module.model, module.ema):
        for name, tensor in network.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    assert provenance["checksum"] == weights_checksum(expected) and provenance["steps"] == 2
    second = train(cohort, tmp_path / "second", config_file, max_steps=2, progress=False, init_from=first)
    assert load_model_file(second).meta["init_from"]["checksum"] == provenance["checksum"]
    from mmhvae.performance.info import describe

    assert f"started from      the weights in {first} (checksum {provenance['checksum'][:12]}, itself trained 2 " \
        "steps)" in describe(model=second)
    assert "started from" not in describe(model=first)
    interrupted = tmp_path / "interrupted"  # a resumed run still says where it started
    train(cohort, interrupted, config_file, max_steps=3, progress=False, init_from=first, stop_at_step=2)
    resumed = train(cohort, interrupted, resume=True, progress=False)
    assert load_model_file(resumed).meta["init_from"] == provenance
    wider = tmp_path / "wider.yaml"
    wider.write_text(config_file.read_text().replace("base_features: 4", "base_features: 6"))
    with pytest.raises(InputError, match="architecture differs"):
        train(cohort, tmp_path / "third", wider, max_steps=2, progress=False, init_from=first)


RESVIT_YAML = """
base: tiny
model:
  variant: resvit
  image_size: 32
  base_features: 4
  hidden_size: 64
  heads: 1
  mlp_size: 256
  transformer_layers: 2
train:
  method: resvit
  batch_size: 4
  checkpoint_every: 2
  log_every: 1
  validate_every: 2
"""


def small_vit_checkpoint(path, layers=2, hidden=64, heads=1, mlp=256):
    import numpy as np

    arrays = vit_checkpoint(layers, hidden, heads, mlp, grid=14)
    np.savez(path, **arrays)
    return arrays


def test_vit_weights_start_resvits_transformer_from_an_imagenet_checkpoint(cohort, config_file, tmp_path):
    import numpy as np

    from mmhvae.performance.info import describe

    config = tmp_path / "resvit.yaml"
    config.write_text(RESVIT_YAML)
    checkpoint = tmp_path / "R50+ViT-B_16.npz"
    arrays = small_vit_checkpoint(checkpoint)
    model_path = train(cohort, tmp_path / "resvit", config, max_steps=1, progress=False, vit_weights=checkpoint)
    loaded = load_model_file(model_path)
    assert loaded.meta["vit_weights"]["path"] == str(checkpoint) and loaded.meta["init_from"] is None
    assert f"transformer from  the ViT checkpoint {checkpoint}" in describe(model=model_path)
    # The model file's (EMA) encoder is the checkpoint's after one small step (Adam 2e-4); a fresh one is far.
    scale = torch.from_numpy(arrays["Transformer/encoder_norm/scale"])
    assert (scale - 1).abs().max() > 0.05
    torch.testing.assert_close(loaded.model.shared_encoder.norm.weight, scale, atol=2e-3, rtol=0)
    interrupted = tmp_path / "interrupted"  # a resumed run still says where its transformer started
    train(cohort, interrupted, config, max_steps=3, progress=False, vit_weights=checkpoint, stop_at_step=2)
    resumed = train(cohort, interrupted, resume=True, progress=False)
    assert load_model_file(resumed).meta["vit_weights"] == loaded.meta["vit_weights"]
    # Refused, naming the file: another method, a checkpoint of another size, a file that is no checkpoint,
    # a checkpoint given as a model file.
    with pytest.raises(InputError, match=r"R50\+ViT-B_16.npz: --vit-weights: .* \(--method resvit\)"):
        train(cohort, tmp_path / "mmhvae", config_file, max_steps=1, progress=False, vit_weights=checkpoint)
    assert not (tmp_path / "mmhvae" / "config.yaml").exists()  # a refused run leaves the folder free for the next
    small_vit_checkpoint(tmp_path / "big.npz", hidden=128)
    with pytest.raises(InputError, match=r"big.npz: --vit-weights: the checkpoint's ViT has 2 layers of width 128"):
        train(cohort, tmp_path / "big", config, max_steps=1, progress=False, vit_weights=tmp_path / "big.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(InputError, match="text.npz: --vit-weights: not an .npz archive"):
        train(cohort, tmp_path / "text", config, max_steps=1, progress=False, vit_weights=tmp_path / "text.npz")
    with pytest.raises(InputError, match="--init-from takes a model file; .* --vit-weights"):
        train(cohort, tmp_path / "npz", config, max_steps=1, progress=False, init_from=checkpoint)
    corrupt = tmp_path / "corrupt.npz"  # a zip archive whose compressed data is damaged
    np.savez_compressed(corrupt, **arrays)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt.npz: --vit-weights: cannot read the ViT checkpoint"):
        train(cohort, tmp_path / "corrupt", config, max_steps=1, progress=False, vit_weights=corrupt)
    with pytest.raises(InputError, match="--resume continues from the run's checkpoint"):
        train(cohort, interrupted, resume=True, progress=False, vit_weights=checkpoint)


def test_resvits_two_stages_res_cnn_then_resvit_keep_the_res_cnns_weights(cohort, tmp_path):
    """ResViT's authors train a Res-CNN (no transformer branches) first, then ResViT from its weights and
    ImageNet's ViT: --init-from fills every tensor the Res-CNN had, the branches start fresh or from the ViT."""
    from mmhvae.config import load_config
    from mmhvae.performance.info import describe
    from mmhvae.training.initialisation import initialise_from
    from mmhvae.training.trainer import module_for

    res_cnn_yaml, resvit_yaml = tmp_path / "res-cnn.yaml", tmp_path / "resvit.yaml"
    res_cnn_yaml.write_text(RESVIT_YAML.replace("  transformer_layers: 2\n", "  transformer_layers: 2\n"
                                                "  transformer_blocks: []\n"))
    resvit_yaml.write_text(RESVIT_YAML.replace("  method: resvit\n", "  method: resvit\n"
                                               "  trainable: [encoder, blocks, decoder]\n  lr: 1.0e-3\n"))
    res_cnn = train(cohort, tmp_path / "res-cnn", res_cnn_yaml, max_steps=1, progress=False)
    source = load_model_file(res_cnn).model.state_dict()
    assert not any(".branch." in name for name in source)
    run = load_config(resvit_yaml)
    torch.manual_seed(0)
    module = module_for(run)
    fresh_branch = {name: t.clone() for name, t in module.model.state_dict().items() if ".branch." in name}
    provenance = initialise_from(module, res_cnn, run)
    assert provenance["grown"] == {"blocks": len(fresh_branch)} and "fresh" not in provenance
    for network in (module.model, module.ema):
        state = network.state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in source.items())
        assert all(torch.equal(state[name], tensor) for name, tensor in fresh_branch.items())
    # Without the parts it changes listed as trained, a Res-CNN is refused like any other architecture change.
    refused = tmp_path / "untrainable.yaml"
    refused.write_text(resvit_yaml.read_text().replace("  trainable: [encoder, blocks, decoder]\n", ""))
    with pytest.raises(InputError, match="differs from the run's config in blocks"):
        train(cohort, tmp_path / "refused", refused, max_steps=1, progress=False, init_from=res_cnn)
    # The second stage end to end: both starts recorded, and said by info.
    checkpoint = tmp_path / "R50+ViT-B_16.npz"
    small_vit_checkpoint(checkpoint)
    resvit = train(cohort, tmp_path / "resvit", resvit_yaml, max_steps=1, progress=False, init_from=res_cnn,
                   vit_weights=checkpoint)
    meta = load_model_file(resvit).meta
    assert meta["init_from"]["grown"] == provenance["grown"] and meta["vit_weights"]["path"] == str(checkpoint)
    text = describe(model=resvit)
    assert f"started from      the weights in {res_cnn}" in text and "transformer from  the ViT checkpoint" in text
    assert f"not from it       blocks ({len(fresh_branch)} new tensors)" in text


def test_trainable_parts_fit_fresh_decoders_onto_a_frozen_model(cohort, config_file, tmp_path):
    first = train(cohort, tmp_path / "first", config_file, max_steps=2, progress=False)
    wider_decoders = tmp_path / "wider-decoders.yaml"
    text = config_file.read_text()
    wider_decoders.write_text(text.replace("train:\n", "train:\n  trainable: [decoders]\n").replace(
        "model:\n", "model:\n  decoder_features: 12\n"))
    everything_trained = tmp_path / "everything-trained.yaml"
    everything_trained.write_text(wider_decoders.read_text().replace("  trainable: [decoders]\n", ""))
    with pytest.raises(InputError, match="differs from the run's config in decoders"):
        train(cohort, tmp_path / "all", everything_trained, max_steps=2, progress=False, init_from=first)
    second = train(cohort, tmp_path / "second", wider_decoders, max_steps=2, progress=False, init_from=first)
    before, after = load_model_file(first).model.state_dict(), load_model_file(second).model.state_dict()
    provenance = load_model_file(second).meta["init_from"]
    assert provenance["fresh"] == ["decoders"] and list(provenance["settings"]) == ["decoder_features"]
    assert provenance["settings"]["decoder_features"][1] == 12
    from mmhvae.performance.info import describe

    assert "not from it       decoders (fresh)" in describe(model=second)
    frozen = [name for name in before if not name.startswith("decoders.")]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    decoders = [name for name in after if name.startswith("decoders.") and name.endswith("weight")]
    assert after[decoders[0]].shape[0] == 12  # the run's own wider decoders, not the model file's
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(text.replace("train:\n", "train:\n  trainable: [decoder]\n"))
    with pytest.raises(InputError, match="no part named decoder"):
        train(cohort, tmp_path / "third", unknown, max_steps=2, progress=False)


# ----- baselines: `train(..., method=...)` (model/registry.py) ------------------------------------------------


def model_file_payload(path):
    """A model file read as plain data and its network rebuilt through the registry (any variant)."""
    from mmhvae.model.registry import build_network

    payload = torch.load(path, weights_only=True)
    network = build_network(payload["model_config"])
    network.load_state_dict(payload["state_dict"])
    return payload, network


@pytest.mark.parametrize("method", ["mopoe", "average", "concat-zeros", "mmgan", "resvit", "m2dn"])
def test_each_baseline_trains_and_records_its_method(cohort, config_file, tmp_path, method):
    from mmhvae.config import load_config
    from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
    from mmhvae.model.mmhvae import MMHVAE

    run = tmp_path / method
    # The GAN's start left to the method (a value the file sets itself would win over the method's recipe).
    config_file.write_text(SMALL_CONFIG.replace("  gan_start: 0.5\n", ""))
    model_path = train(cohort, run, config_file, max_steps=2, progress=False, method=method)
    payload, network = model_file_payload(model_path)
    assert payload["meta"]["method"] == method and payload["meta"]["steps"] == 2
    saved = load_config(run / "config.yaml")
    assert saved.train.method == method and saved.model.to_dict() == payload["model_config"]
    expected = {"mopoe": ("num_latent_levels", 1), "average": ("fusion", "average"),
                "concat-zeros": ("encoder", "joint"), "mmgan": ("variant", "mmgan"),
                "resvit": ("variant", "resvit"), "m2dn": ("variant", "m2dn")}[method]
    assert payload["model_config"][expected[0]] == expected[1]
    zero_imputation = method in ("mmgan", "resvit", "m2dn")
    assert isinstance(network, ZeroImputationGenerator if zero_imputation else MMHVAE)
    assert type(network).__name__.lower() == (method if zero_imputation else "mmhvae")
    rows = [r for r in read_log(run) if r.get("loss")]
    assert len(rows) == 2 and all(float(r["loss"]) == float(r["loss"]) for r in rows)
    if method in ("mmgan", "resvit"):  # MM-GAN's and ResViT's adversarial term is on from the first step
        assert all(r.get("gan") and r.get("critic") for r in rows)
    images = torch.rand(2, 4, 32, 32) * 2 - 1
    present = torch.tensor([[True, True, False, False]] * 2)
    out = network.eval()(images, present, present, temperature=0.0).images
    assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()


def test_mmgan_resume_continues_at_the_same_step_with_the_same_losses(cohort, config_file, tmp_path):
    straight = tmp_path / "straight"
    train(cohort, straight, config_file, max_steps=4, progress=False, method="mmgan")
    run = tmp_path / "interrupted"
    train(cohort, run, config_file, max_steps=4, progress=False, stop_at_step=2, method="mmgan")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    with pytest.raises(InputError, match="this run trains 'mmgan'"):
        train(cohort, run, resume=True, progress=False, method="mopoe")
    train(cohort, run, resume=True, progress=False)
    payload, resumed = model_file_payload(run / "model.pt")
    assert payload["meta"]["steps"] == 4 and payload["meta"]["method"] == "mmgan"
    reference, continued = losses_by_step(straight), losses_by_step(run)
    assert set(reference) == set(continued) == set(range(4))
    for step in range(4):
        assert continued[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), step
    _, uninterrupted = model_file_payload(straight / "model.pt")
    for (name, p), q in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_a_method_recipe_applies_on_switching_and_never_over_a_config_s_own_values(tmp_path):
    from mmhvae.config import load_config, save_config, with_method

    switched = with_method(load_config("tiny"), "mmgan")  # --method mmgan on the tiny preset
    assert (switched.train.lr, switched.train.lr_final, switched.train.image_loss) == (2e-4, 2e-4, "l1")
    resvit = with_method(load_config("tiny"), "resvit").train  # ResViT: L1 x 100 against the GAN's x 1
    assert (resvit.lr, resvit.lr_final, resvit.gan_start) == (2e-4, 0.0, 0.0)
    assert (1 - resvit.gan_weight) / resvit.gan_weight == pytest.approx(100)
    m2dn = with_method(load_config("tiny"), "m2dn").train  # a diffusion model: no adversarial term
    assert (m2dn.lr, m2dn.lr_final, m2dn.gan_weight, m2dn.image_loss) == (1e-4, 1e-4, 0.0, "l1")
    own = tmp_path / "own.yaml"
    own.write_text("base: tiny\ntrain:\n  method: mmgan\n  lr: 0.001\n")
    run = load_config(own)  # the recipe fills what the file leaves out; the file's lr wins
    assert (run.train.lr, run.train.lr_final, run.train.critic_lr, run.train.gan_start) == (1e-3, 2e-4, 2e-4, 0.0)
    assert with_method(run, "mmgan").train == run.train  # naming the same method again changes nothing
    saved = tmp_path / "saved.yaml"
    save_config(run, saved)  # a run folder's config (no base) reloads as written
    assert load_config(saved).train == run.train


def test_methods_in_config_files_and_bad_methods(cohort, config_file, tmp_path):
    from mmhvae.config import load_config
    from mmhvae.model.baselines.mmgan import MMGANConfig

    gan_yaml = tmp_path / "gan.yaml"
    gan_yaml.write_text(config_file.read_text() + "  method: mmgan\n")
    run = load_config(gan_yaml)  # an MM-GAN of comparable size on the preset's grid
    assert isinstance(run.model, MMGANConfig) and run.model.image_size == 32 and run.data.image_size == 32
    variant_yaml = tmp_path / "variant.yaml"
    variant_yaml.write_text("base: tiny\nmodel:\n  variant: mmgan\n  num_res_units: 1\n")
    run = load_config(variant_yaml)  # the model section alone says what is trained
    assert run.train.method == "mmgan" and run.model.num_res_units == 1 and run.model.image_size == 64
    clash = tmp_path / "clash.yaml"
    clash.write_text("base: tiny\nmodel:\n  variant: mmgan\ntrain:\n  method: mopoe\n")
    with pytest.raises(InputError, match="does not match"):
        load_config(clash)
    resvit_yaml = tmp_path / "resvit.yaml"
    resvit_yaml.write_text("base: tiny\nmodel:\n  variant: resvit\n  transformer_layers: 2\n")
    run = load_config(resvit_yaml)  # ResViT's widths for the tiny grid, two transformer layers
    assert run.train.method == "resvit" and run.model.transformer_layers == 2 and run.model.base_features == 16
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: tiny\ntrain:\n  method: pix2pix\n")
    with pytest.raises(InputError, match="unknown method"):
        load_config(unknown)
    with pytest.raises(InputError, match="unknown method"):
        train(cohort, tmp_path / "run", config_file, max_steps=2, progress=False, method="pix2pix")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    from mmhvae.cli.main import main

    assert main(["train", "--data", str(cohort), "--out", str(tmp_path / "cli"), "--method", "pix2pix"]) == 2
    assert not (tmp_path / "cli").exists()


def test_early_stopping_stops_on_a_plateau_records_it_and_resumes_exactly(cohort, config_file, tmp_path):
    """Patience 2 and a 99 % improvement asked for: validations at steps 2 (the best), 4 and 6 (no improvement
    twice) stop the run at step 6 of 10. Interrupted at step 4 and resumed, it stops at step 6 too, which needs
    the callback's state from the checkpoint (without it, step 6 would count as a first improvement)."""
    plateau = {"early_stopping_patience": 2, "early_stopping_min_delta": 0.99}
    run = tmp_path / "run"
    train(cohort, run, config_file, max_steps=10, progress=False, stop_at_step=4, overrides=plateau)
    assert load_model_file(run / "model.pt").meta["stop_reason"] == "interrupted"
    states = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    (stopping,) = [state for key, state in states.items() if key.startswith("RelativeEarlyStopping")]
    assert stopping["wait_count"] == 1 and math.isfinite(float(stopping["best_score"]))
    train(cohort, run, resume=True, progress=False)
    meta = load_model_file(run / "model.pt").meta
    assert (meta["steps"], meta["stop_reason"]) == (6, "converged")
    assert len([r for r in read_log(run) if r.get("val_loss")]) == 3  # at steps 2, 4 and 6


def test_early_stopping_asks_for_a_relative_improvement():
    """1 % of the best val_loss, whatever the scale: 995 after 1000 is no improvement, 980 is."""
    from mmhvae.training.stopping import RelativeEarlyStopping

    stopping = RelativeEarlyStopping(patience=2, relative_delta=0.01)
    decisions = [stopping._evaluate_stopping_criteria(torch.tensor(v))[0] for v in (1000.0, 995.0, 980.0, 975.0)]
    assert decisions == [False, False, False, False] and stopping.wait_count == 1
    assert float(stopping.best_score) == 980.0
    assert stopping._evaluate_stopping_criteria(torch.tensor(972.0))[0]  # 972 > 0.99 x 980: a second plateau


def test_flat_tail_stopping_stops_once_the_tail_is_flat_and_resumes_exactly(cohort, config_file, tmp_path):
    """Validations every 2 steps; the tail rule over the last half of the steps, at least 2 validations in it,
    a 99 % change allowed: the first window of two validations (steps 2 and 4) stops the run at step 4 of 10.
    Interrupted at step 2 and resumed, it stops at step 4 too, which needs the curve saved in the checkpoint
    (without it, step 4's window would hold one validation and the run would go on to step 6)."""
    from mmhvae.experiments.tuning import validation_curve
    from mmhvae.training.stopping import flat_tail

    flat = {"early_stopping_patience": 2, "early_stopping_min_delta": 0.99, "early_stopping_tail": 0.5}
    run = tmp_path / "run"
    train(cohort, run, config_file, max_steps=10, progress=False, stop_at_step=2, overrides=flat)
    assert load_model_file(run / "model.pt").meta["stop_reason"] == "interrupted"
    train(cohort, run, resume=True, progress=False)
    meta = load_model_file(run / "model.pt").meta
    assert (meta["steps"], meta["stop_reason"]) == (4, "converged")
    curve = validation_curve(run)  # what a results page judges: the same steps, so the same verdict
    assert [step for step, _ in curve] == [2, 4] and flat_tail(curve, 0.5, 0.99, 2)
    strict = {**flat, "early_stopping_min_delta": 0.0}  # nothing is flat: the cap ends the run
    model = train(cohort, tmp_path / "strict", config_file, max_steps=6, progress=False, overrides=strict)
    assert load_model_file(model).meta["stop_reason"] == "max_steps"


def test_the_flat_tail_criterion_needs_enough_validations_and_a_small_relative_change():
    from mmhvae.training.stopping import flat_tail, tail_change

    curve = [(100, 1.0), (200, 0.5), (300, 0.40), (400, 0.398), (500, 0.397)]
    assert tail_change(curve, 0.2).change == pytest.approx(0.397 / 0.398 - 1)  # window: steps 400 and 500
    assert flat_tail(curve, 0.2, 0.01, 2) and not flat_tail(curve, 0.2, 0.01, 3)  # two validations only
    assert flat_tail(curve, 0.45, 0.01, 3)  # steps 300-500: 0.40 -> 0.397, -0.75 %
    assert not flat_tail(curve, 0.45, 0.005, 3) and not flat_tail(curve, 0.7, 0.01, 3)  # 200-500: -21 %
    assert not flat_tail([(100, 1.0)], 0.9, 0.5, 1)  # one point is never a flat curve


def test_training_runs_with_the_single_sample_kl_of_eq19(cohort, tmp_path):
    config = tmp_path / "sample-kl.yaml"
    config.write_text(SMALL_CONFIG.replace("  decoder_blocks: 1\n", "  decoder_blocks: 1\n  kl: sample\n"))
    model = train(cohort, tmp_path / "run", config, max_steps=2, progress=False, overrides={"val_fraction": 0.0})
    assert load_model_file(model).meta["config"]["model"]["kl"] == "sample"
    rows = [r for r in read_log(tmp_path / "run") if r.get("kl")]
    assert len(rows) == 2 and all(math.isfinite(float(r["kl"])) and math.isfinite(float(r["loss"])) for r in rows)


def test_the_module_weighs_the_kl_per_image_pixel_by_default(config_file):
    """On one batch and the same weights: Eq. 19 per image pixel gives M = 4 times the KL of the old option."""
    from mmhvae.config import from_mapping, load_config

    base = load_config(config_file)
    torch.manual_seed(0)
    batch = {"inputs": torch.randn(2, 4, 32, 32), "present": torch.ones(2, 4, dtype=torch.bool)}
    batch["targets"] = batch["inputs"]
    subsets = torch.tensor([[True, False, True, False]])
    kl = {}
    for normalisation in ("image_pixels", "modality_pixels"):
        run = base.to_dict()
        run["train"]["kl_normalisation"] = normalisation
        torch.manual_seed(1)
        module = MMHVAEModule(from_mapping(run, "<test>", base).to_dict())
        kl[normalisation] = module.generator_losses(batch, subsets)["kl"].item()
    assert base.train.kl_normalisation == "image_pixels"
    assert kl["image_pixels"] == pytest.approx(4 * kl["modality_pixels"], rel=1e-5)


def test_a_run_saved_before_kl_normalisation_existed_resumes_as_it_started(tmp_path, caplog):
    from mmhvae.config import load_config, save_config
    from mmhvae.training.trainer import saved_run_config

    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        save_config(load_config("tiny"), folder / "config.yaml")
    text = (old / "config.yaml").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(("kl_normalisation", "subset_"))]
    (old / "config.yaml").write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.INFO, logger="mmhvae")
    resumed = saved_run_config(old).train
    assert (resumed.kl_normalisation, resumed.subset_sampling) == ("modality_pixels", "own")
    assert caplog.text.count("as it started") == 1 and "kl_normalisation: modality_pixels" in caplog.text
    caplog.clear()
    assert saved_run_config(new).train.kl_normalisation == "image_pixels" and "as it started" not in caplog.text


def test_mhvae_trains_from_the_command_line_on_the_complete_us_t2_pairs(cohort, config_file, tmp_path):
    from mmhvae.cli.main import main

    run = tmp_path / "mhvae"
    assert main(["train", "--data", str(cohort), "--out", str(run), "--config", str(config_file),
                 "--method", "mhvae", "--max-steps", "2", "--no-progress"]) == 0
    loaded = load_model_file(run / "model.pt")
    assert loaded.meta["method"] == "mhvae" and loaded.modalities == ("us", "t2")
    trained_on = {path.name.split("-")[0] for path in (run / "cache").glob("*.npz")}
    assert trained_on == {"sub00", "sub02", "sub05", "sub07"}  # the cohort's subjects with both us and t2
    rows = [r for r in read_log(run) if r.get("loss")]
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
