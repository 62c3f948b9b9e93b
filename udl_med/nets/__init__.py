"""Networks, each dimension-agnostic through ``spatial_dims``."""
