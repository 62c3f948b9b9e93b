"""`udl-med demo`: every job at tiny scale on phantoms, as one pipeline tracked in MLflow.

The demo is an ordinary pipeline (see ``udl_med.pipeline``) built here so that
it needs no file besides the shipped configs (:mod:`udl_med.shipped`): it makes phantoms, pretrains an
autoencoder and probes its exported encoder, samples a VAE and a tiny DCGAN and judges the
samples with FID/KID, synthesizes liver-centred CT crops per class with a tiny LAPGAN and
checks them for copies of training crops, trains a K+1 semi-supervised GAN and its supervised-only baseline and
classifies held-out subjects with both, trains a small CycleGAN and translates a held-out CT to MR, and trains an RBM.
Each step is a nested MLflow run under one ``demo`` run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from udl_med.errors import UserError
from udl_med.io_utils import atomic_write_text
from udl_med.pipeline import PipelineConfig, run_pipeline_config
from udl_med.shipped import find_shipped

log = logging.getLogger(__name__)
MARKER = ".udl-med-demo"  # the demo only ever clears a folder it made itself
KPLUS1_STEPS = 400  # the K+1 pair (the benchmark trains 1,000; 400 and 1,000 measured alike, README: semi-supervised)


def _config(name: str) -> str:
    """A shipped config (package data in a wheel, ``configs/`` in a checkout)."""
    path = find_shipped("configs", name)
    if path is None:
        raise UserError(f"{name}: demo config missing from the shipped configs (`udl-med configs` lists them)")
    return str(path)


def _train(name: str, config: str, steps: int, extra: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "run": "train",
        "with": {
            "config": _config(config),
            "set": [
                "data.source=${workdir}/phantoms/manifest.csv",
                f"output_dir=${{workdir}}/runs/{name}",
                f"tracking.run_name=demo-{name}",
                f"train.steps={steps}",
                "train.threads=1",  # tiny networks: one thread is faster than two fighting
                *(extra or []),
            ],
        },
    }


def demo_steps() -> list[dict[str, Any]]:
    """The demo pipeline's steps, smallest settings that still show each job working."""
    fid = {"real": "${steps.real_ct.manifest}", "dims": "2"}
    crops = {"source": "${workdir}/phantoms/manifest.csv", "window": [-200, 300], "crop": [32, 32]}
    kplus1_crops = {"source": "${workdir}/heldout/manifest.csv", "window": [-200, 300], "crop": [16, 16]}
    kplus1_set = ["data.source=${steps.kplus1_crops.manifest}", f"model.consistency_rampup_steps={KPLUS1_STEPS // 4}", f"train.eval_every={KPLUS1_STEPS}", f"train.checkpoint_every={KPLUS1_STEPS}"]
    return [
        {"name": "phantoms", "run": "phantoms", "with": {"out": "${workdir}/phantoms", "n": 24, "shape": [48, 48, 24], "seed": 0, "fmt": "nifti"}},
        {"name": "real_ct", "run": "select", "with": {"source": "${workdir}/phantoms/manifest.csv", "out": "${workdir}/real_ct.csv", "modality": "CT", "split": "test"}},
        {"name": "real_mr", "run": "select", "with": {"source": "${workdir}/phantoms/manifest.csv", "out": "${workdir}/real_mr.csv", "modality": "MR", "split": "test"}},
        # Job 1: pretrain an encoder, export it, probe it on the lesion class.
        _train("autoencoder", "ae2d-phantom.yaml", 400, ["train.eval_every=200", "train.checkpoint_every=200"]),
        {"name": "encoder", "run": "export", "with": {"model": "${steps.autoencoder.model_dir}", "out": "${workdir}/encoder", "fmt": "encoder"}},
        # Probed on the lesion class of other subjects (other seed): 150 are needed so that
        # fine-tuning on 10% of them sees more than a couple of subjects per class.
        {"name": "heldout", "run": "phantoms", "with": {"out": "${workdir}/heldout", "n": 150, "shape": [64, 64, 16], "seed": 1, "fmt": "nifti"}},
        {"name": "probe", "run": "probe", "with": {"encoder": "${steps.encoder.out}", "data": "${steps.heldout.manifest}", "seed": 0}},
        # Job 2: synthesize: sample a VAE, judge the samples.
        _train("vae", "vae2d-phantom.yaml", 400, ["data.modality=CT", "train.eval_every=200", "train.checkpoint_every=200"]),
        {"name": "samples", "run": "sample", "with": {"model": "${steps.vae.model_dir}", "n": 32, "out": "${workdir}/samples"}},
        {"name": "fid_samples_random", "run": "fid", "with": {**fid, "fake": "${workdir}/samples", "extractor": "random"}},
        {"name": "fid_samples_encoder", "run": "fid", "with": {**fid, "fake": "${workdir}/samples", "extractor": "encoder:${workdir}/encoder"}},
        # Job 2, adversarial: a tiny DCGAN, its sample grid and FID against the held-out CT.
        _train("dcgan", "dcgan-tiny.yaml", 400, ["train.sample_eval=null"]),
        {"name": "dcgan_samples", "run": "sample", "with": {"model": "${steps.dcgan.model_dir}", "n": 64, "out": "${workdir}/dcgan_samples"}},
        {"name": "fid_dcgan", "run": "fid", "with": {**fid, "fake": "${workdir}/dcgan_samples", "extractor": "random"}},
        # Job 2, class-conditional, as `udl-med pipeline synthesize` does it: a tiny LAPGAN on
        # liver-centred 32x32 crops of the slices that show their lesion class (soft-tissue
        # window -200..300 HU: where synthetic data helps a classifier that does not augment), a
        # synthetic set per class, and the check that it holds no copies of training crops.
        {"name": "lesion_slices", "run": "lesion_slices", "with": {**crops, "out": "${workdir}/lesion_slices", "split": "train"}},
        {"name": "heldout_slices", "run": "lesion_slices", "with": {**crops, "out": "${workdir}/heldout_slices", "split": "test"}},
        _train("lapgan", "lapgan-tiny.yaml", 200, ["data.source=${steps.lesion_slices.manifest}", "data.eval_split=null", "data.ct_window=[-200, 300]"]),
        {"name": "synthetic", "run": "synthesize", "with": {"model": "${steps.lapgan.model_dir}", "out": "${workdir}/synthetic", "n_per_class": 16, "overwrite": True}},
        {"name": "memorization", "run": "memorization", "with": {"synthetic": "${steps.synthetic.out}", "train": "${steps.lesion_slices.manifest}", "holdout": "${steps.heldout_slices.manifest}", "out": "${workdir}/memorization"}},
        # Job 3: translate CT to MR with a CycleGAN trained on unpaired halves.
        _train("cyclegan", "cyclegan-tiny.yaml", 300),
        {"name": "translate", "run": "translate", "with": {"model": "${steps.cyclegan.model_dir}", "input": "${steps.real_ct.manifest}", "output": "${workdir}/translated", "direction": "ct2mr"}},
        {"name": "fid_translated", "run": "fid", "with": {"real": "${steps.real_mr.manifest}", "fake": "${workdir}/translated", "dims": "2", "extractor": "random"}},
        # Semi-supervised, as `udl-med pipeline semi-supervised` does it: a K+1 GAN from the labels
        # of 2 subjects per class and every other training subject's crops unlabeled, next to the
        # same discriminator on the labels alone, both classifying the crops of held-out subjects
        # (accuracy side by side: kplus1_vs_supervised_only). Liver-centred 16x16 crops in the
        # soft-tissue window, cut from the 150 held-out phantoms (their train split to learn
        # from, their test split to judge): on whole slices neither arm learned (0.34 vs 0.33).
        {"name": "kplus1_crops", "run": "lesion_slices", "with": {**kplus1_crops, "out": "${workdir}/kplus1_crops"}},
        {"name": "kplus1_heldout_crops", "run": "lesion_slices", "with": {**kplus1_crops, "out": "${workdir}/kplus1_heldout_crops", "split": "test"}},
        _train("kplus1", "kplus1-2d-liver-crops.yaml", KPLUS1_STEPS, kplus1_set),
        _train("supervised_only", "kplus1-2d-liver-crops.yaml", KPLUS1_STEPS, [*kplus1_set, "model.unsupervised_weight=0"]),
        {"name": "kplus1_classify", "run": "classify", "with": {"model": "${steps.kplus1.model_dir}", "input": "${steps.kplus1_heldout_crops.manifest}", "out": "${workdir}/kplus1_predictions.csv"}},
        {"name": "supervised_only_classify", "run": "classify", "with": {"model": "${steps.supervised_only.model_dir}", "input": "${steps.kplus1_heldout_crops.manifest}", "out": "${workdir}/supervised_only_predictions.csv"}},
        # The energy-based corner: an RBM with its filter grid.
        _train("rbm", "rbm-tiny.yaml", 300),
    ]


