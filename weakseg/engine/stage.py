"""The one stage-output contract every stage follows.

A stage writes into its own folder: ``config.json`` first (``{"stage": name, "record": ..., **meta}``,
where ``record`` is the stage config without the fields that do not change its outputs), then its
artefacts (atomically, one file at a time), then ``DONE`` last. :func:`begin_stage` decides what a
(re)run does with a folder:

- no ``config.json``: a new run (an existing folder without one is refused unless ``overwrite``, so a
  stage never writes into a folder it did not make);
- the same record and ``DONE``: complete, skip it;
- the same record without ``DONE``: interrupted, resume it (the stage keeps what is already written);
- a record that differs only in ``may_change`` keys (e.g. more training epochs): resume and extend it;
- any other difference: refused with the differing keys named, or, with ``overwrite``, the folder is
  emptied and rebuilt.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from weakseg.engine import dist
from weakseg.engine.artifacts import clear_done, is_done, jsonable, load_json, save_json
from weakseg.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG = "config.json"
NOT_RECORDED = ("workers", "device", "overwrite", "out")
"""stage-config fields that never change a stage's outputs"""


def stage_record(cfg: Any, drop: Iterable[str] = NOT_RECORDED) -> dict:
    """A stage config as JSON-ready values without the fields that do not change its outputs."""
    d = jsonable(cfg)
    for k in drop:
        d.pop(k, None)
    return d


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def record_diff(old: Mapping, new: Mapping) -> list[str]:
    """Dotted keys whose values differ between two records (keys present in one only count)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def begin_stage(
    out: str | Path,
    stage: str,
    record: Mapping,
    *,
    overwrite: bool = False,
    may_change: Iterable[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> Literal["complete", "run"]:
    """Apply the contract to ``out``; returns ``"complete"`` (skip) or ``"run"`` (``config.json`` written).

    ``record``: :func:`stage_record` of the stage config (plus whatever else fixes the outputs, e.g. the
    classifier a CAM folder came from). ``meta``: more entries for ``config.json`` (not compared).
    Only the main process writes or deletes; every process gets the same answer.
    """
    out = Path(out)
    record = jsonable(record)
    action = _decide(out, stage, record, overwrite, may_change)
    # every process reads the folder before the main one changes it (else another rank may see a half-made one)
    dist.barrier()
    if action == "complete":
        return "complete"
    if action == "empty":
        _empty(out, stage)
    if dist.is_main():
        clear_done(out)
        save_json(out / CONFIG, {"stage": stage, "record": record, **(meta or {})})
    dist.barrier()
    return "run"


def _decide(
    out: Path, stage: str, record: Any, overwrite: bool, may_change: Iterable[str]
) -> Literal["complete", "empty", "run"]:
    """What :func:`begin_stage` does with ``out`` (reads only; raises the refusals)."""
    path = out / CONFIG
    if path.is_file():
        old = load_json(path).get("record")
        diff = record_diff(old, record) if isinstance(old, Mapping) else ["(no record: made by another version)"]
        if not diff and is_done(out):
            log.info("%s: %s is complete with this configuration; skipping", stage, out)
            return "complete"
        if diff and not set(diff) <= set(may_change):
            if not overwrite:
                shown = ", ".join(diff[:8]) + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
                raise ConfigError(
                    f"{out} holds {stage} outputs made with another configuration (differs in: {shown}); "
                    "rerun with --overwrite to rebuild it, or choose another output folder"
                )
            return "empty"
        if diff:
            log.info("%s: %s differs only in %s; extending it", stage, out, ", ".join(diff))
        else:
            log.info("%s: resuming the interrupted run in %s", stage, out)
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} is not empty but holds no {CONFIG} from weakseg; choose an empty or new output folder "
                "(or pass --overwrite to empty it)"
            )
        return "empty"
    return "run"


def _empty(out: Path, stage: str) -> None:
    log.warning("%s: --overwrite: emptying %s", stage, out)
    if dist.is_main():
        shutil.rmtree(out)
        out.mkdir(parents=True)
    dist.barrier()


def stage_meta(out: str | Path) -> dict:
    """The ``config.json`` a stage wrote (stage, record and its meta entries)."""
    path = Path(out) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{out} holds no {CONFIG}: it is not a weakseg stage folder (or the stage never started)")
    return load_json(path)
