"""Classifier methods (one module each) and the training stage.

``METHODS`` (:mod:`weakseg.methods.registry`): ``cam`` (plain CAM) and ``mcis`` (MCIS, ECCV 2020).
Stage: :func:`weakseg.methods.train.train_cls` (config :class:`weakseg.methods.train.TrainClsConfig`).
"""

from weakseg.methods.cam import PRESETS, CamNet, ClsHParams, get_preset
from weakseg.methods.mcis import MCISNet, mcis_loss
from weakseg.methods.registry import METHODS, Method, get_method

__all__ = ["METHODS", "PRESETS", "CamNet", "ClsHParams", "MCISNet", "Method", "get_method", "get_preset", "mcis_loss"]
