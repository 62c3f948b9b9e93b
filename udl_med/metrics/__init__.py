"""FID, KID, Inception Score, feature extractors, translation and probe metrics."""
