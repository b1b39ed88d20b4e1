"""Pure CAM math (co-attention, normalisation, multi-scale/flip fusion) and the CAM stages.

The stages live in :mod:`weakseg.cams.make` (write CAMs) and :mod:`weakseg.cams.evaluate` (seed mIoU);
they are not imported here, so the math can be used without them.
"""

from weakseg.cams.cam import View, average_normalized, fuse_views, make_views, normalize_cams, undo_view
from weakseg.cams.coattention import co_attend, co_attention, shared_labels, unshared_labels

__all__ = [
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
