"""DCGAN and MLP GAN networks: shapes, ranges, conditioning, options, init, argument checks, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from udl_med.losses.gan import GANLoss
from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.mlp_gan import MLPDiscriminator, MLPGenerator
from udl_med.nets.minibatch_discrimination import MinibatchDiscrimination

torch.set_num_threads(1)


def _size(spatial_dims: int) -> tuple[int, ...]:
    return (16, 16) if spatial_dims == 2 else (8, 8, 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_generator_shape_range_and_label(spatial_dims: int, norm: str) -> None:
    torch.manual_seed(0)
    size = _size(spatial_dims)
    g = DCGANGenerator(spatial_dims, 8, 2, size, channels=(8, 4), num_classes=3, norm=norm)
    z = torch.randn(4, 8) * 50  # large z: tanh saturates but stays in range
    out = g(z, torch.tensor([0, 1, 2, 0]))
    assert out.shape == (4, 2, *size)
    assert out.abs().max() <= 1.0
    g.eval()
    z = torch.randn(2, 8)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-6  # the label changes the image
    with pytest.raises(ValueError, match="labels"):
        g(z)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_discriminator_outputs_features_and_options(spatial_dims: int) -> None:
    torch.manual_seed(0)
    size = _size(spatial_dims)
    d = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), out_features=3)
    x = torch.randn(5, 1, *size)
    scores, features = d.forward_features(x)
    assert scores.shape == (5, 3)
    assert features.shape == (5, d.features_dim) and d.features_dim == 8 * (size[0] // 4) ** spatial_dims
    assert torch.equal(d(x), scores)
    # minibatch discrimination before the score layer
    mb = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), minibatch_kernels=6)
    assert isinstance(mb.minibatch, MinibatchDiscrimination) and mb.score.in_features == mb.features_dim + 6
    assert mb(x).shape == (5, 1)
    # noise only in training mode
    noisy = DCGANDiscriminator(
        spatial_dims, 1, size, channels=(4, 8), norm="none", input_noise_std=0.3, hidden_noise_std=0.5
    )
    noisy.train()
    assert not torch.allclose(noisy(x), noisy(x))
    noisy.eval()
    assert torch.equal(noisy(x), noisy(x))
    # conditional D: label maps as extra input channels
    cd = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), num_classes=2, norm="none").eval()
    assert cd.body[0].conv.in_channels == 3
    assert not torch.equal(cd(x, torch.zeros(5, dtype=torch.long)), cd(x, torch.ones(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="unconditional"):
        d(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        cd(x, torch.full((5,), 2))
    # projection D: the image alone goes in; the class acts through <embed(y), phi(x)> on the score only
    pd = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), num_classes=2, norm="none", minibatch_kernels=3, conditioning="projection").eval()
    assert pd.body[0].conv.in_channels == 1 and pd.embed.weight.shape == (2, pd.features_dim + 3)
    (s0, f0), (s1, f1) = pd.forward_features(x, torch.zeros(5, dtype=torch.long)), pd.forward_features(x, torch.ones(5, dtype=torch.long))
    assert torch.equal(f0, f1) and not torch.allclose(s0, s1)  # same features, class-dependent score
    h = pd.minibatch(f0)
    assert torch.allclose(s1 - s0, ((pd.embed.weight[1] - pd.embed.weight[0]) * h).sum(1, keepdim=True), atol=1e-6)
    s1.sum().backward()
    assert pd.embed.weight.grad[1].abs().sum() > 0 and pd.embed.weight.grad[0].abs().sum() == 0  # only the label's row learns
    with pytest.raises(ValueError, match="labels must lie"):
        pd(x, torch.full((5,), 2))
    # auxiliary D (AC-GAN): the image alone goes in and is scored alone; a class head reads the same hidden layer
    ad = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), num_classes=2, norm="none", minibatch_kernels=3, conditioning="auxiliary").eval()
    assert ad.body[0].conv.in_channels == 1 and ad.classes.weight.shape == (2, ad.features_dim + 3)
    (s0, c0), (s1, c1) = ad.forward_with_classes(x, torch.zeros(5, dtype=torch.long)), ad.forward_with_classes(x, torch.ones(5, dtype=torch.long))
    assert torch.equal(s0, s1) and torch.equal(c0, c1) and c0.shape == (5, 2) and torch.equal(s0, ad(x, torch.ones(5, dtype=torch.long)))  # labels do not reach the score
    assert torch.allclose(c0, ad.classes(ad.minibatch(ad.forward_features(x, torch.zeros(5, dtype=torch.long))[1])), atol=1e-6)
    with pytest.raises(ValueError, match="conditioning 'auxiliary'"):
        cd.forward_with_classes(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="conditioning must be one of concat, projection, auxiliary"):
        DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), num_classes=2, conditioning="bilinear")
    for conditioning in ("projection", "auxiliary"):
        with pytest.raises(ValueError, match="one output"):
            DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), num_classes=2, out_features=3, conditioning=conditioning)


def test_sizes_and_non_square_images() -> None:
    g = DCGANGenerator(2, 4, 1, (32, 16), channels=(8, 4, 4))
    assert g(torch.randn(2, 4)).shape == (2, 1, 32, 16)
    d = DCGANDiscriminator(2, 1, (32, 16), channels=(4, 4, 8))
    assert d(torch.randn(2, 1, 32, 16)).shape == (2, 1)
    g64 = DCGANGenerator(2, 4, 1, 64, channels=(8, 8, 4, 4))
    assert g64(torch.randn(2, 4)).shape == (2, 1, 64, 64)
    g3 = DCGANGenerator(3, 4, 1, 32, channels=(4, 4, 2))
    assert g3(torch.randn(2, 4)).shape == (2, 1, 32, 32, 32)


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(2, 8, 1, 20, channels=(8, 4, 4))  # 20 not divisible by 8
    with pytest.raises(ValueError, match="image_size"):
        DCGANDiscriminator(3, 1, (16, 16), channels=(4,))
    with pytest.raises(ValueError, match="norm"):
        DCGANGenerator(2, 8, 1, 16, norm="group")
    with pytest.raises(ValueError, match="instance"):
        DCGANGenerator(2, 8, 1, 16, channels=(8, 8, 8, 8), norm="instance")  # 1 x 1 first map
    with pytest.raises(ValueError, match="spatial_dims"):
        DCGANGenerator(1, 8, 1, 16)
    with pytest.raises(ValueError, match="latent_dim"):
        DCGANGenerator(2, 0, 1, 16)
    with pytest.raises(ValueError, match="input_noise_std"):
        DCGANDiscriminator(2, 1, 16, input_noise_std=-1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        DCGANDiscriminator(2, 1, 16, channels=(4, 8))(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        MLPGenerator(4, 2, norm="group")
    with pytest.raises(ValueError, match="output"):
        MLPGenerator(4, 2, output="sigmoid")
    with pytest.raises(ValueError, match="hidden"):
        MLPDiscriminator(2, hidden=())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dcgan_init_is_normal_002(spatial_dims: int) -> None:
    torch.manual_seed(0)
    g = DCGANGenerator(spatial_dims, 32, 1, _size(spatial_dims), channels=(32, 16))
    d = DCGANDiscriminator(spatial_dims, 1, _size(spatial_dims), channels=(16, 32))
    for net in (g, d):
        kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
        convs = [m for m in net.modules() if isinstance(m, kinds)]
        weights = torch.cat([m.weight.detach().flatten() for m in convs])
        assert abs(weights.mean().item()) < 0.002 and 0.018 < weights.std().item() < 0.022
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(abs(m.weight.detach().mean().item() - 1.0) < 0.02 for m in bns)
    # DCGAN rules: no norm on G's output, nor on D's input layer
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.stages[-1].modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.body[0].modules())


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "instance", "virtual_batch"])
def test_mlp_generator_and_discriminator(norm: str) -> None:
    torch.manual_seed(0)
    g = MLPGenerator(4, 2, hidden=(16, 16), num_classes=3, norm=norm)
    d = MLPDiscriminator(2, hidden=(16, 8), num_classes=3, norm=norm, minibatch_kernels=4)
    if norm == "virtual_batch":
        g.set_reference(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
        d.set_reference(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    labels = torch.tensor([0, 1, 2, 0, 1])
    x = g(torch.randn(5, 4), labels)
    assert x.shape == (5, 2)
    scores, features = d.forward_features(x, labels)
    assert scores.shape == (5, 1) and features.shape == (5, 8) and d.features_dim == 8
    g.eval()
    z = torch.randn(3, 4)
    assert not torch.allclose(g(z, torch.zeros(3, dtype=torch.long)), g(z, torch.full((3,), 2)))


def test_mlp_tanh_output_and_flattened_images() -> None:
    torch.manual_seed(0)
    g = MLPGenerator(4, 16 * 16, output="tanh")
    out = g(torch.randn(3, 4) * 100)
    assert out.shape == (3, 256) and out.abs().max() <= 1.0 and out.abs().max() > 0.9
    d = MLPDiscriminator(256, hidden=(32,), out_features=10, input_noise_std=0.3, hidden_noise_std=0.5)
    images = out.view(3, 1, 16, 16)
    assert d(images).shape == (3, 10)
    d.eval()
    assert torch.equal(d(images), d(out))  # the MLP D flattens images
    d.train()
    assert not torch.equal(d(images), d(images))  # noise in training mode
    with pytest.raises(ValueError, match="flatten"):
        d(torch.randn(3, 1, 8, 8))


def test_mlp_discriminator_learns_to_separate() -> None:
    torch.manual_seed(0)
    d = MLPDiscriminator(2, hidden=(32, 32), minibatch_kernels=5)
    loss = GANLoss("non-saturating")
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    real, fake = torch.randn(64, 2) * 0.1 + 2.0, torch.randn(64, 2) * 0.1 - 2.0
    first = None
    for _ in range(40):
        value = loss.discriminator_loss(d(real), d(fake))
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < 0.2 * first
    assert (d(real) > 0).all() and (d(fake) < 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dcgan_generator_step_moves_towards_fooling_d(spatial_dims: int) -> None:
    torch.manual_seed(0)
    size = _size(spatial_dims)
    g = DCGANGenerator(spatial_dims, 8, 1, size, channels=(8, 4))
    d = DCGANDiscriminator(spatial_dims, 1, size, channels=(4, 8), norm="none")
    loss = GANLoss("non-saturating")
    opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
    z = torch.randn(8, 8)
    before = loss.generator_loss(d(g(z))).item()
    for _ in range(10):
        value = loss.generator_loss(d(g(z)))
        opt.zero_grad()
        value.backward()
        opt.step()
    assert all(p.grad is not None for p in g.parameters())
    assert loss.generator_loss(d(g(z))).item() < before
