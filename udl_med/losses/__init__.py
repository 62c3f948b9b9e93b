"""Losses: reconstruction, ELBO, sparsity, GAN, cycle and identity, feature matching."""
