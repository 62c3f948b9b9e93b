"""The one table of actions: every ``udl-med`` command and every pipeline step kind, declared once.

An :class:`Action` is one thing a user can do (nnU-Net v2's one entry point per action):
its name, its arguments (:class:`Arg`: name, type, default, help, whether it names an
input), whether it is a command, a pipeline step kind or both, and the library function
it calls. :mod:`udl_med.cli` builds its subcommands from :data:`ACTIONS`,
:mod:`udl_med.pipeline` its step kinds, so a new action is written here once.

An argument's ``name`` is the library function's keyword, a pipeline step's ``with:``
key and the keyword of :meth:`Action.__call__`; ``flag`` is only its spelling on the
command line where that differs (``--format`` for ``fmt``). Arguments with
``cli=False`` are pipeline and Python settings the command line does not offer. A test
checks that every action's arguments are its library function's parameters, with the
same defaults.

``function`` is a small function that imports the library function and returns it: the
import graph sees the edge, and ``udl-med --help`` imports no torch, MONAI or MLflow.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from udl_med import keys
from udl_med.io_utils import check_writable
from udl_med.shipped import list_shipped, resolve_shipped

__all__ = ["REQUIRED", "Arg", "Action", "ACTIONS", "commands", "step_kinds", "train_config"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an argument that must be given


@dataclass(frozen=True)
class Arg:
    """One argument of an action.

    Args:
        name: the library function's keyword (a step's ``with:`` key).
        help: one line, without the default (the command line adds it).
        type: parses one command-line string (None for ``kind="flag"``).
        default: the library function's default; :data:`REQUIRED` if it has none.
        positional: a positional argument on the command line.
        flag: the command-line spelling where it is not ``--name-with-dashes`` (a
            positional's shown name where it is not ``name``).
        kind: ``value``; ``flag`` (``store_true``); ``append`` (repeatable, a list).
        nargs, choices, metavar: as argparse's.
        input: names an existing input (a path in a pipeline file resolves against the file).
        shipped: the input may also name a shipped file of this kind (``configs``, ``pipelines``).
        cli: offered on the command line (False: pipeline steps and Python only).
        group: command line only: exactly one argument of each group must be given.
        parse: turns the command-line value into the library's (e.g. ``0`` into None).
        output: names an output: ``file``, ``folder`` or ``path`` (either); checked to be
            writable before the action does any work (:func:`udl_med.io_utils.check_writable`).
    """

    name: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = REQUIRED
    positional: bool = False
    flag: str | None = None
    kind: Literal["value", "flag", "append"] = "value"
    nargs: int | str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | tuple[str, ...] | None = None
    input: bool = False
    shipped: str | None = None
    cli: bool = True
    group: str | None = None
    parse: Callable[[Any], Any] | None = None
    output: Literal["file", "folder", "path"] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Action:
    """One action: a ``udl-med`` command (``command``), a pipeline step kind (``step``), or both.

    Args:
        name: the action's name: the step kind (``run: NAME``) and, later, the Python API's.
        help: one line for ``udl-med --help`` and the command's description.
        function: imports the library function and returns it.
        args: the library function's parameters, in its order.
        command: the subcommand's name (None: not a command).
        step: a pipeline step kind.
        own_run: as a step, the function opens its own MLflow run (``train``) instead of
            being wrapped in a nested one.
    """

    name: str
    help: str
    function: Callable[[], Callable[..., dict[str, Any]]]
    args: tuple[Arg, ...] = ()
    command: str | None = None
    step: bool = False
    own_run: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The arguments that name existing inputs (relative paths in a pipeline file resolve against it)."""
        return tuple(a.name for a in self.args if a.input)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args if a.required)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The arguments that name outputs (checked to be writable before the action runs)."""
        return tuple(a.name for a in self.args if a.output)

    @property
    def signature(self) -> inspect.Signature:
        """The keyword-only signature of :meth:`__call__` (what a Python API function ``udl_med.<name>`` shows)."""
        return inspect.Signature(
            [inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY, default=inspect.Parameter.empty if a.required else a.default) for a in self.args]
        )

    def __call__(self, **kwargs: Any) -> dict[str, Any]:
        """Run the action: the library function with these keyword arguments (the others keep their defaults)."""
        unknown = sorted(set(kwargs) - set(self.names))
        if unknown:
            raise TypeError(f"{self.name}: unknown argument(s) {', '.join(unknown)}; valid: {', '.join(self.names)}")
        for arg in self.args:  # an output that cannot be written is refused before any work
            if arg.output and kwargs.get(arg.name) is not None:
                check_writable(kwargs[arg.name], arg.output)
        return self.function()(**kwargs)


def _zero_is_none(value: int | None) -> int | None:
    return value or None


def train_config(
    config: str,
    set: list[str] | tuple[str, ...] = (),  # noqa: A002 - the step's key
    resume: bool = False,
    privacy: str | None = None,
) -> dict[str, Any]:
    """``udl-med train CONFIG|NAME [--set key.path=value]... [--resume] [--privacy strict]``: a config file or a shipped config's name."""
    from udl_med.engine.privacy import forced  # lazy: keeps udl-med --help fast
    from udl_med.engine.train import train_from_file  # lazy: keeps udl-med --help fast

    with forced(privacy):
        return train_from_file(resolve_shipped("configs", config), overrides=list(set or ()), resume=resume)


