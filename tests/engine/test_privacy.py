"""Nothing that identifies a patient leaves through tracking (issue 27).

A tiny pipeline (train a VAE and a CycleGAN, sample, synthesize like the patient's scan,
translate it, FID) runs on a DICOM export whose folder and headers carry a made-up
patient; then the whole MLflow store (the SQLite file, every artifact, the members of
zip files such as checkpoints and pt2 models, PNG text chunks) is searched for them.
Strict mode: none of them. Standard mode: none of the DICOM header strings.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from udl_med.engine import privacy
from udl_med.pipeline import PipelineConfig, run_pipeline_config
from udl_med.engine.privacy import Scrubber, forced
from udl_med.errors import UserError

# The made-up patient. The export folder spells name, ID and birth date differently from
# the headers, so that standard mode (which logs paths) can still be searched for every header string.
FOLDER = "DOE_JOHN_ID-4711Q_1962-03-14"
FOLDER_TOKENS = ("doe_john", "id-4711q", "1962-03-14", "DOE_JOHN")
HEADERS = {
    "PatientName": "Doe^John",
    "PatientID": "PID4711Q",
    "PatientBirthDate": "19620314",
    "AccessionNumber": "ACC55501234",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "Welby^Marcus",
    "PerformingPhysicianName": "Kildare^James",
    "StudyDescription": "CT ABDOMEN FOLLOW-UP DOE",
    "SeriesDescription": "PORTAL VENOUS PHASE JD",
}
SUBJECT = "JOHNDOE-SUBJ-0001"  # the manifest's subject column


def _png_texts(data: bytes) -> Iterator[bytes]:
    """The text of a PNG's tEXt, zTXt and iTXt chunks."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            yield key + b"\0" + zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield key + b"\0" + (zlib.decompress(text) if compressed else text)
        pos += 12 + length


def store_contents(*roots: Path) -> Iterator[tuple[str, bytes]]:
    """Every file under ``roots`` (and its name), zip members, gzip content and PNG text chunks, as bytes."""
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            where = str(path)
            yield where, str(path.relative_to(root.parent)).encode()
            yield where, data
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                for text in _png_texts(data):
                    yield f"{where} (PNG text)", text
            if data[:2] == b"\x1f\x8b":
                yield f"{where} (gzip)", gzip.decompress(data)
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    for name in archive.namelist():
                        yield f"{where}!{name}", name.encode() + b"\n" + archive.read(name)


def found(secrets: tuple[str, ...], *roots: Path) -> list[str]:
    """``secret in file`` for every secret found (case-insensitive) anywhere under ``roots``."""
    needles = [s.lower().encode() for s in secrets]
    return [f"{s.decode()} in {where}" for where, data in store_contents(*roots) for s in needles if s in data.lower()]


def write_patient_export(root: Path) -> Path:
    """Two tiny phantom subjects as DICOM under the patient's folder, every header naming the patient."""
    import csv

    import pydicom

    from udl_med.data.phantoms import write_phantoms

    write_phantoms(root, n=2, shape=(16, 16, 8), seed=0, fmt="dicom")
    for dcm in root.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        for tag, value in HEADERS.items():
            setattr(ds, tag, value)
        ds.save_as(dcm)
    manifest = root / "manifest.csv"
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "subject": f"{SUBJECT}-{i // 2}", "split": "train"} for i, r in enumerate(rows))
    return manifest


def tiny_pipeline(tmp: Path, manifest: Path, mode: str) -> PipelineConfig:
    """train VAE -> sample, synthesize like the patient's CT; train CycleGAN -> translate the CT; FID."""
    common = {"layout": "2d", "size": [16, 16], "split": "train", "eval_split": "train", "foreground_fraction": 0.0}
    train = {"steps": 3, "batch_size": 2, "log_every": 1, "eval_every": 3, "checkpoint_every": 3, "eval_items": 2, "threads": 1}
    vae = {
        "method": "vae",
        "data": {**common, "source": "unused", "modality": "CT"},
        "model": {"latent_dim": 4, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0, "traversal_dims": 2},
        "train": train,
        "tracking": {"run_name": "vae"},
    }
    cyclegan = {
        "method": "cyclegan",
        "data": {**common, "source": "unused", "pairing": "unpaired"},
        "model": {"channels": 4, "num_downsample": 1, "num_res_blocks": 1, "disc_channels": 4, "disc_layers": 1, "pool_size": 2},
        "train": {**train, "steps": 2, "eval_every": 2, "checkpoint_every": 2},
        "tracking": {"run_name": "cyclegan", "log_model": False},
    }
    for name, config in (("vae", vae), ("cyclegan", cyclegan)):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    ct = str(manifest.parent / "sub-000" / "ct")

    def train_step(name: str) -> dict[str, Any]:
        return {"name": name, "run": "train", "with": {"config": str(tmp / f"{name}.yaml"), "set": [f"data.source={manifest}", f"output_dir=${{workdir}}/{name}", f"tracking.run_name={name}"]}}

    steps = [
        train_step("vae"),
        {"name": "samples", "run": "sample", "with": {"model": "${steps.vae.model_dir}", "n": 4, "out": "${workdir}/samples"}},
        {"name": "synthetic", "run": "synthesize", "with": {"model": "${steps.vae.model_dir}", "out": "${workdir}/synthetic", "n": 2, "like": ct}},
        train_step("cyclegan"),
        {"name": "translate", "run": "translate", "with": {"model": "${steps.cyclegan.model_dir}", "input": ct, "output": "${workdir}/translated", "direction": "ct2mr", "progress": False}},
        {"name": "fid", "run": "fid", "with": {"real": str(manifest), "fake": "${workdir}/samples", "dims": "2", "bootstrap": 0}},
    ]
    return PipelineConfig(name="privacy", workdir=str(tmp / "work"), tracking={"experiment": "privacy", "privacy": mode}, steps=steps)


