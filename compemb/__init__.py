"""compemb: compositional embeddings using complementary partitions (Shi et al., KDD 2020)."""
__version__ = "0.1.0"
