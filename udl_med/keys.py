"""Batch and log keys: one spelling for each, used everywhere."""

# Batch keys (dictionaries produced by udl_med.data datasets).
IMAGE = "image"  # (B, C, *spatial) float in [-1, 1]
LABEL = "label"  # (B,) long, class index from the manifest's `label`
CT = "ct"  # paired / unpaired translation batches: CT image
MR = "mr"  # paired / unpaired translation batches: MR image
PATH = "path"  # source file of each item
MODALITY = "modality"

# Manifest columns (shared/DESIGN.md).
MANIFEST_COLUMNS = ("image", "label", "modality", "subject", "split")
MODALITIES = ("CT", "MR")

# Files inside a model directory written by `train` or `export`.
MODEL_FILE = "udl_med_model.pt"
ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.pt"
