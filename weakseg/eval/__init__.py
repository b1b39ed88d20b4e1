"""Evaluation: pure metric functions and their registry (:mod:`weakseg.eval.registry`).

- :mod:`weakseg.eval.metrics`: confusion-matrix mIoU / precision / recall, FB-IoU;
- :mod:`weakseg.eval.medical`: Dice, Jaccard, HD95, ASD (medpy backend for the distances);
- :mod:`weakseg.eval.sod`: MAE, Fβ, Sα, Eξ (saliency);
- :mod:`weakseg.eval.video`: DAVIS J, F, J&F.
"""
