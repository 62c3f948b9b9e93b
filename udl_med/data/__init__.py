"""Readers, writers, normalisation, MONAI transforms, datasets and phantoms."""
