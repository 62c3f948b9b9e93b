"""The one training loop: config, devices, seeding, checkpoints, resume, MLflow."""
