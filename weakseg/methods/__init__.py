"""Methods, one module each, registered in :data:`weakseg.methods.base.METHODS` when imported here.

- ``cam``: plain CAM classifier (:mod:`weakseg.methods.cam`)
- ``mcis``: MCIS co-attention classifier, ECCV 2020 (:mod:`weakseg.methods.mcis`)
- ``clip-es``: CLIP-ES CAMs of a CLIP + text classifier, CVPR 2023 (:mod:`weakseg.methods.clip_es`)
- ``weclip``: WeCLIP, frozen CLIP + decoder on online pseudo labels, CVPR 2024 (:mod:`weakseg.methods.weclip`)
- ``abd``, ``cross-teaching``, ``supervised-only``: semi-supervised medical segmentation, ABD CVPR 2024
  and its baselines (:mod:`weakseg.methods.abd`)
- ``dcfm``, ``single-saliency``: co-salient object detection, DCFM CVPR 2022, and its single-image
  baseline (:mod:`weakseg.methods.dcfm`)
- ``scwssod``, ``sod-pce``, ``sod-full``: scribble salient-object detection, SCWSSOD AAAI 2021, and its
  partial-BCE and fully supervised baselines (:mod:`weakseg.methods.scwssod`)
- ``a2gnn``: A2GNN, box-supervised pseudo labels, TPAMI 2021 (:mod:`weakseg.methods.a2gnn`)
- ``dfr``: DFR, scribble-supervised segmenter with a dynamic-feature regularized loss (:mod:`weakseg.methods.dfr`)
- ``ftmu``: FTMU, box-initialised video object segmentation, CVPR 2020 (:mod:`weakseg.methods.ftmu`)

Few-shot heads (prototype, SCL, PI-CLIP prior) are episodic, not stage plug-ins: :mod:`weakseg.methods.fewshot`.

Adding a method: one module with a :class:`~weakseg.methods.base.Method` subclass decorated by
:func:`~weakseg.methods.base.register_method`, imported below (see ``docs/extending.md``).
"""

from weakseg.methods import a2gnn, abd, cam, clip_es, dcfm, dfr, ftmu, mcis, scwssod, weclip  # noqa: F401  (registers the methods)
from weakseg.methods.base import METHODS, Method, create_method, get_method_class, register_method

__all__ = ["METHODS", "Method", "create_method", "get_method_class", "register_method"]
