"""Training methods: one module per method, registered by name (see base.py)."""
