"""Evaluation: confusion-matrix mIoU, precision/recall, tables and JSON, and the metric registry.

The registry names (``METRICS``, ``MetricSpec``, ``get_metric``, ``list_metrics``, ``register_metric``)
are loaded on first use, so importing :mod:`weakseg.eval` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["METRICS", "MetricSpec", "get_metric", "list_metrics", "register_metric"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from weakseg.eval import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
