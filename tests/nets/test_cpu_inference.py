"""Folded narrow convolutions compute what the original layers compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from udl_med.nets.cpu_inference import TapFoldedConv, can_fold, fold_narrow_convolutions
from udl_med.nets.resnet_generator import ResNetGenerator, UNetGenerator


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_tap_folded_conv_equals_the_convolution(spatial_dims: int, padding: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv_cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    kernel = (3, 5) if spatial_dims == 2 else (3, 1, 5)
    conv = conv_cls(6, 2, kernel, padding=padding, bias=bias)
    x = torch.randn(3, 6, *((11, 9) if spatial_dims == 2 else (7, 6, 9)))
    with torch.no_grad():
        expected, folded = conv(x), TapFoldedConv(conv)(x)
    assert folded.shape == expected.shape
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


def test_only_plain_narrow_convolutions_fold() -> None:
    assert can_fold(nn.Conv3d(8, 1, 7))
    assert not can_fold(nn.Conv3d(8, 32, 3))  # wide: oneDNN is already efficient
    assert not can_fold(nn.Conv2d(8, 1, 3, stride=2))
    assert not can_fold(nn.Conv2d(8, 1, 3, padding="same"))
    assert not can_fold(nn.Conv2d(8, 1, 3, padding=1, padding_mode="reflect"))
    assert not can_fold(nn.Conv2d(8, 1, (3, 1)))  # one tap along the last axis: nothing to fold
    with pytest.raises(ValueError, match="cannot fold"):
        TapFoldedConv(nn.Conv2d(8, 1, 3, dilation=2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", ["resnet", "unet"])
def test_folded_generators_translate_the_same(spatial_dims: int, kind: str) -> None:
    torch.manual_seed(0)
    if kind == "resnet":  # its 7-tap output layer folds
        net: nn.Module = ResNetGenerator(spatial_dims, channels=4, num_res_blocks=1)
    else:
        net = UNetGenerator(spatial_dims, channels=(4, 8), strides=(2,), num_res_units=1)
    net.eval()
    x = torch.rand(2, 1, *((32, 32) if spatial_dims == 2 else (16, 16, 16))) * 2 - 1
    with torch.no_grad():
        expected = net(x)
        replaced = fold_narrow_convolutions(net)
        got = net(x)
    assert replaced == sum(isinstance(m, TapFoldedConv) for m in net.modules())
    assert replaced >= 1 or kind == "unet"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
