"""LAPGAN level networks: one-hot class planes, an untrained G_k adds nothing, D_k scores each image alone."""

from __future__ import annotations

import pytest
import torch

from udl_med.nets.lapgan import LaplacianLevelDiscriminator, LaplacianLevelGenerator, label_planes


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_label_planes_are_one_hot_and_constant_over_space(spatial_dims: int) -> None:
    like = torch.zeros(3, 1, *(4,) * spatial_dims)
    planes = label_planes(torch.tensor([2, 0, 2]), 3, like)
    assert planes.shape == (3, 3, *(4,) * spatial_dims)
    expected = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 0, 1]]).view(3, 3, *(1,) * spatial_dims)
    assert torch.equal(planes, expected.expand_as(planes))
    assert label_planes(None, 0, like) is None
    with pytest.raises(ValueError, match="needs labels"):
        label_planes(None, 3, like)
    with pytest.raises(ValueError, match=r"labels must be \(B,\)"):
        label_planes(torch.tensor([0, 1]), 3, like)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_an_untrained_generator_adds_nothing_then_uses_noise_and_class(spatial_dims: int) -> None:
    torch.manual_seed(0)
    g = LaplacianLevelGenerator(spatial_dims, channels=8, num_blocks=1, noise_channels=2, num_classes=2).eval()
    coarse = torch.randn(2, 1, *(8,) * spatial_dims)
    noise = torch.randn(2, 2, *(8,) * spatial_dims)
    labels = torch.tensor([0, 1])
    assert torch.equal(g(coarse, noise, labels), torch.zeros_like(coarse))  # h_k = 0: the level returns u(g_{k+1})
    with torch.no_grad():
        for p in g.net[-1].parameters():
            p.normal_(0, 0.1)
    h = g(coarse, noise, labels)
    assert h.shape == coarse.shape
    assert not torch.allclose(h, g(coarse, torch.randn_like(noise), labels))
    assert not torch.allclose(h, g(coarse, noise, labels.flip(0)))
    with pytest.raises(ValueError, match="noise_channels"):
        LaplacianLevelGenerator(spatial_dims, noise_channels=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_discriminator_scores_each_image_alone_given_its_class(spatial_dims: int) -> None:
    torch.manual_seed(0)
    d = LaplacianLevelDiscriminator(spatial_dims, channels=(4, 8), num_classes=2).eval()
    diff, coarse = torch.randn(3, 1, *(8,) * spatial_dims), torch.randn(3, 1, *(8,) * spatial_dims)
    labels = torch.tensor([0, 1, 1])
    scores = d(diff, coarse, labels)
    assert scores.shape == (3, 1)
    assert torch.allclose(scores[1:2], d(diff[1:2], coarse[1:2], labels[1:2]), atol=1e-6)  # no batch coupling in eval mode
    assert not torch.allclose(scores, d(diff, coarse, 1 - labels))
    with pytest.raises(ValueError, match="at least one entry"):
        LaplacianLevelDiscriminator(spatial_dims, channels=())