@pytest.fixture(scope="module", params=["strict", "standard"])
def tracked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline run in a fresh working directory with MLflow's default store there."""
    tmp = tmp_path_factory.mktemp(f"privacy-{request.param}")
    manifest = write_patient_export(tmp / FOLDER)
    previous_cwd, previous_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    # MLflow's default store in the working directory, named absolutely (MLflow caches a store per URI)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.chdir(tmp)
    try:
        result = run_pipeline_config(tiny_pipeline(tmp, manifest, request.param))
    finally:
        os.chdir(previous_cwd)
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri
    return {"mode": request.param, "tmp": tmp, "result": result, "store": [tmp / "mlflow.db", tmp / "mlruns"]}


def test_no_patient_string_reaches_the_store(tracked: dict[str, Any]) -> None:
    store = tracked["store"]
    assert store[0].is_file() and any(store[1].rglob("*.png")), "the pipeline logged nothing to search"
    assert not found(tuple(HEADERS.values()), *store)  # DICOM header strings: never, in either mode
    paths_logged = found((FOLDER, SUBJECT), *store)
    if tracked["mode"] == "strict":
        assert not paths_logged and not found(FOLDER_TOKENS, *store)
    else:
        assert paths_logged  # standard mode logs paths as before: the search would have found them


def test_strict_mode_hashes_paths_and_withholds_real_previews(tracked: dict[str, Any]) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tracked['tmp'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("privacy")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    vae = runs["vae"]
    previews = {a.path.split("/")[-1].split("_step")[0] for a in client.list_artifacts(vae.info.run_id, "previews")}
    samples_run = runs["samples"]
    assert "samples.png" in {a.path for a in client.list_artifacts(samples_run.info.run_id)}  # prior samples: always kept
    if tracked["mode"] == "strict":
        assert vae.data.params["data.source"].startswith("path#") and vae.data.params["data.source"].endswith("(4 files)")
        assert vae.data.params["tracking.privacy"] == "strict"
        assert previews == {"samples"}  # input, reconstruction, traversal (of a real scan's code): withheld
        assert "previews" not in {a.path for a in client.list_artifacts(runs["cyclegan"].info.run_id)}
        assert runs["translate"].data.params["input"].startswith("path#")
        assert runs["translate"].data.params["direction"] == "ct2mr"
        # one site, one salt: the same manifest hashes alike in every run
        assert vae.data.params["data.source"] == runs["cyclegan"].data.params["data.source"] == runs["fid"].data.params["real"]
        salt = tracked["tmp"] / privacy.SALT_FILE
        assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    else:
        assert vae.data.params["data.source"].endswith("manifest.csv") and {"input", "reconstruction", "samples"} <= previews


def test_synthetic_scans_carry_no_identity_and_translations_keep_the_study(tracked: dict[str, Any]) -> None:
    import pydicom

    work = tracked["tmp"] / "work"
    synthetic = sorted((work / "synthetic").glob("*.nii.gz"))
    assert synthetic and not found((*HEADERS.values(), FOLDER, SUBJECT), work / "synthetic")
    translated = sorted((work / "translated").glob("*.dcm"))
    ds = pydicom.dcmread(translated[0])
    assert str(ds.PatientName) == HEADERS["PatientName"] and ds.PatientID == HEADERS["PatientID"]  # a derived series of the patient's study
    assert "DERIVED" in ds.ImageType


def test_synthesize_like_a_nifti_drops_its_header_descriptions(tracked: dict[str, Any], tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from udl_med.inference.synthesize import synthesize

    # header descriptions are dropped in every mode (the run's mode does not reach synthesize)
    reference = tmp_path / "ref.nii.gz"
    image = nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.diag([0.7, 0.7, 2.5, 1.0]))
    image.header["descrip"] = b"Doe^John PID4711Q"
    image.header["aux_file"] = b"ACC55501234"
    image.header["intent_name"] = b"19620314"
    nib.save(image, reference)
    out = synthesize(str(tracked["tmp"] / "work" / "vae" / "model"), tmp_path / "syn", n=2, like=reference)
    written = nib.load(sorted((tmp_path / "syn").glob("*.nii.gz"))[0])
    np.testing.assert_allclose(written.header.get_zooms(), (0.7, 0.7, 2.5), atol=1e-4)  # geometry: the reference's
    assert out["n"] == 2 and not found(("Doe^John", "PID4711Q", "ACC55501234", "19620314"), tmp_path / "syn")


def test_scrubber_hashes_paths_only_and_standard_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(privacy.ENV_VAR, raising=False)
    (tmp_path / FOLDER).mkdir()
    for i in range(3):
        (tmp_path / FOLDER / f"IM{i}.dcm").write_bytes(b"x")
    config = {
        "data": {"source": FOLDER, "layout": "2d", "ct_window": [-1000, 1000]},
        "metrics": {"extractor": f"encoder:{tmp_path / FOLDER}"},
        "set": [f"data.source={FOLDER}/IM0.dcm", "train.steps=3"],
        "tracking": {"uri": "sqlite:///mlflow.db", "privacy": "standard"},
        "model": "runs:/0123/model",
    }
    assert Scrubber().config(config) == config and not (tmp_path / privacy.SALT_FILE).exists()
    out = Scrubber("strict").config(config)
    assert out["data"]["source"].startswith("path#") and out["data"]["source"].endswith(" (3 files)")
    assert out["data"]["layout"] == "2d" and out["data"]["ct_window"] == [-1000, 1000]
    assert out["metrics"]["extractor"] == f"encoder:{out['data']['source']}"  # relative and absolute: one hash
    assert out["set"][0].startswith("data.source=path#") and out["set"][0].endswith("(1 file)") and out["set"][1] == "train.steps=3"
    assert out["tracking"] == {"uri": "sqlite:///mlflow.db", "privacy": "strict"} and out["model"] == "runs:/0123/model"
    assert FOLDER not in str(out)
    # the salt: made once, private, the same hashes for the next run; another site's salt, other hashes
    salt = tmp_path / privacy.SALT_FILE
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    assert Scrubber("strict").text(FOLDER) == out["data"]["source"]
    other = tmp_path / "other-site"
    other.mkdir()
    assert Scrubber("strict", folder=other).text(str(tmp_path / FOLDER)) != out["data"]["source"]
    # a logged manifest: image paths and subjects hashed, the other columns kept
    (tmp_path / "m.csv").write_text(f"image,label,subject\n{FOLDER},1,{SUBJECT}\n")
    copy = Scrubber("strict").artifact(tmp_path / "m.csv", other)
    text = copy.read_text()
    assert FOLDER not in text and SUBJECT not in text and ",1,id#" in text and out["data"]["source"] in text


def test_the_site_setting_and_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(privacy.ENV_VAR, "strict")
    assert Scrubber("standard").strict  # a config cannot undo the site's setting
    monkeypatch.setenv(privacy.ENV_VAR, "relaxed")
    with pytest.raises(UserError, match="UDL_MED_PRIVACY"):
        Scrubber()
    monkeypatch.delenv(privacy.ENV_VAR)
    with forced("strict"):
        assert Scrubber().strict
    assert not Scrubber().strict and privacy.ENV_VAR not in os.environ
    assert Scrubber("strict").keep_preview("samples") and not Scrubber("strict").keep_preview("reconstruction")
    assert Scrubber().keep_preview("input")


def test_the_config_key_is_validated(phantom_manifest: Path, tmp_path: Path) -> None:
    from udl_med.engine.config import validate_config
    from udl_med.errors import ConfigError

    from .test_train import ae_config

    config = ae_config(phantom_manifest, tmp_path / "run", "sqlite:///unused.db")
    assert validate_config(config).tracking.privacy == "standard"
    config["tracking"]["privacy"] = "loose"
    with pytest.raises(ConfigError, match="tracking.privacy"):
        validate_config(config)


def test_train_privacy_flag_hashes_the_logged_config(phantom_manifest: Path, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import json

    from udl_med.cli import main

    from .test_train import ae_config

    monkeypatch.chdir(tmp_path)  # the salt is made in the working directory
    monkeypatch.delenv(privacy.ENV_VAR, raising=False)
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump(ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=2, eval_every=2, checkpoint_every=2)))
    assert main(["train", str(config), "--privacy", "strict", "--json"]) == 0
    run = mlflow.MlflowClient(tracking_uri).get_run(json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"])
    assert run.data.params["data.source"].startswith("path#") and run.data.params["output_dir"].startswith("path#")
    assert run.data.params["tracking.privacy"] == "strict" and (tmp_path / privacy.SALT_FILE).is_file()
    assert privacy.ENV_VAR not in os.environ  # the flag holds for that command only
    monkeypatch.setenv(privacy.ENV_VAR, "loose")
    assert main(["train", str(config), "--set", "output_dir=run2"]) == 2  # a bad site setting: one line, exit 2
    assert "UDL_MED_PRIVACY" in capsys.readouterr().err
