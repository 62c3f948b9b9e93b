"""Virtual batch norm: the formula by hand, independence from the batch, the reference rows, init, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.utils import normal_init

from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.mlp_gan import MLPDiscriminator
from udl_med.nets.vbn import VirtualBatchNorm

torch.set_num_threads(1)


def test_formula_by_hand_conv_features() -> None:
    # one channel, 1 x 2 maps. R = [[1, 3], [5, 7]]: mean 4, E[x^2] = (1 + 9 + 25 + 49) / 4 = 21, var 5
    vbn = VirtualBatchNorm(1, spatial_dims=2, eps=1e-5)
    with torch.no_grad():
        vbn.weight.fill_(2.0)
        vbn.bias.fill_(1.0)
    vbn.reference_size = 2
    ref = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])
    x = torch.tensor([[[[0.0, 2.0]]]])  # own mean 1, own E[x^2] 2
    out = vbn(torch.cat([ref, x]))
    # reference rows: (r - 4) / sqrt(5 + eps), then * 2 + 1
    s_r = math.sqrt(5.0 + 1e-5)
    assert out[:2].flatten().tolist() == pytest.approx([2 * v / s_r + 1 for v in (-3.0, -1.0, 1.0, 3.0)], rel=1e-6)
    # example: mean = 1/3 * 1 + 2/3 * 4 = 3; E[x^2] = 1/3 * 2 + 2/3 * 21 = 44/3; var = 44/3 - 9 = 17/3
    s_x = math.sqrt(17.0 / 3.0 + 1e-5)  # 2.380478
    assert out[2].flatten().tolist() == pytest.approx([2 * (0 - 3) / s_x + 1, 2 * (2 - 3) / s_x + 1], rel=1e-6)
    assert out[2].flatten().tolist() == pytest.approx([-1.520504, 0.159832], abs=1e-5)


def test_formula_by_hand_vectors_per_feature() -> None:
    # spatial_dims=0: R = [[1, 0], [3, 4]]: mean (2, 2), E[x^2] (5, 8), var (1, 4)
    vbn = VirtualBatchNorm(2, spatial_dims=0, eps=1e-8)
    vbn.reference_size = 2
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 2.0]])
    out = vbn(x)
    assert out[:2].tolist()[0] == pytest.approx([-1.0, -1.0], rel=1e-6)
    assert out[:2].tolist()[1] == pytest.approx([1.0, 1.0], rel=1e-6)
    # example (5, 2): feature 0 mean 1/3*5 + 2/3*2 = 3, E[x^2] 1/3*25 + 2/3*5 = 35/3, var 8/3 -> 2 / sqrt(8/3)
    # feature 1: mean 1/3*2 + 2/3*2 = 2 -> 0
    assert out[2].tolist() == pytest.approx([2 / math.sqrt(8 / 3), 0.0], abs=1e-6)


@pytest.mark.parametrize("spatial_dims", [0, 1, 2, 3])
def test_example_independent_of_batch_and_reference_uses_own_stats(spatial_dims: int) -> None:
    torch.manual_seed(0)
    shape = (3,) + (4,) * spatial_dims
    vbn = VirtualBatchNorm(3, spatial_dims)
    vbn.reference_size = 5
    ref = torch.randn(5, *shape) * 2 + 1
    a, others = torch.randn(1, *shape), torch.randn(6, *shape) * 3
    alone = vbn(torch.cat([ref, a]))
    in_batch = vbn(torch.cat([ref, others[:2], a, others[2:]]))
    assert torch.allclose(alone[5], in_batch[7], atol=1e-6)
    # the reference rows: R's own statistics, whatever follows them
    red = (0,) + tuple(range(2, 2 + spatial_dims))
    mean, var = ref.mean(red, keepdim=True), ref.var(red, unbiased=False, keepdim=True)
    expected = (ref - mean) / torch.sqrt(var + vbn.eps)
    assert torch.allclose(alone[:5], expected, atol=1e-5) and torch.allclose(in_batch[:5], expected, atol=1e-5)
    # batch norm would not be independent (this test can fail)
    bn = torch.nn.BatchNorm1d(3) if spatial_dims in (0, 1) else getattr(torch.nn, f"BatchNorm{spatial_dims}d")(3)
    assert not torch.allclose(bn(torch.cat([ref, a]))[5], bn(torch.cat([ref, others[:2], a, others[2:]]))[7], atol=1e-3)
    # gradients reach the weights and the inputs
    x = torch.cat([ref, a]).requires_grad_(True)
    vbn(x).square().sum().backward()
    assert x.grad is not None and vbn.weight.grad is not None


def test_layer_errors() -> None:
    vbn = VirtualBatchNorm(2, spatial_dims=2)
    with pytest.raises(RuntimeError, match="set_reference"):
        vbn(torch.randn(3, 2, 4, 4))
    vbn.reference_size = 2
    with pytest.raises(ValueError, match="expected"):
        vbn(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="spatial_dims"):
        VirtualBatchNorm(2, spatial_dims=4)


def test_monai_normal_init_works_on_vbn() -> None:
    torch.manual_seed(0)
    assert "BatchNorm" in VirtualBatchNorm.__name__
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 512, 3), VirtualBatchNorm(512, 2))
    net.apply(normal_init)
    w = net[1].weight.detach()
    assert abs(w.mean().item() - 1.0) < 0.005 and 0.015 < w.std().item() < 0.025
    assert torch.equal(net[1].bias.detach(), torch.zeros(512))
    # and the DCGAN networks with VBN are built through normal_init
    d = DCGANDiscriminator(2, 1, 16, channels=(8, 16), norm="virtual_batch")
    assert any(isinstance(m, VirtualBatchNorm) for m in d.modules())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dcgan_discriminator_vbn_score_independent_of_batch(spatial_dims: int) -> None:
    torch.manual_seed(1)
    size = 16 if spatial_dims == 2 else 8
    d = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), norm="virtual_batch", num_classes=2)
    with pytest.raises(RuntimeError, match="set_reference"):
        d(torch.randn(2, 1, *(size,) * spatial_dims), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels_ref"):
        d.set_reference(torch.randn(4, 1, *(size,) * spatial_dims))
    d.set_reference(torch.randn(4, 1, *(size,) * spatial_dims), torch.tensor([0, 1, 0, 1]))
    d.train()
    x = torch.randn(5, 1, *(size,) * spatial_dims)
    labels = torch.tensor([1, 0, 0, 1, 1])
    batch = d(x, labels)
    assert batch.shape == (5, 1)
    for i in (0, 3):
        alone = d(x[i : i + 1], labels[i : i + 1])
        assert torch.allclose(alone, batch[i : i + 1], atol=1e-5)
    shuffled = d(x.flip(0), labels.flip(0))
    assert torch.allclose(shuffled.flip(0), batch, atol=1e-5)
    d.eval()
    assert torch.allclose(d(x, labels), batch, atol=1e-5)  # same in eval mode


def test_reference_travels_in_the_state_dict() -> None:
    torch.manual_seed(2)
    g = DCGANGenerator(2, 8, 1, 16, channels=(8, 4), norm="virtual_batch")
    g.set_reference(torch.randn(6, 8))
    z = torch.randn(3, 8)
    out = g(z)
    fresh = DCGANGenerator(2, 8, 1, 16, channels=(8, 4), norm="virtual_batch")
    assert not fresh.has_reference
    fresh.load_state_dict(g.state_dict())
    assert fresh.has_reference and torch.equal(fresh(z), out)
    assert "reference_x" in g.state_dict() and "reference_labels" not in g.state_dict()


def test_mlp_vbn_independent_of_batch() -> None:
    torch.manual_seed(3)
    d = MLPDiscriminator(2, hidden=(16, 16, 16), norm="virtual_batch")
    d.set_reference(torch.randn(8, 2))
    x = torch.randn(4, 2)
    assert torch.allclose(d(x)[2:3], d(x[2:3]), atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dcgan_generator_vbn_sample_independent_of_batch(spatial_dims: int) -> None:
    torch.manual_seed(4)
    size = 16 if spatial_dims == 2 else 8
    g = DCGANGenerator(spatial_dims, 6, 1, size, channels=(8, 4), norm="virtual_batch", num_classes=2)
    g.set_reference(torch.randn(5, 6), torch.tensor([0, 1, 0, 1, 0]))
    z, labels = torch.randn(4, 6), torch.tensor([0, 1, 1, 0])
    batch = g(z, labels)
    assert batch.shape == (4, 1, *(size,) * spatial_dims)
    assert torch.allclose(g(z[1:2], labels[1:2]), batch[1:2], atol=1e-6)
    assert torch.allclose(g(z[[3, 1]], labels[[3, 1]]), batch[[3, 1]], atol=1e-6)
