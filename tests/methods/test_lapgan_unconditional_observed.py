"""LAPGAN with ``conditional: false`` on labelled data ignores the labels (issue 26, a mutant of the seed-2 sample).

A manifest may carry labels that a run does not want to condition on: with
``conditional: false`` every level is unconditional whatever the data holds, so the
model samples without a label, refuses one word for word, and trains on batches that
carry no label.
"""

from __future__ import annotations

import pytest
import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from udl_med import keys
from udl_med.methods.base import DataSpec
from udl_med.methods.lapgan import LAPGAN, LAPGANConfig

TINY = dict(latent_dim=8, coarse_channels=(8,), fine_channels=4, fine_blocks=1, disc_channels=(4,))


def test_unconditional_lapgan_on_labelled_data_ignores_the_labels() -> None:
    torch.manual_seed(0)
    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
    method = LAPGAN(LAPGANConfig(levels=2, conditional=False, **TINY), spec)
    assert method.num_sample_classes() == 0
    with pytest.raises(ValueError) as err:
        method.eval().sample(2, label=1)
    assert str(err.value) == "this model is unconditional: it cannot sample a given label"
    unlabelled = {keys.IMAGE: batch(2, 8)[keys.IMAGE]}
    out = method.train().train_step(unlabelled, HandOpt(method.configure_optimizers()))  # no label needed
    assert {f"{keys.LOSS_G}0", f"{keys.LOSS_G}1"} <= set(out) and all(torch.isfinite(v) for v in out.values())
    assert method.eval().sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)