# --- where each action's library function lives -------------------------------------


def _phantoms() -> Callable[..., dict[str, Any]]:
    from udl_med.data.phantoms import write_phantoms  # lazy: keeps udl-med --help fast

    return write_phantoms


def _info() -> Callable[..., dict[str, Any]]:
    from udl_med.data.inspect import describe  # lazy: keeps udl-med --help fast

    return describe


def _convert() -> Callable[..., dict[str, Any]]:
    from udl_med.data.inspect import convert  # lazy: keeps udl-med --help fast

    return convert


def _select() -> Callable[..., dict[str, Any]]:
    from udl_med.data.manifest import select_images  # lazy: keeps udl-med --help fast

    return select_images


def _train() -> Callable[..., dict[str, Any]]:
    return train_config


def _sample() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.sample import sample_to_dir  # lazy: keeps udl-med --help fast

    return sample_to_dir


def _latent() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.latent import latent_picture  # lazy: keeps udl-med --help fast

    return latent_picture


def _interpolate() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.latent_walk import interpolate_to_dir  # lazy: keeps udl-med --help fast

    return interpolate_to_dir


def _arithmetic() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.latent_walk import arithmetic_to_dir  # lazy: keeps udl-med --help fast

    return arithmetic_to_dir


def _synthesize() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.synthesize import synthesize  # lazy: keeps udl-med --help fast

    return synthesize


def _encode() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.encode import encode_to_file  # lazy: keeps udl-med --help fast

    return encode_to_file


def _translate() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.translate import translate_path  # lazy: keeps udl-med --help fast

    return translate_path


def _classify() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.classify import classify_to_file  # lazy: keeps udl-med --help fast

    return classify_to_file


def _export() -> Callable[..., dict[str, Any]]:
    from udl_med.inference.export import export_model  # lazy: keeps udl-med --help fast

    return export_model


def _fid() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.compare import compare_sets  # lazy: keeps udl-med --help fast

    return compare_sets


def _memorization() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.memorization import memorization_check  # lazy: keeps udl-med --help fast

    return memorization_check


def _probe() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.probe import probe_step  # lazy: keeps udl-med --help fast

    return probe_step


def _evaluate_translation() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.translation import evaluate_translation_step  # lazy: keeps udl-med --help fast

    return evaluate_translation_step


def _lesion_slices() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.utility import lesion_slices  # lazy: keeps udl-med --help fast

    return lesion_slices


def _fid_gate() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.synthesis import fid_gate_step  # lazy: keeps udl-med --help fast

    return fid_gate_step


def _utility() -> Callable[..., dict[str, Any]]:
    from udl_med.evaluation.utility import utility_step  # lazy: keeps udl-med --help fast

    return utility_step


def _pipeline() -> Callable[..., dict[str, Any]]:
    from udl_med.pipeline import run_pipeline  # lazy: the pipeline module imports this table

    return run_pipeline


def _configs() -> Callable[..., dict[str, Any]]:
    return list_shipped


def _demo() -> Callable[..., dict[str, Any]]:
    from udl_med.demo import run_demo  # lazy: the demo module imports the pipeline, which imports this table

    return run_demo


