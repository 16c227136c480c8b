"""Training: a short CPU run, the mixture sampler in use, exact resume, skipping non-finite updates."""

from __future__ import annotations

import csv

import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.model_file import load_model_file
from mmhvae.train import MMHVAEModule, gan_weight, kl_weight, train

from conftest import small_cohort

SMALL_CONFIG = """
base: tiny
model:
  image_size: 32
  num_pool: 3
  latent_channels: [2, 4, 4]
  global_latent: 8
  base_features: 4
  max_features: 8
  decoder_blocks: 1
train:
  batch_size: 4
  checkpoint_every: 2
  log_every: 1
  validate_every: 2
  gan_start: 0.5
  max_steps: 4
"""


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


def test_a_short_cpu_run_writes_config_logs_checkpoints_and_a_model(cohort, config_file, tmp_path):
    run = tmp_path / "run"
    model_path = train(cohort, run, config_file, max_steps=4, progress=False)
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    loaded = load_model_file(model_path)
    assert loaded.meta["steps"] == 4 and loaded.modalities == ("us", "t2", "t1c", "flair")
    rows = [r for r in read_log(run) if r.get("loss")]
    assert rows and all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, logged
    assert any(r.get("critic") for r in read_log(run))  # GAN phase reached (gan_start 0.5)
    with pytest.raises(InputError, match="already holds a run"):
        train(cohort, run, config_file, max_steps=4, progress=False)


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
    from mmhvae.train import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(cohort, tmp_path / "run2", config_file, max_steps=50, progress=False,
              overrides={"max_nonfinite_in_a_row": 5})


def test_resume_continues_at_the_same_step_with_the_same_losses(cohort, config_file, tmp_path):
    straight = tmp_path / "straight"
    train(cohort, straight, config_file, max_steps=6, progress=False)
    run = tmp_path / "interrupted"
    train(cohort, run, config_file, max_steps=6, progress=False, stop_at_step=4)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    train(cohort, run, resume=True, progress=False)
    assert load_model_file(run / "model.pt").meta["steps"] == 6

    def losses(folder):
        return {int(float(r["train_step"])): float(r["loss"]) for r in read_log(folder) if r.get("loss")}

    reference, continued = losses(straight), losses(run)
    assert set(reference) == set(continued) == set(range(6))
    for step in range(6):
        assert continued[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), step
    a, b = load_model_file(straight / "model.pt").model, load_model_file(run / "model.pt").model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def cli_train(*args, env=None):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "mmhvae.cli", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def losses_by_step(run):
    """Loss of each step; a step logged by two sessions (redone after a kill) keeps the last session's."""
    return {int(float(r["train_step"])): float(r["loss"]) for r in read_log(run) if r.get("loss")}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(cohort, config_file, tmp_path):
    import signal
    import time

    steps = 10
    straight = tmp_path / "straight"
    train(cohort, straight, config_file, max_steps=steps, progress=False)
    reference = losses_by_step(straight)
    for kill_after in (2, 5):  # at least this many steps checkpointed before the kill
        run = tmp_path / f"killed{kill_after}"
        process = cli_train("--data", cohort, "--out", run, "--config", config_file, "--max-steps", steps)
        last = run / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if last.is_file() and torch.load(last, weights_only=False)["global_step"] >= kill_after:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = torch.load(last, weights_only=False)
        assert 0 < saved["global_step"] < steps, "kill too late for this test"
        resumed = cli_train("--data", cohort, "--out", run, "--resume")
        output, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, output
        logs = sorted((run / "logs").glob("session-*/metrics.csv"))
        with open(logs[-1]) as handle:
            first = next(r for r in csv.DictReader(handle) if r.get("loss"))
        assert int(float(first["train_step"])) == saved["global_step"]  # continues at the saved step
        continued = losses_by_step(run)
        assert set(continued) == set(reference)
        for step in reference:
            assert continued[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), (kill_after, step)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_replicas_in_sync(cohort, config_file, tmp_path):
    run = tmp_path / "ddp"
    process = cli_train("--data", cohort, "--out", run, "--config", config_file, "--max-steps", 3,
                        "--devices", 2, "--accelerator", "cpu")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    meta = load_model_file(run / "model.pt").meta
    assert meta["world_size"] == 2 and meta["replicas_in_sync"] is True and meta["steps"] == 3
