"""Tests of the network's building blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmhvae.model.blocks import make_norm


@pytest.mark.parametrize("kind", ["instance", "instance_affine"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_instance_norm_matches_torch(kind, memory_format):
    """The group-norm kernel gives torch's instance norm: same outputs, input and parameter gradients."""
    torch.manual_seed(0)
    affine = kind == "instance_affine"
    ours, reference = make_norm(kind, 6), nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            for module in (ours, reference):
                module.weight.copy_(torch.linspace(0.5, 2.0, 6))
                module.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    x = (3 * torch.randn(3, 6, 9, 7) + 2).contiguous(memory_format=memory_format)
    x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(3, 6, 9, 7)

    y_ours, y_reference = ours(x_ours), reference(x_reference)
    (weights * y_ours).sum().backward()
    (weights * y_reference).sum().backward()

    torch.testing.assert_close(y_ours, y_reference)
    torch.testing.assert_close(x_ours.grad, x_reference.grad)
    if affine:
        torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad)
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_instance_norm_keeps_samples_apart():
    """Each sample is normalised on its own: what batching input subsets together relies on."""
    torch.manual_seed(0)
    norm = make_norm("instance", 4)
    x = torch.randn(2, 4, 8, 8)
    changed = x.clone()
    changed[1] = 10 * changed[1] + 5
    torch.testing.assert_close(norm(x)[0], norm(changed)[0])