# --- arguments several actions share --------------------------------------------------

_PRIVACY = Arg(
    "privacy",
    "what MLflow receives: standard (as configured) or strict (paths hashed, previews of real scans withheld); "
    "UDL_MED_PRIVACY=strict sets strict for a whole site (default: the config's tracking.privacy, standard)",
    default=None,
    choices=("standard", "strict"),
)
_MODEL = Arg("model", "runs:/<id>/model, models:/<name>/<version>, or a local model folder", positional=True, input=True)
_IMAGES = "volume, DICOM series folder, folder of volumes, or manifest"
_EXTRACTOR = "random | encoder:PATH | inception:PATH | radimagenet:PATH | swav:PATH | medicalnet:PATH"
_OVERRIDES = "override a config value, e.g. --set train.steps=100 (repeatable; default: none, the file as it is)"
_DEVICE = Arg("device", "torch device the network runs on: cpu, cuda, cuda:1 (default: cpu)", default=None)
_RESAMPLE = Arg(
    "resample",
    "refuse a scan whose spacing (over 1.5x) or orientation differs from the model's training scans "
    "instead of resampling it (default: resample it to the training grid)",
    None,
    True,
    kind="flag",
    flag="--no-resample",
    parse=operator.not_,
)
# how a source without a split column is split by subject: training's data.split_fractions /
# data.split_seed defaults (udl_med.data.manifest.DEFAULT_SPLIT_*; a test checks they agree)
_SPLIT_FRACTIONS = Arg(
    "split_fractions", "train, val, test fractions of the subjects of a source without a split column, as in training", float, (0.8, 0.1, 0.1), nargs=3, cli=False
)
_SPLIT_SEED = Arg("split_seed", "seed of the subject split of a source without a split column, as in training", int, 0, cli=False)
_CT_WINDOW = (-250.0, 250.0)  # udl_med.evaluation.utility.DEFAULT_WINDOW (a test checks they agree)


