"""ADA's overfitting signal for each objective, observed (issue 26, a mutant of the d_side sample, seed 5).

ADA tunes p from r_t = E[sign(D(x_real))]: the sign must be taken about D's decision
boundary, which for least squares is the midpoint of its two targets (0.5, or 0.45 with
label smoothing 0.9), not 0; logits and hinge scores are centred already.
"""

from __future__ import annotations

import pytest
import torch

from udl_med.losses.gan import GANLoss
from udl_med.methods.adversarial import Adversary


@pytest.mark.parametrize(("mode", "real_label", "centre"), [("lsgan", 1.0, 0.5), ("lsgan", 0.9, 0.45), ("non-saturating", 1.0, 0.0), ("hinge", 1.0, 0.0)])
def test_decision_centres_scores_on_the_objectives_boundary(mode: str, real_label: float, centre: float) -> None:
    scores = torch.tensor([[-1.0], [0.2], [0.46], [0.6], [2.0]])
    decision = Adversary(GANLoss(mode, real_label=real_label)).decision(scores)
    torch.testing.assert_close(decision, scores - centre)
    assert torch.sign(decision).tolist() == torch.sign(scores - centre).tolist()
