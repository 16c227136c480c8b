"""Tests of the per-modality critics, GAN losses and the memory of real images."""

from __future__ import annotations

import pytest
import torch

from mmhvae.model.critic import ModalityCritics, critic_loss, generator_loss
from mmhvae.training.memory import RealImageMemory

MODALITIES = ("us", "t2", "t1c", "flair")


def test_critics_score_each_modality_with_its_own_network() -> None:
    critics = ModalityCritics(MODALITIES, channels=8, num_layers=3)
    images = torch.randn(2, 64, 64)
    scores = critics("us", images)
    assert scores.ndim == 4 and scores.shape[:2] == (2, 1)
    assert critics("t2", images.unsqueeze(1)).shape == scores.shape
    us_params = {id(p) for p in critics.critics["us"].parameters()}
    assert not us_params & {id(p) for p in critics.critics["t2"].parameters()}


def test_lsgan_losses() -> None:
    ones, zeros = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    assert critic_loss(ones, zeros).item() == 0.0  # perfect critic
    assert critic_loss(zeros, ones).item() == pytest.approx(1.0)
    assert generator_loss(ones).item() == 0.0  # perfectly fooled critic
    assert generator_loss(zeros).item() == pytest.approx(0.5)


def test_paper_losses_follow_eq_15_and_16() -> None:
    real, fake = torch.full((2, 1, 3, 3), 0.25), torch.full((2, 1, 3, 3), 2.0)
    assert critic_loss(real, fake, kind="paper").item() == pytest.approx(0.25 - 2.0)
    assert generator_loss(fake, kind="paper").item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        critic_loss(real, fake, kind="hinge")


def test_critic_and_generator_losses_drive_opposite_gradients() -> None:
    critics = ModalityCritics(("us",), channels=8)
    fake = torch.zeros(2, 32, 32, requires_grad=True)
    real = torch.randn(2, 32, 32)
    critic_loss(critics("us", real), critics("us", fake.detach())).backward()
    assert fake.grad is None  # the critic step must not reach the generator
    generator_loss(critics("us", fake)).backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all()


def test_memory_is_empty_until_pushed() -> None:
    memory = RealImageMemory(MODALITIES, capacity=4)
    assert memory.sample("flair", 2) is None
    memory.push("flair", torch.ones(1, 8, 8))
    sample = memory.sample("flair", 3)
    assert sample is not None and sample.shape == (3, 8, 8) and torch.equal(sample, torch.ones(3, 8, 8))
    assert memory.sample("us", 1) is None


def test_memory_is_a_ring_buffer_keeping_the_latest_images() -> None:
    memory = RealImageMemory(("t2",), capacity=3)
    for value in range(5):  # pushes 0..4, only 2, 3, 4 survive
        memory.push("t2", torch.full((1, 1, 2, 2), float(value)))
    assert memory.count("t2") == 3
    generator = torch.Generator().manual_seed(0)
    values = set(memory.sample("t2", 200, generator)[:, 0, 0].tolist())
    assert values == {2.0, 3.0, 4.0}
    memory.push("t2", torch.arange(5.0).reshape(5, 1, 1).expand(5, 2, 2))  # bigger than capacity
    assert set(memory.sample("t2", 200, generator)[:, 0, 0].tolist()) == {2.0, 3.0, 4.0}
    with pytest.raises(ValueError):
        memory.push("t2", torch.zeros(1, 3, 3))


def test_memory_state_round_trip_gives_identical_samples() -> None:
    memory = RealImageMemory(MODALITIES, capacity=5)
    memory.push("us", torch.randn(7, 6, 6))
    memory.push("t1c", torch.randn(2, 6, 6))
    state = memory.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    restored = RealImageMemory(MODALITIES, capacity=5)
    restored.load_state_dict(state)
    for m in MODALITIES:
        assert restored.count(m) == memory.count(m)
        a = memory.sample(m, 4, torch.Generator().manual_seed(3))
        b = restored.sample(m, 4, torch.Generator().manual_seed(3))
        assert (a is None and b is None) or torch.equal(a, b)
    # The ring position survives too: the same next push overwrites the same slot.
    extra = torch.randn(1, 6, 6)
    memory.push("us", extra)
    restored.push("us", extra)
    assert torch.equal(memory.state_dict()["us.images"], restored.state_dict()["us.images"])


def test_memory_state_survives_torch_save_weights_only(tmp_path) -> None:
    memory = RealImageMemory(("us",), capacity=2)
    memory.push("us", torch.randn(3, 4, 4))
    torch.save(memory.state_dict(), tmp_path / "memory.pt")
    restored = RealImageMemory(("us",), capacity=2)
    restored.load_state_dict(torch.load(tmp_path / "memory.pt", weights_only=True))
    assert torch.equal(restored.state_dict()["us.images"], memory.state_dict()["us.images"])
