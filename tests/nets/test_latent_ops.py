"""Interpolation, latent arithmetic and projection (udl_med.nets.latent_ops)."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.nets.latent_ops import evaluate_expression, interpolate, lerp, parse_expression, project, slerp


def test_slerp_keeps_the_norm_profile_of_the_prior_and_lerp_sags() -> None:
    d, steps = 64, 11
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, d, generator=g, dtype=torch.float64), torch.randn(200, d, generator=g, dtype=torch.float64)
    s = interpolate(a, b, steps, "slerp")  # (steps, 200, d)
    l = interpolate(a, b, steps, "linear")
    ends = 0.5 * (a.norm(dim=1) + b.norm(dim=1))  # both near sqrt(d)
    s_norm, l_norm = s.norm(dim=2), l.norm(dim=2)  # (steps, 200)
    # slerp: every step stays within 3% of the ends' norm (typical set: sqrt(d) +- O(1))
    assert float(((s_norm - ends) / ends).abs().max()) < 0.03 + float(((a.norm(dim=1) - b.norm(dim=1)).abs() / ends).max())
    assert float(s_norm[steps // 2].mean()) == pytest.approx(math.sqrt(d), rel=0.05)
    # linear: the middle sags to about sqrt(d / 2) for independent codes
    assert float(l_norm[steps // 2].mean()) == pytest.approx(math.sqrt(d / 2), rel=0.07)
    # both start at a and end at b
    for path in (s, l):
        torch.testing.assert_close(path[0], a)
        torch.testing.assert_close(path[-1], b)


def test_slerp_of_equal_norm_codes_by_hand_and_the_parallel_fallback() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    torch.testing.assert_close(lerp(a, b, torch.tensor([0.5]))[0], torch.tensor([0.5, 0.5]))
    same = slerp(a, 2 * a, torch.tensor([0.5]))[0]  # parallel: the linear path
    torch.testing.assert_close(same, torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="steps"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="unknown interpolation"):
        interpolate(a, b, 3, "cubic")


def test_an_expression_parses_and_averages_each_set_first() -> None:
    e = parse_expression("hyper - none + none_other")
    assert e.terms == ((1, "hyper"), (-1, "none"), (1, "none_other"))
    assert parse_expression("-a+b").terms == ((-1, "a"), (1, "b"))
    sets = {
        "hyper": torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]]),  # mean (2, 1)
        "none": torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 5.0]]),  # mean (0, 2)
        "none_other": torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 4.0]]),  # mean (1, 2)
    }
    torch.testing.assert_close(evaluate_expression(e, sets), torch.tensor([3.0, 1.0], dtype=torch.float64))
    for bad in ("", "a -", "a b", "a * b", "2a"):
        with pytest.raises(ValueError):
            parse_expression(bad)
    with pytest.raises(ValueError, match="at least 3 codes"):
        evaluate_expression(e, {**sets, "hyper": sets["hyper"][:2]})
    with pytest.raises(ValueError, match="no codes for none_other"):
        evaluate_expression(e, {"hyper": sets["hyper"], "none": sets["none"]})


def test_projection_finds_the_code_of_a_generated_sample_back() -> None:
    from udl_med.nets.mlp_gan import MLPGenerator

    torch.manual_seed(0)
    mlp = MLPGenerator(8, 256, hidden=(64, 64), norm="none", output="tanh").eval()
    for p in mlp.parameters():
        p.requires_grad_(False)

    def g(z: torch.Tensor) -> torch.Tensor:
        return mlp(z).reshape(-1, 1, 16, 16)

    z_true = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = g(z_true)
    found = project(g, target, 8, steps=400, restarts=4, lr=0.05, generator=torch.Generator().manual_seed(2))
    variance = float(target.var())
    assert float(found.error.max()) < 0.02 * variance  # the image is found back
    with torch.no_grad():
        far = float(((g(torch.randn(3, 8, generator=torch.Generator().manual_seed(5))) - target) ** 2).mean())
    assert float(found.error.max()) < 0.05 * far  # far better than another sample of the prior
    cos = torch.nn.functional.cosine_similarity(found.z, z_true, dim=1)
    assert float(cos.min()) > 0.9  # and so is the code
