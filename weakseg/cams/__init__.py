"""Pure CAM math: co-attention, normalisation, multi-scale/flip fusion, seeds.

The stages that write and score CAMs are :mod:`weakseg.stages.make_cams` and :mod:`weakseg.stages.eval_cams`.
"""

from weakseg.cams.cam import View, average_normalized, fuse_views, make_views, normalize_cams, undo_view
from weakseg.cams.coattention import co_attend, co_attention, shared_labels, unshared_labels
from weakseg.cams.seeds import DEFAULT_THRESHOLDS, seeds_from_cams, top_class

__all__ = [
    "DEFAULT_THRESHOLDS",
    "seeds_from_cams",
    "top_class",
    "View",
    "average_normalized",
    "co_attend",
    "co_attention",
    "fuse_views",
    "make_views",
    "normalize_cams",
    "shared_labels",
    "undo_view",
    "unshared_labels",
]