def run_demo(out: str | Path = "demo-out", privacy: str | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` (cleared first if an earlier demo made it); return a summary.

    ``privacy``: ``strict`` logs as :mod:`udl_med.engine.privacy` says (paths hashed,
    previews of real scans withheld); None or ``standard``: as the site's ``UDL_MED_PRIVACY`` says.
    """
    out = Path(out)
    if out.exists():
        if not (out / MARKER).exists():
            raise UserError(f"{out}: exists and was not made by udl-med demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_text(out / MARKER, "made by udl-med demo; cleared by the next demo\n")
    pipeline = PipelineConfig(name="demo", workdir=str(out), tracking={"experiment": "udl-med-demo", "privacy": privacy or "standard"}, steps=demo_steps())
    result = run_pipeline_config(pipeline, source="udl-med demo")
    uri = result["tracking_uri"]
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    summary = {
        "results": str(out.resolve()),
        "mlflow_run_id": result["run_id"],
        "look_at_it": uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}",
    }
    shown = ("linear_probe/", "finetune/", "chance", ".fid", ".kid", "eval/recon_mse", "eval/mean_image_mse", "memorization.rate", "translate.translated", "_classify.accuracy")
    summary.update({k: v for k, v in result.items() if any(part in k for part in shown) and "_ci_" not in k})
    summary["kplus1_vs_supervised_only"] = kplus1_side_by_side(result)
    return summary


def kplus1_side_by_side(result: dict[str, Any]) -> dict[str, Any]:
    """The K+1 classifier next to the same discriminator on the labels alone, on the held-out subjects."""
    out: dict[str, Any] = {}
    for metric in ("accuracy", "balanced_accuracy", "macro_auc"):
        k, s = result.get(f"kplus1_classify.{metric}"), result.get(f"supervised_only_classify.{metric}")
        if k is not None and s is not None:
            out[metric] = {"kplus1": round(float(k), 4), "supervised_only": round(float(s), 4), "gain": round(float(k) - float(s), 4)}
    return out