# --- the table ---------------------------------------------------------------------------

ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "phantoms",
            "write synthetic subjects: paired CT and MR, tissue labels, lesion class",
            _phantoms,
            (
                Arg("out", "output folder", positional=True, output="folder"),
                Arg("n", "number of subjects", int, 8),
                Arg("shape", "volume size in voxels, each at least 8", int, (48, 48, 24), nargs=3, metavar=("X", "Y", "Z"), parse=tuple),
                Arg("seed", "random seed: the same seed writes the same voxels", int, 0),
                Arg("fmt", "file format: NIfTI volumes or DICOM series folders", default="nifti", flag="--format", choices=("nifti", "dicom")),
            ),
            command="phantoms",
            step=True,
        ),
        Action(
            "info",
            "validate a volume, DICOM series, folder or manifest and describe it",
            _info,
            (Arg("path", "a volume, DICOM series folder, folder of volumes, or manifest", positional=True, flag="input", input=True),),
            command="info",
        ),
        Action(
            "convert",
            "convert a volume or DICOM series to NIfTI, MHA, NRRD or a DICOM series",
            _convert,
            (
                Arg("input", "a volume file or a DICOM series folder", positional=True, input=True),
                Arg("output", "a .nii.gz/.nii/.mha/.nrrd name, or a folder name for a DICOM series", positional=True, output="path"),
            ),
            command="convert",
        ),
        Action(
            "select",
            "a manifest of the images of SOURCE with a modality and split",
            _select,
            (
                Arg("source", "a manifest, a folder or one image", input=True),
                Arg("out", "the manifest CSV to write", output="file"),
                Arg("modality", "keep only this modality (CT or MR) (default: every modality)", default=None),
                Arg("split", "keep only this split (train, val or test) (default: every split)", default=None),
                Arg("limit", "keep at most this many images (default: all)", int, None),
                _SPLIT_FRACTIONS,
                _SPLIT_SEED,
            ),
            step=True,
        ),
        Action(
            "train",
            "train the method a YAML config names; tracked in MLflow",
            _train,
            (
                Arg("config", "a config file, or the name of a shipped config (`udl-med configs`)", positional=True, input=True, shipped="configs"),
                Arg("set", _OVERRIDES, default=(), kind="append", metavar="KEY.PATH=VALUE"),
                Arg("resume", "continue from the run folder's last checkpoint", None, False, kind="flag"),
                _PRIVACY,
            ),
            command="train",
            step=True,
            own_run=True,
        ),
        Action(
            "sample",
            "draw new images (or 2D points) from a generative model, as NIfTI plus a PNG grid (points: CSV plus a scatter plot)",
            _sample,
            (
                _MODEL,
                Arg("n", "number of images (or points) to draw", int),
                Arg("out", "output folder", output="folder"),
                Arg("label", "class to generate, for conditional models (default: none; unconditional models take no label)", int, None),
                Arg("seed", "random seed of the latent draws (default: a fresh seed, logged and printed)", int, None),
                Arg("overwrite", "replace an earlier sample output in --out (only the files its sample.json lists)", None, False, kind="flag"),
                Arg(
                    "code",
                    "InfoGAN codes (model.info_codes): the categorical value, then continuous ones, e.g. 1,0.5 (_ leaves one random; default: all random)",
                    default=None,
                    metavar="SPEC",
                ),
                _DEVICE,
            ),
            command="sample",
            step=True,
        ),
        Action(
            "latent",
            "draw a model's latent space: codes of a labeled manifest by class, KL to the prior, silhouette, reconstruction, prior FID",
            _latent,
            (
                replace(_MODEL, help=_MODEL.help + " (a model with an encoder: VAE, autoencoders, DBN)"),
                Arg("data", "a labeled manifest (column label) or folder", positional=True, input=True),
                Arg("out", "folder for latent.png, latent.json, codes_<i>.npz", output="folder"),
                Arg("compare", "more models drawn beside MODEL in one figure (default: MODEL alone)", default=(), nargs="+", metavar="RUN"),
                Arg("roi", "liver-centred items where label maps exist (auto), or every item of each image (whole)", default="auto", choices=("auto", "liver", "whole")),
                Arg("n_prior", "prior samples for the FID (models that sample)", int, 256),
                Arg("extractor", "feature extractor of the prior FID: " + _EXTRACTOR, default="random"),
                Arg("class_names", "legend names of the classes 0, 1, ... (e.g. none,hypo,hyper; default: the class numbers)", default=None, metavar="A,B,C"),
            ),
            command="latent",
            step=True,
        ),
        Action(
            "interpolate",
            "walk between two codes (linear and spherical) of a VAE or (conditional) GAN: NIfTI per step and a PNG strip",
            _interpolate,
            (
                _MODEL,
                Arg("out", "output folder", output="folder"),
                Arg("steps", "codes along the path, both ends included", int),
                Arg("source_from", "CODES.npz[:ROW] or a scan (encoded, or projected for a GAN); default: a prior code", default=None, flag="--from", metavar="A"),
                Arg("source_to", "as --from (default: a prior code)", default=None, flag="--to", metavar="B"),
                Arg("label_from", "class at the start (conditional GANs; default: none)", int, None, flag="--from-class"),
                Arg("label_to", "class at the end (conditional GANs; default: --from-class)", int, None, flag="--to-class"),
                Arg("kind", "linear, spherical (slerp) or both paths", default="both", choices=("both", "linear", "slerp")),
                Arg("seed", "random seed of the prior codes and the projection's starts", int, 0),
            ),
            command="interpolate",
            step=True,
        ),
        Action(
            "arithmetic",
            'latent vector arithmetic over named sets of codes, each averaged first, e.g. "hyper - none + none_other"',
            _arithmetic,
            (
                _MODEL,
                Arg("out", "output folder", output="folder"),
                Arg("expression", "set names joined by + and - (default: none: then --draw)", default=None, flag="--expr"),
                Arg(
                    "sets",
                    "a set: NAME=CODES.npz[:ROWS] (e.g. hyper=picks/codes.npz:3,17,40) or NAME=SCANS (repeatable; default: none)",
                    default=(),
                    flag="--codes",
                    kind="append",
                    metavar="NAME=SOURCE",
                ),
                Arg("draw", "instead: draw N prior codes and their images to pick sets from (default: none)", int, None, metavar="N"),
                Arg("variants", "results written: the result and noisy copies", int, 4),
                Arg("noise", "std of the copies' Gaussian noise", float, 0.25),
                Arg("label", "class of a conditional GAN's results (default: none)", int, None),
                Arg("seed", "random seed of the noise, the projection's starts and the drawn codes", int, 0),
            ),
            command="arithmetic",
            step=True,
        ),
        Action(
            "synthesize",
            "write a synthetic data set: NIfTI in physical units, manifest.csv, a PNG grid (atomic)",
            _synthesize,
            (
                replace(_MODEL, input=False),  # as before the table: a synthesize step's literal model path stays relative to the cwd
                Arg("out", "the folder to create (must not exist or be empty)", output="folder"),
                Arg("n", "images in all, classes in turn for a conditional model (give --n or --n-per-class)", int, None, group="count"),
                Arg("n_per_class", "images per class, for conditional models (give --n or --n-per-class)", int, None, group="count"),
                Arg("like", "a scan whose spacing, orientation, size and modality the images take (default: the training data's spacing and the model's size)", default=None, metavar="REFERENCE"),
                Arg("seed", "random seed of the latent draws", int, 0),
                Arg("overwrite", "replace an earlier synthesize output in --out (only once the new one is complete)", None, False, kind="flag"),
                _DEVICE,
            ),
            command="synthesize",
            step=True,
        ),
        Action(
            "memorization",
            "flag synthetic images that are (near-)copies of training images",
            _memorization,
            (
                Arg("synthetic", "synthetic images: folder, manifest or volume", positional=True),
                Arg("train", "the generator's training images", positional=True),
                Arg("holdout", "real images of subjects not in TRAIN: calibrate the threshold (one score per subject)"),
                Arg("dims", "slices (2) or volumes (3)", default="2", choices=("2", "3")),
                Arg("rate", "false-alarm rate per new subject the threshold is calibrated to", float, 0.01),
                Arg(
                    "too_few",
                    "too few held-out subjects for --rate: warn (calibrate at the smallest rate they can state) or refuse (exit 2)",
                    default="warn",
                    choices=("warn", "refuse"),
                ),
                Arg("resample", "resample images of another size or spacing to the training images' instead of refusing them", None, False, kind="flag"),
                Arg("drop", "remove flagged images from the synthetic manifest", None, False, kind="flag"),
                Arg(
                    "out",
                    "write DIR/memorization.png (closest synthetic images over their nearest training images) (default: no figure)",
                    default=None,
                    flag="--figure",
                    metavar="DIR",
                    output="folder",
                ),
                Arg("flips", "compare against flipped training images too", None, True, kind="flag", cli=False),
            ),
            command="memorization",
            step=True,
        ),
        Action(
            "utility",
            "does synthetic data help? the same classifier on real, real+synthetic, synthetic; tested on held-out real",
            _utility,
            (
                Arg("real", "labeled real items (the few labels are drawn from it)", positional=True),
                Arg("synthetic", "labeled synthetic items (udl-med synthesize output)", positional=True),
                Arg("heldout", "labeled real items of other subjects: every arm's test set"),
                Arg("seeds", "one run of every arm per seed", int, (0, 1, 2), nargs="+"),
                Arg("per_class_subjects", "real subjects per class to train on (0: all)", int, 2, parse=_zero_is_none),
                Arg("steps", "classifier steps, the same for every arm", int, 300),
                Arg("batch_size", "classifier batch size", int, 32, cli=False),
                Arg("lr", "classifier learning rate", float, 1e-3),
                Arg("channels", "classifier channels per level", int, (8, 16, 32), nargs="+", cli=False),
                Arg("ct_window", "CT window in HU (low high) normalised to [-1, 1]; liver crops: -200 300", float, _CT_WINDOW, nargs=2),
                Arg("real_split", "use only this manifest split of REAL (default: every split)", default=None, cli=False),
                Arg("heldout_split", "use only this manifest split of HELDOUT (default: every split)", default=None, cli=False),
                _SPLIT_FRACTIONS,
                _SPLIT_SEED,
                Arg(
                    "classifier_augment",
                    "the classifier's augmentation in every arm (default: all, as a user's own classifier; flip alone: the weaker peer of sessions before 20)",
                    str, keys.CLASSIFIER_AUGMENTS, nargs="+", choices=keys.CLASSIFIER_AUGMENTS,
                ),
                Arg("synthetic_share", "share of every real+synthetic batch drawn from the synthetic items, 0 < S < 1 (default: pooled)", float, None),
            ),
            command="augment-eval",
            step=True,
        ),
        Action(
            "encode",
            "write one latent vector per image to an .npz file",
            _encode,
            (
                _MODEL,
                Arg("input", _IMAGES, positional=True, input=True),
                Arg("out", "FEATURES.npz", output="file"),
                _DEVICE,
                _RESAMPLE,
            ),
            command="encode",
            step=True,
        ),
        Action(
            "fid",
            "FID and KID (with confidence intervals) between two image sets",
            _fid,
            (
                Arg("real", "folder, manifest or saved statistics (.npz)", positional=True, input=True),
                Arg("fake", "folder, manifest or saved statistics (.npz)", positional=True, input=True),
                Arg("extractor", _EXTRACTOR, default="random"),
                Arg("dims", "slices (2), three middle planes (2.5), or volumes (3)", default="2", choices=("2", "2.5", "3")),
                Arg("bootstrap", "bootstrap replicates for the 95% intervals (0: none)", int, 100),
                Arg("kid_subset_size", "KID subset size (default: min(1000, set sizes))", int, None),
                Arg("kid_subsets", "KID subsets", int, 100, cli=False),
                Arg("seed", "random seed of the extractor, subsets and bootstrap", int, 0, cli=False),
                Arg("batch_size", "images per extractor batch", int, 16, cli=False),
                Arg("save_real_stats", "save REAL's statistics for reuse as REAL (default: not saved)", default=None, flag="--save-stats", metavar="REAL_STATS.npz", output="file"),
                Arg("device", "torch device of the statistics and the distance: cpu (default), cuda, cuda:1 (float64)", default=None),
            ),
            command="fid",
            step=True,
        ),
        Action(
            "translate",
            "translate CT to MR or MR to CT, keeping the input's geometry",
            _translate,
            (
                _MODEL,
                Arg("input", _IMAGES, positional=True, input=True),
                Arg("output", "a .nii.gz name, or a folder name for a DICOM series", positional=True, output="path"),
                Arg("direction", "ct2mr or mr2ct (default: from each input's modality, else the model's only direction)", default=None, choices=("ct2mr", "mr2ct")),
                Arg("progress", "show progress bars", None, True, kind="flag", cli=False),
                replace(_DEVICE, help="torch device the network runs on: cpu, cuda, cuda:1 (default: cuda when there is one)"),
                _RESAMPLE,
            ),
            command="translate",
            step=True,
        ),
        Action(
            "classify",
            "predict a class per scan (mean of its slice or patch probabilities) into a CSV",
            _classify,
            (
                Arg("model", "a model that classifies (e.g. semi_supervised_gan): folder or MLflow URI", positional=True, input=True),
                Arg("input", _IMAGES, positional=True, input=True),
                Arg("out", "PREDICTIONS.csv (written only when every image was read)", output="file"),
                _DEVICE,
                _RESAMPLE,
            ),
            command="classify",
            step=True,
        ),
        Action(
            "export",
            "export a trained model: MONAI bundle, encoder weights, a GAN's generator, or TorchScript",
            _export,
            (
                _MODEL,
                Arg("out", "output folder", positional=True, output="folder"),
                Arg("fmt", "what to write", default="encoder", flag="--format", choices=("bundle", "classifier", "encoder", "generator", "torchscript")),
            ),
            command="export",
            step=True,
        ),
        Action(
            "probe",
            "linear probe and fine-tuning of an exported encoder against the same architecture from random init",
            _probe,
            (
                Arg("encoder", "a folder written by udl-med export --format encoder", input=True),
                Arg("data", "labeled held-out images (manifest or folder), with subjects", input=True),
                Arg("seed", "seed of the random initialisation, the folds and the fine-tuning subset", int, 0),
                Arg("roi", "item selection", default="auto", choices=("auto", "liver", "whole")),
                Arg("folds", "cross-validation folds of the linear probe", int, 5),
                Arg("c", "inverse L2 strength of the logistic regression", float, 0.1),
                Arg("label_fraction", "fraction of the subjects whose labels fine-tuning may use", float, 0.1),
                Arg("finetune_steps", "fine-tuning steps", int, 300),
                Arg("finetune_lr", "fine-tuning learning rate (AdamW; the head at 10x)", float, 1e-3),
                Arg("batch_size", "fine-tuning batch size", int, 32),
                Arg("split", "probe only this split (default: every split); without a split column, the encoder's training split", default=None),
                Arg("quick", "a smoke-test setting: 3 folds and at most 50 fine-tuning steps", None, False, kind="flag"),
            ),
            step=True,
        ),
        Action(
            "evaluate_translation",
            "translate every paired subject of a split and score it against the truth (and a linear baseline)",
            _evaluate_translation,
            (
                Arg("model", "a translation model: folder or MLflow URI", input=True),
                Arg("source", "paired CT/MR images with subjects (manifest or folder)", input=True),
                Arg("split", "the split to evaluate (None: all); without a split column, the subjects training held out", default="test"),
                Arg("directions", "ct2mr and/or mr2ct (default: every direction the model has)", default=None, nargs="+"),
                Arg("out_dir", "where to write side-by-side PNGs (input, output, truth) (default: none written)", default=None, output="folder"),
                Arg("max_subjects", "evaluate at most this many subjects (default: all)", int, None),
            ),
            step=True,
        ),
        Action(
            "lesion_slices",
            "write the class-showing CT slices of phantoms as one-slice volumes plus a manifest",
            _lesion_slices,
            (
                Arg("source", "phantoms (manifest or folder)"),
                Arg("out", "output folder", output="folder"),
                Arg("window", "CT window in HU (low high)", float, _CT_WINDOW, nargs=2),
                Arg("min_liver_voxels", "a slice needs at least this many liver voxels", int, 16),
                Arg("slice_axis", "the axis slices are cut across", int, 2),
                Arg("split", "use only this manifest split (default: every split)", default=None),
                Arg("subject_prefix", "put before every subject id (two phantom sets reuse the ids) (default: none)", default=""),
                Arg("crop", "in-plane size (X Y) of a liver-centred crop of every slice (default: whole slices)", int, None, nargs=2),
                _SPLIT_FRACTIONS,
                _SPLIT_SEED,
            ),
            step=True,
        ),
        Action(
            "fid_gate",
            "FID and KID of FAKE against REAL with 95% intervals; fail above max_fid",
            _fid_gate,
            (
                Arg("real", "folder, manifest or saved statistics (.npz)"),
                Arg("fake", "folder, manifest or saved statistics (.npz)"),
                Arg("max_fid", "fail above this FID (default: never fail)", float, None),
                Arg("extractor", _EXTRACTOR, default="random"),
                Arg("dims", "slices (2), three middle planes (2.5), or volumes (3)", default="2", choices=("2", "2.5", "3")),
                Arg("bootstrap", "bootstrap replicates for the 95% intervals (0: none)", int, 100),
                Arg("seed", "random seed of the extractor, subsets and bootstrap", int, 0),
            ),
            step=True,
        ),
        Action(
            "pipeline",
            "run a multi-step pipeline as nested MLflow runs",
            _pipeline,
            (
                Arg("path", "a pipeline file, or the name of a shipped pipeline (`udl-med configs`)", positional=True, flag="pipeline", input=True, shipped="pipelines"),
                Arg("overrides", _OVERRIDES, default=(), flag="--set", kind="append", metavar="KEY.PATH=VALUE"),
                _PRIVACY,
            ),
            command="pipeline",
        ),
        Action("configs", "list the shipped configs and pipelines with their one-line descriptions", _configs, command="configs"),
        Action(
            "demo",
            "make phantoms and train tiny models for every job, tracked in MLflow",
            _demo,
            (Arg("out", "output folder (cleared first if an earlier demo made it)", default="demo-out", output="folder"), _PRIVACY),
            command="demo",
        ),
    )
}


def commands() -> dict[str, Action]:
    """``{subcommand: action}`` of the actions that are ``udl-med`` commands, in table order."""
    return {a.command: a for a in ACTIONS.values() if a.command}


def step_kinds() -> dict[str, Action]:
    """``{kind: action}`` of the actions that are pipeline step kinds."""
    return {a.name: a for a in ACTIONS.values() if a.step}

