"""Deep belief network: a stack of RBMs (Hinton, Osindero & Teh, Neural Computation 18, 2006).

Layer ``l`` is an RBM whose visible units are the hidden units of layer ``l - 1``; the
first layer's visibles are the (flattened) image with Bernoulli or Gaussian units, all
others are Bernoulli. Greedy layer-wise training (in ``udl_med.methods.dbn``) trains
layer ``l`` on the mean-field hidden probabilities :meth:`DBN.up` gives of the data.

As a generative model the top two layers form an undirected associative memory and the
lower layers are directed top-down: :meth:`DBN.sample` runs Gibbs chains in the top RBM
and then one stochastic down pass. As a discriminative model the same weights initialise
a feed-forward network with sigmoid units, a MONAI ``FullyConnectedNet``
(:func:`fully_connected_from_dbn`), which is then fine-tuned with labels (Hinton &
Salakhutdinov, Science 313, 2006).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import FullyConnectedNet
from torch import Tensor, nn

from udl_med.nets.rbm import RBM, make_rbm

__all__ = ["DBN", "fully_connected_from_dbn", "fully_connected_kwargs"]

ACT = "SIGMOID"  # the DBN's units are logistic, so the feed-forward net's are too


class DBN(nn.Module):
    """A stack of RBMs ``n_visible -> hidden[0] -> ... -> hidden[-1]``.

    Args:
        n_visible: visible units of the first layer (pixels times channels).
        hidden: hidden units of each layer, bottom to top.
        visible: visible type of the first layer, ``bernoulli`` or ``gaussian``.
        init_std: standard deviation of the initial weights.
        learn_sigma: learn the first layer's Gaussian standard deviations.

    Raises:
        ValueError: no hidden layer, or a bad size or visible type.
    """

    def __init__(
        self,
        n_visible: int,
        hidden: Sequence[int],
        visible: str = "bernoulli",
        init_std: float = 0.01,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("hidden must name at least one layer size")
        sizes = [n_visible, *hidden]
        self.sizes = tuple(sizes)
        self.rbms = nn.ModuleList(
            make_rbm(visible if i == 0 else "bernoulli", sizes[i], sizes[i + 1], init_std, learn_sigma and i == 0)
            for i in range(len(hidden))
        )

    @property
    def n_layers(self) -> int:
        return len(self.rbms)

    def layer(self, index: int) -> RBM:
        return self.rbms[index]

    def up(self, v: Tensor, n_layers: int | None = None) -> Tensor:
        """Mean-field up pass through the first ``n_layers`` RBMs (default all): ``(B, sizes[n_layers])``."""
        h = v
        for rbm in list(self.rbms)[: self.n_layers if n_layers is None else n_layers]:
            h = rbm.hidden_probs(h)
        return h

    def forward(self, v: Tensor) -> Tensor:
        return self.up(v)

    @torch.no_grad()
    def sample(self, n: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` visible vectors: ``steps`` Gibbs steps in the top RBM, then a down pass.

        The top chain starts from fair coins; each lower layer samples its visibles from
        ``p(v | h)`` of the layer above, and the first layer returns ``E[v | h]``.

        Returns:
            ``(n, n_visible)`` visible means.
        """
        top = self.rbms[-1]
        start = torch.bernoulli(torch.full((n, top.n_visible), 0.5, device=top.weight.device), generator=generator)
        top_mean, h = top.gibbs(start, steps, generator)
        if self.n_layers == 1:
            return top_mean
        for rbm in reversed(list(self.rbms)[1:-1]):
            _, h = rbm.sample_v(h, generator)
        return self.rbms[0].visible_mean(h)


def fully_connected_kwargs(dbn: DBN, num_classes: int = 0, dropout: float | None = None) -> dict:
    """Constructor arguments of the ``FullyConnectedNet`` that :func:`fully_connected_from_dbn` builds."""
    hidden = list(dbn.sizes[1:])
    if num_classes > 0:
        return {"in_channels": dbn.sizes[0], "out_channels": num_classes, "hidden_channels": hidden, "act": ACT, "dropout": dropout}
    return {"in_channels": dbn.sizes[0], "out_channels": hidden[-1], "hidden_channels": hidden[:-1], "act": ACT, "dropout": dropout}


@torch.no_grad()
def copy_dbn_weights(dbn: DBN, net: FullyConnectedNet) -> None:
    """Copy the RBMs' up weights into ``net``'s layers (``hidden_i``, and ``output`` when it is the top RBM).

    ``sigmoid(hidden_i(h)) == rbm_i.hidden_probs(h)``: Gaussian visibles' ``1 / sigma``
    goes into the first layer's weights.
    """
    layers = [getattr(net, f"hidden_{i}")[0] for i in range(len(net.hidden_channels))] + [net.output]
    for linear, rbm in zip(layers, dbn.rbms, strict=False):
        if linear.weight.shape != rbm.weight.shape:
            raise ValueError(f"layer of shape {tuple(linear.weight.shape)} cannot take RBM weights {tuple(rbm.weight.shape)}")
        linear.weight.copy_(rbm.effective_weight())
        linear.bias.copy_(rbm.hidden_bias)


def fully_connected_from_dbn(dbn: DBN, num_classes: int = 0, dropout: float | None = None) -> FullyConnectedNet:
    """A MONAI ``FullyConnectedNet`` with sigmoid units whose layers take the DBN's weights.

    ``num_classes > 0``: a classifier ``n_visible -> hidden... -> num_classes`` whose
    output layer keeps PyTorch's random initialisation (to be fine-tuned).
    ``num_classes == 0``: the feature network, whose output is the top layer's logits
    (``sigmoid(net(v)) == dbn.up(v)``).
    """
    net = FullyConnectedNet(**fully_connected_kwargs(dbn, num_classes, dropout))
    copy_dbn_weights(dbn, net)
    return net.to(dbn.rbms[0].weight.device)
