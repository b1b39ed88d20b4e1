"""Evaluation: confusion-matrix mIoU, precision/recall, tables and JSON."""
