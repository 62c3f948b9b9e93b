"""Virtual batch norm in the GAN nets normalises with the reference batch (issue 26).

The batch-independence tests of ``test_vbn.py`` also pass when ``virtual_batch`` means no
normalisation at all; here the networks' outputs depend on the reference batch, and the
first VBN layer maps the reference rows to mean 0 and variance 1 before its affine.
"""

from __future__ import annotations

import pytest
import torch

from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.mlp_gan import MLPDiscriminator, MLPGenerator
from udl_med.nets.vbn import VirtualBatchNorm


def _nets(spatial_dims: int):
    torch.manual_seed(0)
    if spatial_dims == 0:
        return [
            (MLPDiscriminator(3, hidden=(8, 8), norm="virtual_batch"), lambda n: torch.randn(n, 3) * 2 + 1),
            (MLPGenerator(4, 3, hidden=(8, 8), norm="virtual_batch"), lambda n: torch.randn(n, 4) * 2 + 1),
        ]
    size = 16 if spatial_dims == 2 else 8
    return [
        (DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), norm="virtual_batch"), lambda n: torch.rand(n, 1, *(size,) * spatial_dims) * 2 - 1),
        (DCGANGenerator(spatial_dims, 6, 1, size, channels=(8, 4), norm="virtual_batch"), lambda n: torch.randn(n, 6) * 2 + 1),
    ]


@pytest.mark.parametrize("spatial_dims", [0, 2, 3])
def test_vbn_nets_normalise_with_their_reference_batch(spatial_dims: int) -> None:
    for net, draw in _nets(spatial_dims):
        layers = [m for m in net.modules() if isinstance(m, VirtualBatchNorm)]
        assert layers, type(net).__name__
        reference, x = draw(16), draw(3)
        net.set_reference(reference)
        seen = []
        handle = layers[0].register_forward_hook(lambda m, i, out: seen.append((m, i[0].detach(), out.detach())))
        out = net(x)
        handle.remove()
        layer, before, normed = seen[0]
        shape = (1, -1) + (1,) * (normed.ndim - 2)
        ref_rows = (normed[:16] - layer.bias.view(shape)) / layer.weight.view(shape)  # the reference rows come first
        axes = (0,) + tuple(range(2, normed.ndim))
        assert torch.allclose(ref_rows.mean(axes), torch.zeros(ref_rows.shape[1]), atol=1e-4)
        var = before[:16].var(axes, unbiased=False)  # the reference rows' own variance: 1 after normalising, up to eps
        assert torch.allclose((ref_rows**2).mean(axes), var / (var + layer.eps), rtol=1e-3, atol=1e-5)
        assert (var / (var + layer.eps)).min() > 0.5  # (eps does not hide the normalisation)
        net.set_reference(reference * 3 + 2)  # another reference: other statistics, another output
        assert not torch.allclose(net(x), out, atol=1e-4), type(net).__name__
