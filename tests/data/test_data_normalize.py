"""Normalisation into [-1, 1] and its exact inverse, as functions and as MONAI transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from udl_med.data.io import read_image
from udl_med.data.normalize import (
    CT_WINDOW,
    NORM_META_KEY,
    NormalizeModality,
    NormalizeModalityd,
    denormalize,
    normalize,
)

from datakit import make_series


def test_ct_round_trip_within_a_thousandth_of_a_hu(phantom_dir: Path) -> None:
    ct = read_image(phantom_dir / "sub-001" / "ct.nii.gz")
    assert CT_WINDOW[0] <= float(ct.min()) and float(ct.max()) <= CT_WINDOW[1]  # phantoms stay in the window
    x, params = normalize(ct.as_tensor(), "CT")
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.min()) == pytest.approx(-1.0)
    back = denormalize(x, params)
    assert float((back - ct.as_tensor()).abs().max()) < 1e-3


def test_real_ct_round_trip_inside_the_window(tmp_path: Path) -> None:
    folder, _, _ = make_series(tmp_path / "ct", n=3)
    ct = read_image(folder).as_tensor()
    x, params = normalize(ct, "CT", ct_window=(-1000, 1000))
    back = denormalize(x, params)
    inside = (ct >= -1000) & (ct <= 1000)
    assert inside.float().mean() > 0.9
    assert float((back - ct)[inside].abs().max()) < 1e-3
    assert float(back[ct > 1000].max()) == pytest.approx(1000.0, abs=1e-3)  # clipped at the window edge
    wide, wide_params = normalize(ct, "CT", ct_window=(-1024, 3071))  # a wider window keeps everything
    assert float((denormalize(wide, wide_params) - ct).abs().max()) < 1e-3


def test_mr_percentiles_map_to_minus_one_and_one_and_invert() -> None:
    rng = np.random.default_rng(0)
    mr = torch.from_numpy(rng.gamma(2.0, 150.0, size=(1, 20, 20, 10)).astype(np.float32))
    x, params = normalize(mr, "MR", mr_percentiles=(1.0, 99.0))
    lo, hi = np.percentile(mr.numpy(), [1.0, 99.0])
    assert params["low"] == pytest.approx(lo) and params["high"] == pytest.approx(hi)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert (x == 1.0).float().mean() == pytest.approx(0.01, abs=0.005)  # the top 1% is clipped
    back = denormalize(x, params)
    inside = (mr >= lo) & (mr <= hi)
    assert float(((back - mr)[inside]).abs().max()) < 1e-3 * hi  # the input's scale is restored
    x2, params2 = normalize(mr * 3.0, "MR", mr_percentiles=(1.0, 99.0))  # scale-free: same normalised image
    assert float((x2 - x).abs().max()) < 1e-5 and params2["high"] == pytest.approx(3 * hi, rel=1e-5)


def test_constant_image_is_still_invertible() -> None:
    x, params = normalize(torch.full((1, 4, 4), 7.0), "MR")
    assert torch.isfinite(x).all()
    assert float((denormalize(x, params) - 7.0).abs().max()) < 1e-5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality"):
        normalize(torch.zeros(1, 4, 4), "PET")
    with pytest.raises(ValueError, match="ct_window"):
        normalize(torch.zeros(1, 4, 4), "CT", ct_window=(100, -100))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_array_and_dictionary_forms_agree_and_invert(phantom_dir: Path, modality: str) -> None:
    image = read_image(phantom_dir / "sub-000" / f"{modality.lower()}.nii.gz")
    assert image.meta["modality"] == modality
    array_t = NormalizeModality()  # modality from the image's meta
    dict_t = NormalizeModalityd("image", modality_key="modality")
    a = array_t(image)
    d = dict_t({"image": image, "modality": modality})
    f, params = normalize(image.as_tensor(), modality)
    torch.testing.assert_close(a.as_tensor(), f)
    torch.testing.assert_close(d["image"].as_tensor(), f)
    assert a.meta[NORM_META_KEY] == params and isinstance(a, MetaTensor)
    torch.testing.assert_close(a.affine, image.affine)  # geometry untouched
    inv_a = array_t.inverse(a)
    inv_d = dict_t.inverse(d)["image"]
    inside = (image >= params["low"]) & (image <= params["high"])  # MR is clipped at its percentiles
    for inv in (inv_a, inv_d):
        assert float((inv - image)[inside].abs().max()) < 1e-3
        assert NORM_META_KEY not in inv.meta and len(inv.applied_operations) == len(image.applied_operations)


def test_compose_inverse(phantom_dir: Path) -> None:
    image = read_image(phantom_dir / "sub-003" / "ct.nii.gz")
    chain = Compose([NormalizeModalityd("image", modality="CT")])
    out = chain({"image": image})
    assert float(out["image"].max()) <= 1.0
    back = chain.inverse(out)["image"]
    assert float((back - image).abs().max()) < 1e-3
