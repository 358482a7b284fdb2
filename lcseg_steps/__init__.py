"""lcseg: unsupervised semantic segmentation by multilevel clustering of ViT attention features."""

__version__ = "0.1.0"
