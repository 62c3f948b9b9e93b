"""udl-med: unsupervised deep learning for MONAI-based CT/MR pipelines."""

__version__ = "0.1.0"
