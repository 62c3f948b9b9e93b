"""Steps that judge a trained model: encoder probes, translation quality.

Unlike :mod:`udl_med.metrics` (pure measures on tensors and features), these load
models and data and may use :mod:`udl_med.inference`.
"""
