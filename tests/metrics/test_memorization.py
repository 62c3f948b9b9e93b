"""Memorisation check: planted copies (exact, flipped, slightly noisy) are flagged; new real images are not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from udl_med.metrics.memorization import memorization_tensors, nearest, with_flips


def _images(n: int, seed: int, spatial_dims: int = 2, size: int = 16) -> torch.Tensor:
    """Random 'anatomies': a blurred noise field plus a disc of random centre and radius, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, *([size] * spatial_dims), generator=g)
    kernel = torch.ones(1, 1, *([3] * spatial_dims)) / 3**spatial_dims
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    field = conv(conv(noise, kernel, padding=1), kernel, padding=1)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij"))
    centre = torch.rand(n, spatial_dims, generator=g) - 0.5
    radius = 0.3 + 0.4 * torch.rand(n, generator=g)
    dist = (grid[None] - centre.view(n, spatial_dims, *([1] * spatial_dims))).pow(2).sum(1, keepdim=True).sqrt()
    disc = (dist < radius.view(n, *([1] * (spatial_dims + 1)))).float()
    return (0.6 * disc + 0.5 * field - 0.3).clamp(-1, 1)


def test_flips_and_nearest() -> None:
    x = torch.arange(8.0).view(2, 1, 2, 2)
    flipped, index = with_flips(x)
    assert flipped.shape == (8, 1, 2, 2) and index.tolist() == [0, 1] * 4
    d, where = nearest(x.flip(-1)[:1], flipped)
    assert d[0] == 0 and index[where[0]] == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_planted_copies_are_flagged_and_new_real_images_are_not(spatial_dims: int) -> None:
    size, n_new = (16, 60) if spatial_dims == 2 else (8, 30)
    train = _images(120, 0, spatial_dims, size)
    holdout = _images(200, 1, spatial_dims, size)
    new = _images(n_new, 2, spatial_dims, size)  # new real images: what a good generator would make
    g = torch.Generator().manual_seed(3)
    copies = train[:5]
    flipped = train[5:10].flip(-1)
    noisy = (train[10:15] + 0.02 * torch.randn(train[10:15].shape, generator=g)).clamp(-1, 1)
    synthetic = torch.cat([new, copies, flipped, noisy])
    result = memorization_tensors(synthetic, train, holdout, "random", quantile=0.01)
    planted = set(range(n_new, n_new + 15))
    flagged = set(result["flagged_index"])
    assert planted <= flagged  # every exact, flipped and noisy copy
    false_alarms = len(flagged - planted) / n_new
    assert false_alarms <= 0.05  # new real images: about the 1% per space the rule allows
    assert result["rate"] == pytest.approx(len(flagged) / len(synthetic))
    assert result["holdout_rate"] <= 0.05  # the two-fold false-alarm estimate on held-out real images
    assert result["stated_rate"] == pytest.approx(2 * 0.01)  # two spaces, 1% each
    assert result["synthetic"].intensity[n_new] == pytest.approx(0.0, abs=1e-5)


def test_without_flips_a_flipped_copy_can_escape() -> None:
    train, holdout = _images(80, 0), _images(80, 1)
    flipped = train[:5].flip(-1)
    with_f = memorization_tensors(flipped, train, holdout, "random")
    without = memorization_tensors(flipped, train, holdout, "random", flips=False)
    assert with_f["rate"] == 1.0 and without["rate"] < 1.0


def test_memorization_check_on_files_with_drop(tmp_path: Path) -> None:
    from monai.data import MetaTensor

    from udl_med.cli import main
    from udl_med.data.io import list_images, write_image
    from udl_med.inference.synthesize import write_synthetic_manifest

    def write_set(folder: Path, images: torch.Tensor, synthetic: bool = False) -> None:
        rows = []
        for i, x in enumerate(images):
            hu = (x[0].unsqueeze(-1) + 1) / 2 * 2000 - 1000  # a one-slice CT volume, default window
            write_image(MetaTensor(hu[None], meta={"modality": "CT"}), folder / f"img_{i:03d}.nii.gz")
            rows.append({"image": f"img_{i:03d}.nii.gz", "label": 0, "modality": "CT", "subject": f"s{i}", "synthetic": int(synthetic)})
        write_synthetic_manifest(folder / "manifest.csv", rows)

    train, holdout = _images(60, 0), _images(60, 1)
    synthetic = torch.cat([_images(20, 2), train[:3]])
    for name, images in (("train", train), ("holdout", holdout), ("synth", synthetic)):
        write_set(tmp_path / name, images, name == "synth")
    code = main(["memorization", str(tmp_path / "synth"), str(tmp_path / "train"), "--holdout", str(tmp_path / "holdout"), "--drop", "--figure", str(tmp_path / "fig"), "--json"])
    assert code == 0
    kept = {r.path.name for r in list_images(tmp_path / "synth" / "manifest.csv")}
    assert not kept & {"img_020.nii.gz", "img_021.nii.gz", "img_022.nii.gz"}  # the copies are dropped
    assert len(kept) >= 18
    assert (tmp_path / "fig" / "memorization.png").is_file()
