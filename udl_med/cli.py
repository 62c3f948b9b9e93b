"""The ``udl-med`` command.

Each command parses its arguments, calls one library function and prints the result.
Heavy modules (torch, monai, mlflow) are imported inside the commands, so
``udl-med --help`` is instant. A :class:`udl_med.errors.UserError` becomes one line
on stderr and exit code 2; any other exception exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: human-readable lines, or exactly one JSON object on the last line."""
    if as_json:
        print(json.dumps(result, default=str, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, dict) and value and all(isinstance(v, str | int | float) for v in value.values()):
            print(f"{key}:")  # a table, e.g. `udl-med configs`
            width = max(len(str(k)) for k in value)
            for name, text in value.items():
                print(f"  {str(name):<{width}}  {text}")
            continue
        print(f"{key}: {value}")


# --- commands ------------------------------------------------------------------------


def cmd_phantoms(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.data.phantoms import write_phantoms

    return write_phantoms(args.out, n=args.n, shape=tuple(args.shape), seed=args.seed, fmt=args.format)


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.data.io import describe

    return describe(args.input)


def cmd_convert(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.data.io import convert

    return convert(args.input, args.output)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.engine.train import train_from_file
    from udl_med.shipped import resolve_shipped

    return train_from_file(resolve_shipped("configs", args.config), overrides=args.set, resume=args.resume)


def cmd_sample(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.sample import sample_to_dir

    return sample_to_dir(args.model, n=args.n, out=args.out, label=args.label, seed=args.seed, code=args.code)


def cmd_synthesize(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.synthesize import synthesize

    return synthesize(args.model, args.out, n=args.n, n_per_class=args.n_per_class, like=args.like, seed=args.seed, overwrite=args.overwrite)


def cmd_memorization(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.metrics.memorization import memorization_check

    return memorization_check(
        args.synthetic, args.train, args.holdout, extractor=args.extractor, dims=args.dims, quantile=args.quantile, drop=args.drop, out=args.figure
    )


def cmd_augment_eval(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.evaluation.utility import utility_step

    return utility_step(
        args.real, args.synthetic, args.heldout, seeds=args.seeds, per_class_subjects=args.per_class_subjects or None, steps=args.steps
    )


def cmd_encode(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.encode import encode_to_file

    return encode_to_file(args.model, args.input, out=args.out)


def cmd_latent(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.evaluation.latent import latent_picture

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    return latent_picture(args.model, args.data, args.out, compare=args.compare, roi=args.roi, n_prior=args.n_prior, class_names=names)


def cmd_interpolate(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.latent_walk import interpolate_to_dir

    kinds = ("linear", "slerp") if args.kind == "both" else (args.kind,)
    return interpolate_to_dir(
        args.model, args.out, args.steps, source_from=args.source_from, source_to=args.source_to,
        label_from=args.from_class, label_to=args.to_class, kinds=kinds, seed=args.seed,
    )


def _named_sets(pairs: Sequence[str]) -> dict[str, str]:
    from udl_med.errors import UserError

    sets = {}
    for pair in pairs:
        name, sep, source = pair.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise UserError(f"--codes {pair!r}: write NAME=CODES.npz[:ROWS] or NAME=SCANS")
        sets[name.strip()] = source.strip()
    return sets


def cmd_arithmetic(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.errors import UserError
    from udl_med.inference.latent_walk import arithmetic_to_dir, draw_to_dir

    if args.draw is not None:
        return draw_to_dir(args.model, args.out, args.draw, seed=args.seed, label=args.label)
    if args.expr is None:
        raise UserError("give --expr \"A - B + C\" with --codes for its sets, or --draw N to draw codes to pick from")
    return arithmetic_to_dir(args.model, args.out, args.expr, _named_sets(args.codes), variants=args.variants, noise=args.noise, label=args.label, seed=args.seed)


def cmd_fid(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.metrics.compare import compare_sets

    return compare_sets(
        args.real,
        args.fake,
        extractor=args.extractor,
        dims=args.dims,
        bootstrap=args.bootstrap,
        kid_subset_size=args.kid_subset_size,
        save_real_stats=args.save_stats,
    )


def cmd_translate(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.translate import translate_path

    return translate_path(args.model, args.input, args.output, direction=args.direction)


def cmd_classify(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.classify import classify_to_file

    return classify_to_file(args.model, args.input, out=args.out)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.inference.export import export_model

    return export_model(args.model, args.out, fmt=args.format)


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.engine.pipeline import run_pipeline

    return run_pipeline(args.pipeline, overrides=args.set)


def cmd_configs(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.shipped import list_shipped

    return list_shipped()


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from udl_med.demo import run_demo

    return run_demo(args.out)


# --- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udl-med",
        description="Unsupervised deep learning for CT/MR: RBM/DBN, autoencoders, VAEs, GANs, on MONAI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        p.set_defaults(func=func)
        return p

    p = add("phantoms", cmd_phantoms, "write synthetic subjects: paired CT and MR, tissue labels, lesion class")
    p.add_argument("out", help="output folder")
    p.add_argument("--n", type=int, default=8, help="number of subjects")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 24], metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["nifti", "dicom"], default="nifti")

    p = add("info", cmd_info, "validate a volume, DICOM series, folder or manifest and describe it")
    p.add_argument("input")

    p = add("convert", cmd_convert, "convert a volume or DICOM series to NIfTI, MHA, NRRD or a DICOM series")
    p.add_argument("input")
    p.add_argument("output", help="a .nii.gz/.nii/.mha/.nrrd name, or a folder name for a DICOM series")

    overrides_help = "override a config value, e.g. --set train.steps=100 (repeatable)"
    p = add("train", cmd_train, "train the method a YAML config names; tracked in MLflow")
    p.add_argument("config", help="a config file, or the name of a shipped config (`udl-med configs`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help=overrides_help)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")

    p = add("sample", cmd_sample, "draw new images from a generative model, as NIfTI plus a PNG grid")
    p.add_argument("model", help="runs:/<id>/model, models:/<name>/<version>, or a local model folder")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--label", type=int, default=None, help="class to generate (conditional models)")
    p.add_argument("--code", default=None, metavar="SPEC", help="InfoGAN codes (model.info_codes): the categorical value, then continuous ones, e.g. 1,0.5 (_ leaves one random)")
    p.add_argument("--seed", type=int, default=0)

    p = add("synthesize", cmd_synthesize, "write a synthetic data set: NIfTI in physical units, manifest.csv, a PNG grid (atomic)")
    p.add_argument("model", help="runs:/<id>/model, models:/<name>/<version>, or a local model folder")
    p.add_argument("--out", required=True, help="the folder to create (must not exist or be empty)")
    count = p.add_mutually_exclusive_group(required=True)
    count.add_argument("--n", type=int, default=None, help="images in all (classes in turn for a conditional model)")
    count.add_argument("--n-per-class", type=int, default=None, help="images per class (conditional models)")
    p.add_argument("--like", default=None, metavar="REFERENCE", help="a scan whose spacing, orientation, size and modality the images take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthesize output in --out (only once the new one is complete)")

    p = add("memorization", cmd_memorization, "flag synthetic images that are (near-)copies of training images")
    p.add_argument("synthetic", help="synthetic images: folder, manifest or volume")
    p.add_argument("train", help="the generator's training images")
    p.add_argument("--holdout", required=True, help="real images the generator never saw (sets the distance scale)")
    p.add_argument("--extractor", default="random", help="random | encoder:PATH | inception:PATH | ... (as udl-med fid)")
    p.add_argument("--dims", default="2", choices=["2", "3"])
    p.add_argument("--quantile", type=float, default=0.01, help="held-out quantile below which an image is flagged (default 1%%)")
    p.add_argument("--drop", action="store_true", help="remove flagged images from the synthetic manifest")
    p.add_argument("--figure", default=None, metavar="DIR", help="write DIR/memorization.png (closest synthetic images over their nearest training images)")

    p = add("augment-eval", cmd_augment_eval, "does synthetic data help? the same classifier on real, real+synthetic, synthetic; tested on held-out real")
    p.add_argument("real", help="labeled real items (the few labels are drawn from it)")
    p.add_argument("synthetic", help="labeled synthetic items (udl-med synthesize output)")
    p.add_argument("--heldout", required=True, help="labeled real items of other subjects: every arm's test set")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-class-subjects", type=int, default=2, help="real subjects per class to train on (0: all)")
    p.add_argument("--steps", type=int, default=300, help="classifier steps, the same for every arm")

    p = add("encode", cmd_encode, "write one latent vector per image to an .npz file")
    p.add_argument("model")
    p.add_argument("input")
    p.add_argument("--out", required=True, help="FEATURES.npz")

    model_help = "runs:/<id>/model, models:/<name>/<version>, or a local model folder"
    p = add("latent", cmd_latent, "draw a model's latent space: codes of a labeled manifest by class, KL to the prior, silhouette, reconstruction, prior FID")
    p.add_argument("model", help=model_help + " (a model with an encoder: VAE, autoencoders, DBN)")
    p.add_argument("data", help="a labeled manifest (column label) or folder")
    p.add_argument("--out", required=True, help="folder for latent.png, latent.json, codes_<i>.npz")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="more models drawn beside MODEL in one figure")
    p.add_argument("--roi", choices=["auto", "liver", "whole"], default="auto", help="liver-centred items where label maps exist (auto), or every item of each image (whole)")
    p.add_argument("--n-prior", type=int, default=256, help="prior samples for the FID (models that sample)")
    p.add_argument("--class-names", default=None, metavar="A,B,C", help="legend names of the classes 0, 1, ... (e.g. none,hypo,hyper)")

    p = add("interpolate", cmd_interpolate, "walk between two codes (linear and spherical) of a VAE or (conditional) GAN: NIfTI per step and a PNG strip")
    p.add_argument("model", help=model_help)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True, help="codes along the path, both ends included")
    p.add_argument("--from", dest="source_from", default=None, metavar="A", help="CODES.npz[:ROW] or a scan (encoded, or projected for a GAN); default: a prior code")
    p.add_argument("--to", dest="source_to", default=None, metavar="B", help="as --from")
    p.add_argument("--from-class", type=int, default=None, help="class at the start (conditional GANs)")
    p.add_argument("--to-class", type=int, default=None, help="class at the end (conditional GANs; default: --from-class)")
    p.add_argument("--kind", choices=["both", "linear", "slerp"], default="both")
    p.add_argument("--seed", type=int, default=0, help="prior codes and the projection's starts")

    p = add("arithmetic", cmd_arithmetic, "latent vector arithmetic over named sets of codes, each averaged first, e.g. \"hyper - none + none_other\"")
    p.add_argument("model", help=model_help)
    p.add_argument("--out", required=True)
    p.add_argument("--expr", default=None, help="set names joined by + and -")
    p.add_argument("--codes", action="append", default=[], metavar="NAME=SOURCE", help="a set: CODES.npz[:ROWS] (e.g. picks/codes.npz:3,17,40) or scans (repeatable)")
    p.add_argument("--draw", type=int, default=None, metavar="N", help="instead: draw N prior codes and their images to pick sets from")
    p.add_argument("--variants", type=int, default=4, help="results written: the result and noisy copies")
    p.add_argument("--noise", type=float, default=0.25, help="std of the copies' Gaussian noise")
    p.add_argument("--label", type=int, default=None, help="class of a conditional GAN's results")
    p.add_argument("--seed", type=int, default=0)

    p = add("fid", cmd_fid, "FID and KID (with confidence intervals) between two image sets")
    p.add_argument("real", help="folder, manifest or saved statistics (.npz)")
    p.add_argument("fake", help="folder, manifest or saved statistics (.npz)")
    p.add_argument("--extractor", default="random", help="random | encoder:PATH | inception:PATH | radimagenet:PATH | medicalnet:PATH")
    p.add_argument("--dims", default="2", choices=["2", "2.5", "3"], help="slices, three middle planes, or volumes")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates for the 95%% intervals (0: none)")
    p.add_argument("--kid-subset-size", type=int, default=None, help="KID subset size (default: min(1000, set sizes))")
    p.add_argument("--save-stats", default=None, metavar="REAL_STATS.npz", help="save REAL's statistics for reuse as REAL")

    p = add("translate", cmd_translate, "translate CT to MR or MR to CT, keeping the input's geometry")
    p.add_argument("model")
    p.add_argument("input", help="volume, DICOM series folder, folder of volumes, or manifest")
    p.add_argument("output", help="a .nii.gz name, or a folder name for a DICOM series")
    p.add_argument("--direction", choices=["ct2mr", "mr2ct"], default=None)

    p = add("classify", cmd_classify, "predict a class per scan (mean of its slice or patch probabilities) into a CSV")
    p.add_argument("model", help="a model that classifies (e.g. semi_supervised_gan): folder or MLflow URI")
    p.add_argument("input", help="volume, DICOM series folder, folder of volumes, or manifest")
    p.add_argument("--out", required=True, help="PREDICTIONS.csv (written only when every image was read)")

    p = add("export", cmd_export, "export a trained model: MONAI bundle, encoder weights, or TorchScript")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--format", choices=["bundle", "classifier", "encoder", "torchscript"], default="encoder")

    p = add("pipeline", cmd_pipeline, "run a multi-step pipeline as nested MLflow runs")
    p.add_argument("pipeline", help="a pipeline file, or the name of a shipped pipeline (`udl-med configs`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help=overrides_help)

    add("configs", cmd_configs, "list the shipped configs and pipelines with their one-line descriptions")

    p = add("demo", cmd_demo, "make phantoms and train tiny models for every job, tracked in MLflow")
    p.add_argument("--out", default="demo-out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # each call logs to the current stderr (main() may be called several times in one process)
    )
    from udl_med.errors import RunError, UserError
    from udl_med.io_utils import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM cleans up half-written files as Ctrl-C does
    try:
        result = args.func(args)
    except UserError as err:
        print(f"udl-med {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunError as err:
        print(f"udl-med {args.command}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"udl-med {args.command}: interrupted", file=sys.stderr)
        return EXIT_ERROR
    _print_result(result or {}, args.json)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
