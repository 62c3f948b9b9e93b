"""RBM and DBN networks: energies against brute-force sums, likelihoods, sampling, learning."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from udl_med.nets.dbn import DBN, fully_connected_from_dbn
from udl_med.nets.rbm import (
    BernoulliRBM,
    GaussianBernoulliRBM,
    PersistentChains,
    RBM,
    bernoulli,
    contrastive_divergence_loss,
    make_rbm,
)


def binary_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def random_rbm(visible: str, n_visible: int = 6, n_hidden: int = 4, seed: int = 0) -> RBM:
    torch.manual_seed(seed)
    rbm = make_rbm(visible, n_visible, n_hidden, init_std=0.8, learn_sigma=visible == "gaussian")
    with torch.no_grad():
        rbm.visible_bias.normal_()
        rbm.hidden_bias.normal_()
        if visible == "gaussian":
            rbm.log_sigma.uniform_(-0.3, 0.3)
    return rbm


def some_visible(visible: str, n: int, n_visible: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if visible == "bernoulli":
        return torch.bernoulli(torch.full((n, n_visible), 0.5), generator=g)
    return torch.randn(n, n_visible, generator=g)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_minus_log_sum_over_hidden_states(visible: str) -> None:
    rbm = random_rbm(visible)
    v = some_visible(visible, 5)
    hs = binary_states(rbm.n_hidden)  # all 16 hidden states
    energies = torch.stack([rbm.energy(v, h.expand(5, -1)) for h in hs], 1)  # (5, 16)
    torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-energies, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rbm.double_free_energy(v).float(), rbm.free_energy(v), atol=1e-5, rtol=1e-5)


def test_bernoulli_log_partition_agrees_over_visible_and_hidden_states() -> None:
    rbm = random_rbm("bernoulli", n_visible=6, n_hidden=4)
    over_visible = torch.logsumexp(-rbm.double_free_energy(binary_states(6)), 0)
    torch.testing.assert_close(rbm.log_partition_exact(), over_visible)  # n_hidden < n_visible: enumerates h
    wide = random_rbm("bernoulli", n_visible=4, n_hidden=7)  # enumerates v
    brute = torch.logsumexp(torch.stack([-wide.energy(v.expand(1, -1), h.expand(1, -1))[0].double()
                                         for v in binary_states(4) for h in binary_states(7)]), 0)
    torch.testing.assert_close(wide.log_partition_exact(), brute, atol=1e-5, rtol=1e-6)
    # probabilities of all visible states sum to one
    with torch.no_grad():
        total = rbm.log_likelihood_exact(binary_states(6)).exp().sum()
    assert abs(float(total) - 1.0) < 1e-9


def test_gaussian_log_partition_matches_numerical_integration() -> None:
    rbm = random_rbm("gaussian", n_visible=1, n_hidden=3)
    x = torch.linspace(-40, 40, 400_001, dtype=torch.float64).unsqueeze(1)
    integral = torch.logsumexp(-rbm.double_free_energy(x), 0) + math.log(80 / 400_000)
    assert abs(float((integral - rbm.log_partition_exact()).detach())) < 1e-6


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_ais_estimate_is_close_to_exact_log_partition(visible: str) -> None:
    rbm = random_rbm(visible, n_visible=12, n_hidden=6)
    exact = float(rbm.log_partition_exact())
    est = rbm.ais_log_partition(n_chains=100, n_betas=800, generator=torch.Generator().manual_seed(0))
    assert abs(est.log_z - exact) < max(0.05, 4 * est.log_z_std), (est, exact)


def test_fast_bernoulli_sampling_has_the_right_mean() -> None:
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).expand(20000, -1)
    samples = bernoulli(p, torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(samples.mean(0), p[0], atol=0.01, rtol=0)


def test_pseudo_likelihood_equals_conditionals_of_the_exact_joint() -> None:
    rbm = random_rbm("bernoulli", n_visible=6, n_hidden=4)
    v = some_visible("bernoulli", 5)
    log_p = lambda x: rbm.log_likelihood_exact(x)  # noqa: E731
    expected = torch.zeros(5, dtype=torch.float64)
    for i in range(6):
        flipped = v.clone()
        flipped[:, i] = 1 - flipped[:, i]
        expected += log_p(v) - torch.logaddexp(log_p(v), log_p(flipped))
    torch.testing.assert_close(rbm.pseudo_log_likelihood(v).double(), expected, atol=1e-4, rtol=1e-5)
    chunked = rbm.pseudo_log_likelihood(v, chunk_elements=8)  # one visible unit per chunk
    torch.testing.assert_close(chunked, rbm.pseudo_log_likelihood(v))


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_gibbs_shapes_values_and_reproducibility(visible: str) -> None:
    rbm = random_rbm(visible)
    v = some_visible(visible, 3)
    mean_a, sample_a = rbm.gibbs(v, 5, torch.Generator().manual_seed(3))
    mean_b, sample_b = rbm.gibbs(v, 5, torch.Generator().manual_seed(3))
    assert mean_a.shape == sample_a.shape == (3, 6)
    torch.testing.assert_close(sample_a, sample_b)
    if visible == "bernoulli":
        assert set(sample_a.unique().tolist()) <= {0.0, 1.0}
        assert 0 <= float(mean_a.min()) and float(mean_a.max()) <= 1
    with pytest.raises(ValueError, match="k must be"):
        rbm.gibbs(v, 0)


def test_persistent_chains_start_at_the_data_and_keep_their_state() -> None:
    rbm = random_rbm("bernoulli")
    chains = PersistentChains(5, 4)
    data = some_visible("bernoulli", 2)
    first = chains.advance(rbm, data, k=1, generator=torch.Generator().manual_seed(0))
    assert bool(chains.started) and first.shape == (5, 6) and chains.state.shape == (5, 4)
    assert set(chains.state.unique().tolist()) <= {0.0, 1.0}  # binary hidden states carry the chains on
    state = {k: v.clone() for k, v in chains.state_dict().items()}
    second = chains.advance(rbm, torch.ones(2, 6), k=1, generator=torch.Generator().manual_seed(0))
    restored = PersistentChains(5, 4)
    restored.load_state_dict(state)
    again = restored.advance(rbm, torch.zeros(2, 6), k=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(second, again)  # continues from the state, ignores new data


def tiny_binary_data(n: int = 64) -> torch.Tensor:
    """Two prototypes of 8 bits, each bit flipped with probability 0.05."""
    g = torch.Generator().manual_seed(0)
    protos = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 1]], dtype=torch.float32)
    x = protos[torch.randint(2, (n,), generator=g)]
    flips = torch.bernoulli(torch.full_like(x, 0.05), generator=g)
    return (x - flips).abs()


def train_cd1(rbm: RBM, data: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.SGD(rbm.parameters(), lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (16,), generator=g)]
        v_model, _ = rbm.gibbs(batch, 1, g)
        loss = contrastive_divergence_loss(rbm, batch, v_model)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_cd1_raises_exact_likelihood_and_pseudo_likelihood_and_lowers_reconstruction_error() -> None:
    torch.manual_seed(0)
    rbm = BernoulliRBM(8, 4, init_std=0.01)
    data = tiny_binary_data()
    with torch.no_grad():
        before = (rbm.log_likelihood_exact(data).mean(), rbm.pseudo_log_likelihood(data).mean(), rbm.reconstruction_error(data).mean())
    train_cd1(rbm, data, steps=300, lr=0.1)
    with torch.no_grad():
        after = (rbm.log_likelihood_exact(data).mean(), rbm.pseudo_log_likelihood(data).mean(), rbm.reconstruction_error(data).mean())
    uniform = -8 * math.log(2)  # the untrained model is close to uniform
    assert abs(float(before[0]) - uniform) < 0.1
    assert float(after[0]) > float(before[0]) + 2.0, (before, after)  # exact log-likelihood rises
    assert float(after[1]) > float(before[1]) + 2.0  # pseudo-log-likelihood rises
    assert float(after[2]) < 0.5 * float(before[2])  # reconstruction error falls


def test_gaussian_bernoulli_rbm_learns_continuous_data() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 2.0, -2.0, -2.0, 0.0, 1.0], [-2.0, 0.0, 2.0, 2.0, 1.0, -1.0]])
    data = centres[torch.randint(2, (128,), generator=g)] + 0.3 * torch.randn(128, 6, generator=g)
    data = (data - data.mean(0)) / data.std(0)  # standardised, as the guide advises
    torch.manual_seed(0)
    rbm = GaussianBernoulliRBM(6, 3, init_std=0.01)
    with torch.no_grad():
        before = (rbm.log_likelihood_exact(data).mean(), rbm.reconstruction_error(data).mean())
    train_cd1(rbm, data, steps=400, lr=0.02)
    with torch.no_grad():
        after = (rbm.log_likelihood_exact(data).mean(), rbm.reconstruction_error(data).mean())
    assert float(after[0]) > float(before[0]) + 1.0, (before, after)
    assert float(after[1]) < 0.5 * float(before[1])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="n_visible"):
        BernoulliRBM(0, 3)
    with pytest.raises(ValueError, match="n_hidden"):
        GaussianBernoulliRBM(3, 0)
    with pytest.raises(ValueError, match="valid: bernoulli, gaussian"):
        make_rbm("poisson", 3, 3)
    with pytest.raises(ValueError, match="exact log Z"):
        GaussianBernoulliRBM(3, 30).log_partition_exact()
    with pytest.raises(ValueError, match="at least one layer"):
        DBN(4, [])


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_dbn_up_pass_sampling_and_fully_connected_net(visible: str) -> None:
    torch.manual_seed(0)
    dbn = DBN(12, [6, 4, 3], visible=visible, init_std=0.5, learn_sigma=visible == "gaussian")
    assert [type(r).__name__ for r in dbn.rbms][1:] == ["BernoulliRBM", "BernoulliRBM"]
    v = some_visible(visible, 5, 12)
    top = dbn.up(v)
    assert top.shape == (5, 3)
    torch.testing.assert_close(dbn.up(v, 1), dbn.rbms[0].hidden_probs(v))
    features = fully_connected_from_dbn(dbn)
    torch.testing.assert_close(torch.sigmoid(features(v)), top, atol=1e-6, rtol=1e-5)
    classifier = fully_connected_from_dbn(dbn, num_classes=2)
    hidden = torch.nn.Sequential(*list(classifier.children())[:-1])(v)  # flatten and the hidden layers
    torch.testing.assert_close(hidden, top, atol=1e-6, rtol=1e-5)
    samples = dbn.sample(4, steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 12)
    torch.testing.assert_close(samples, dbn.sample(4, steps=3, generator=torch.Generator().manual_seed(0)))
    single = DBN(12, [5])
    assert single.sample(2, steps=2).shape == (2, 12)
