"""Translation networks: ResNet and U-Net generators, PatchGAN discriminator, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from udl_med.nets.patch_discriminator import PatchGANDiscriminator, check_patch_input, patch_sizes
from udl_med.nets.resnet_generator import ResNetGenerator, UNetGenerator


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_generators_keep_any_size_and_range(spatial_dims: int) -> None:
    size = (13, 18, 9)[:spatial_dims]  # not a multiple of the total stride
    x = torch.randn(2, 1, *size) * 3
    for net in (
        ResNetGenerator(spatial_dims, 1, 1, channels=4, num_downsample=2, num_res_blocks=1),
        UNetGenerator(spatial_dims, 1, 1, channels=(4, 8, 8), strides=(2, 2)),
    ):
        y = net(x)
        assert y.shape == x.shape
        assert y.abs().max() <= 1.0  # tanh output, the [-1, 1] image range


def test_resnet_generator_is_local_translation_equivariant() -> None:
    # fully convolutional (with a local norm): an image and its crop agree where the
    # receptive field (radius 6) does not reach the cut
    torch.manual_seed(0)
    net = ResNetGenerator(2, 1, 1, channels=4, num_downsample=0, num_res_blocks=1, norm="batch").eval()
    x = torch.randn(1, 1, 24, 24)
    y = net(x)
    y_sub = net(x[:, :, :16, :])
    torch.testing.assert_close(y[:, :, :6, :], y_sub[:, :, :6, :], atol=1e-5, rtol=1e-5)


def test_generators_are_scriptable() -> None:
    for net in (ResNetGenerator(3, 1, 1, channels=4, num_res_blocks=1), UNetGenerator(2, 1, 1, channels=(4, 8), strides=(2,))):
        scripted = torch.jit.script(net.eval())
        x = torch.randn(1, 1, *(10,) * net.spatial_dims)
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("spatial_dims,size,layers", [(2, (32, 32), 3), (3, (16, 16, 16), 2), (2, (32, 32), 2)])
def test_patch_discriminator_score_map(spatial_dims: int, size: tuple[int, ...], layers: int) -> None:
    disc = PatchGANDiscriminator(spatial_dims, 2, channels=4, num_layers=layers)
    scores = disc(torch.randn(2, 2, *size))
    assert scores.shape == (2, 1, *patch_sizes(size, layers)[1])
    check_patch_input(size, layers)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="too small"):
        check_patch_input((16, 16, 16), 3)
    with pytest.raises(ValueError, match="spatial_dims"):
        ResNetGenerator(4)
    with pytest.raises(ValueError, match="padding_mode"):
        ResNetGenerator(2, padding_mode="circular")
    with pytest.raises(ValueError, match="num_res_blocks"):
        ResNetGenerator(2, num_res_blocks=-1)
    with pytest.raises(ValueError, match="strides"):
        UNetGenerator(2, channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ValueError, match="num_layers"):
        PatchGANDiscriminator(2, num_layers=0)
