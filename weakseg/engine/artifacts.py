"""Atomic writes of stage artefacts and the per-stage DONE marker.

Every file is written to a temporary name in the same folder and renamed into place, so a reader
never sees a half-written file. A stage folder is complete only when its ``DONE`` marker exists;
the marker is written last.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.errors import DataError

DONE = "DONE"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON-ready values: dataclasses and mappings as dicts, tuples as lists, paths as str."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_json(path: str | Path, obj: Any) -> Path:
    """Write a dataclass / mapping as indented JSON, atomically."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` atomically (never pickled: object arrays are refused)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; refusing to pickle it")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_png(path: str | Path, image: Any) -> Path:
    """Save a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def require_complete_outputs(folder: str | Path, ids: list[str], suffix: str, what: str, stage: str) -> None:
    """Raise a DataError unless ``folder`` is a complete stage output with ``<id><suffix>`` for every id.

    ``what`` names the files (e.g. "pseudo label"), ``stage`` the command that makes them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist; run {stage} first")
    if not is_done(folder):
        raise DataError(f"{what} folder {folder} has no DONE marker: {stage} is incomplete; rerun it")
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        raise DataError(f"{len(missing)} images have no {what} file in {folder} (e.g. {missing[:3]}); rerun {stage}")


def mark_done(folder: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write the stage's completion marker (last, after every other output)."""
    return save_json(Path(folder) / DONE, dict(info or {}))


def is_done(folder: str | Path) -> bool:
    return (Path(folder) / DONE).is_file()


def clear_done(folder: str | Path) -> None:
    p = Path(folder) / DONE
    if p.exists():
        p.unlink()
