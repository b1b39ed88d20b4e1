"""Segmentation networks (segmentation-models-pytorch and friends), their training, evaluation and inference."""
