"""Pure loss functions shared by methods and stages (shapes in each docstring)."""

from weakseg.losses.classification import multilabel_loss
from weakseg.losses.dense import partial_cross_entropy

__all__ = ["multilabel_loss", "partial_cross_entropy"]
