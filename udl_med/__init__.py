"""udl-med: unsupervised deep learning for MONAI-based CT/MR pipelines.

The Python API (:mod:`udl_med.api`), imported on first use so that ``udl-med --help``
stays fast::

    import udl_med

    report = udl_med.train("vae2d-phantom", overrides=["train.steps=100"])
    model = udl_med.load_model(report["model_dir"])        # or "runs:/<run_id>/model"
    volumes = model.sample(4, seed=0)
    scores = udl_med.fid("real/", "synth/")

``udl_med.load_model``, ``udl_med.train``, ``udl_med.fid``, and the other actions of the
command line as functions: ``phantoms``, ``sample``, ``synthesize``, ``encode``,
``translate``, ``classify``, ``export``, ``memorization``, ``run_pipeline``.
"""

from typing import Any

__version__ = "0.1.0"

_API = (
    "Model", "load_model", "train", "fid", "phantoms", "sample", "synthesize", "encode",
    "translate", "classify", "export", "memorization", "run_pipeline",
)  # fmt: skip
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from udl_med import api  # lazy: torch, MONAI and MLflow only when the API is used

        return getattr(api, name)
    raise AttributeError(f"module 'udl_med' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
