"""Commands that use a trained model: sample, encode, translate, export."""
