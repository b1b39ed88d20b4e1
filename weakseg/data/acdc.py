"""Medical 2D slices and 3D volumes: the ACDC semi-supervised layout (h5), plain PNG slices and NIfTI volumes.

Three layouts, all with split lists at the root (one id per line):

- **h5** (the SSL4MIS / ABD layout of ACDC; ``/work/shared/data/acdc`` follows it)::

      data/<volume>_slice_<k>.h5     one training slice: datasets ``image`` float [H, W] in [0, 1], ``label`` uint8
      data/<volume>.h5               one volume: ``image`` float [D, H, W], ``label`` uint8 [D, H, W]
      <split>_slices.list            slice ids (``train_slices.list``); used for split ``<split>`` when present
      <split>.list                   volume ids (``val.list``, ``test.list``, ``train.list``)

- **png** (plain 2D slices, e.g. exported from any scanner format)::

      slices/<volume>_slice_<k>.png  8- or 16-bit grayscale image (scaled to [0, 1] by its bit depth)
      labels/<volume>_slice_<k>.png  uint8 class indices (0 background, c + 1 = class c)
      <split>_slices.list or <split>.list   as above (a volume is the sorted stack of its slices)
      classes.txt                    optional foreground class names (default: the ACDC ones)

- **nifti** (3D NIfTI volumes, e.g. the ACDC challenge download; needs ``nibabel``: ``pip install
  'weakseg[medical]'``)::

      <volume>.nii.gz                        image volume (``.nii`` too); or, as ACDC distributes it,
      <patient>/<volume>.nii.gz              ``patient001/patient001_frame01.nii.gz`` (ED / ES frames), or
      <folder>/<patient>/<volume>.nii.gz     ``training/patient001/...`` with the lists in ACDC's ``database/``
      <volume>_gt.nii.gz                     its label volume, next to the image (required; same shape)
      <split>.list                           volume ids: the file names (``patient001_frame12``)
      <split>_slices.list                    or slice ids ``<volume>_slice_<k>`` (k: 0-based index in the volume)
      classes.txt                            optional, as above

  SSL4MIS's lists (the h5 layout's) do not name ACDC's files: they renumber each patient's two frames
  ``frame01`` / ``frame02``, where ACDC names them by cine frame (``patient001_frame12``).

  Each volume is read whole (a 3D file; a 4D one such as ACDC's ``patientNNN_4d.nii.gz`` cine is refused),
  transposed from NIfTI's (x, y, z) to ``[D, H, W]`` = (z, y, x) — the array order of SimpleITK, which
  SSL4MIS used to write the h5 layout — and its intensities min-max scaled to [0, 1] per volume (as
  SSL4MIS's ``acdc_data_processing.py``). Labels are the integer values of the ``_gt`` file.

Only the nifti layout carries a voxel spacing (the image header's ``pixdim``, in mm; :meth:`MedicalSlices.spacing`),
so eval-volumes reports distances in mm there; h5 and png distances are in voxels unless a spacing is given
(:mod:`weakseg.eval.medical`).

Every split is a :class:`MedicalSlices` (a :class:`~weakseg.data.dataset.SegDataset`): one
:class:`~weakseg.data.dataset.Record` per 2D slice with its ``volume`` and 0-based ``slice_index``, so a
volume's slices can be trained on one by one and stacked again for 3D evaluation (:meth:`MedicalSlices.load_volume`).
Image-level ``labels`` are not filled (reading every mask to list them would cost a pass over the data).

The semi-supervised protocol labels whole *patients*: :func:`split_by_patient` takes the first ``n`` patients
in list order as labelled (ACDC ``train_slices.list``: 3 patients = 68 slices, 7 = 136, the benchmark's
5 % and 10 %). The base augmentations of ABD / SSL4MIS (:class:`SliceAugment`, :class:`SliceViews`) make a
weak and a strong view of each slice.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.data.dataset import IGNORE, Record, SegDataset, bad_mask_values
from weakseg.data.images import display_path, load_mask
from weakseg.errors import ConfigError, DataError, missing_extra

ACDC_CLASSES = ("RV", "Myo", "LV")
"""ACDC foreground classes: label 1 right ventricle, 2 myocardium, 3 left ventricle"""
LAYOUTS = ("h5", "png", "nifti")
_NII = (".nii.gz", ".nii")
_SLICE = re.compile(r"^(?P<volume>.+)_slice_(?P<k>\d+)$")
_FRAME = re.compile(r"^(?P<patient>.+?)_frame\d+$")


def detect_layout(root: str | Path) -> str:
    """``"h5"`` (a ``data/`` folder of .h5 files), ``"png"`` (``slices/`` + ``labels/``) or ``"nifti"`` (.nii /
    .nii.gz files at the root or up to two folders down); DataError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path")
    if (root / "data").is_dir() and any((root / "data").glob("*.h5")):
        return "h5"
    if (root / "slices").is_dir():
        return "png"
    if any(any(root.glob(pattern)) for pattern in ("*.nii*", "*/*.nii*", "*/*/*.nii*")):
        return "nifti"
    raise DataError(
        f"cannot tell the layout of {display_path(root)}; expected data/*.h5 + <split>.list (h5), "
        "slices/*.png + labels/*.png + <split>.list (png) "
        "or [<patient>/]<volume>.nii.gz + <volume>_gt.nii.gz + <split>.list (nifti)"
    )


def read_list(path: Path) -> list[str]:
    """The non-empty lines of a split list (ids, possibly with a file extension, which is dropped)."""
    if not path.is_file():
        raise DataError(f"split list not found: {display_path(path)}; create it with one id per line")
    ids = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        tok = line.strip()
        if tok:
            ids.append(tok.removesuffix(".h5").removesuffix(".png").removesuffix(".gz").removesuffix(".nii"))
    return ids


def patient_of(volume: str) -> str:
    """The patient of a volume id: ``patient001_frame01`` -> ``patient001`` (other ids are their own patient)."""
    m = _FRAME.match(volume)
    return m.group("patient") if m else volume


def available_splits(root: str | Path) -> list[str]:
    """Split names with a list file (``train`` from ``train_slices.list`` or ``train.list``, ``val``, ...)."""
    root = Path(root)
    names = {p.name.removesuffix(".list").removesuffix("_slices") for p in root.glob("*.list")}
    names.discard("all")
    return sorted(names)


@dataclass(frozen=True)
class _Source:
    """Where a record's pixels are: an h5 file (slice ``index`` of a volume file, or None), two PNGs, or slice
    ``index`` of a NIfTI image volume and its label volume."""

    image: Path
    label: Path | None
    index: int | None = None


class MedicalSlices(SegDataset):
    """A split as 2D slices (see the module docstring); ``load_slice`` gives float images in [0, 1]."""

    def __init__(
        self,
        root: Path,
        split: str,
        class_names: Sequence[str],
        records: Sequence[Record],
        sources: Sequence[_Source],
        layout: str,
    ):
        super().__init__(root, split, class_names, records)
        self._sources = list(sources)
        self.layout = layout
        self._volumes: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            self._volumes.setdefault(str(r.volume), []).append(i)
        for idx in self._volumes.values():
            idx.sort(key=lambda i: self.records[i].slice_index or 0)

    # ---------------------------------------------------------------- slices
    def load_slice(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image float32 [H, W] in [0, 1], label uint8 [H, W] or None)`` of record ``i``."""
        s = self._sources[i]
        if self.layout == "h5":
            image, label = _read_h5(s.image, s.index)
        elif self.layout == "nifti":
            vol, lab = _nifti_pair(s.image, s.label)
            image, label = vol[s.index].copy(), lab[s.index].copy()
        else:
            image = _read_gray_png(s.image)
            label = load_mask(s.label) if s.label is not None and s.label.is_file() else None
        if label is not None:
            self._check_label(label, s.label or s.image)
            if label.shape != image.shape:
                raise DataError(f"{display_path(s.label or s.image)}: label shape {label.shape} differs from the "
                                f"image's {image.shape}; re-export the pair")  # fmt: skip
        return image, label

    def load_image(self, i: int) -> np.ndarray:
        """The slice as ``uint8 [H, W, 3]`` (gray repeated), for galleries and reports."""
        image, _ = self.load_slice(i)
        g = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)

    def load_mask(self, i: int) -> np.ndarray | None:
        return self.load_slice(i)[1]

    # ---------------------------------------------------------------- volumes
    @property
    def volumes(self) -> list[str]:
        """Volume ids in list order."""
        return list(self._volumes)

    def slices_of(self, volume: str) -> list[int]:
        """Record indices of ``volume``'s slices, by slice index."""
        if volume not in self._volumes:
            raise DataError(f"volume {volume!r} is not in split {self.split!r} of {display_path(self.root)}")
        return list(self._volumes[volume])

    def load_volume(self, volume: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image float32 [D, H, W], label uint8 [D, H, W] or None)``: a volume file, or its slices stacked."""
        idx = self.slices_of(volume)
        first = self._sources[idx[0]]
        if self.layout == "nifti":  # one image file and one label file: read once (cached), slices in order
            image, label = _nifti_pair(first.image, first.label)
            self._check_label(label, first.label or first.image)
            order = [self._sources[i].index for i in idx]
            return image[order], label[order]
        if self.layout == "h5" and first.index is not None:  # one volume file: read it once
            image, label = _read_h5(first.image, None)
            if label is not None:
                self._check_label(label, first.image)
            order = [self.records[i].slice_index for i in idx]
            return image[order], None if label is None else label[order]
        pairs = [self.load_slice(i) for i in idx]
        shapes = {p[0].shape for p in pairs}
        if len(shapes) > 1:
            raise DataError(f"the slices of volume {volume!r} have different sizes {sorted(shapes)}; "
                            "a volume's slices must share one size")  # fmt: skip
        labels = [p[1] for p in pairs]
        label = None if any(x is None for x in labels) else np.stack(labels)  # type: ignore[arg-type]
        return np.stack([p[0] for p in pairs]), label

    def spacing(self, volume: str) -> tuple[float, float, float] | None:
        """Voxel size in mm of ``volume`` along ``[D, H, W]`` (slice, row, column): the NIfTI image header's;
        unknown (None) in the h5 and png layouts, whose distances are then in voxels."""
        if self.layout != "nifti":
            return None
        return _nifti_spacing(self._sources[self.slices_of(volume)[0]].image)

    def _check_label(self, label: np.ndarray, path: Path) -> None:
        bad = bad_mask_values(label, self.num_classes)
        if bad:
            raise DataError(f"{display_path(path)}: label values {bad[:10]} outside 0..{self.num_classes}; fix the "
                            f"labels or the class list ({self.num_classes} foreground classes)")  # fmt: skip


def open_slices(root: str | Path, split: str = "train", layout: str = "auto") -> MedicalSlices:
    """One split of a medical dataset as slices: ``<split>_slices.list`` when present, else ``<split>.list``."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise ConfigError(f"unknown medical layout {layout!r}; valid names: auto, {', '.join(LAYOUTS)}")
    elif not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path")
    names = _class_names(root)
    slice_list = root / f"{split}_slices.list"
    volume_list = root / f"{split}.list"
    if not slice_list.is_file() and not volume_list.is_file():
        found = ", ".join(available_splits(root)) or "none"
        raise DataError(f"split {split!r} of {display_path(root)} has no {slice_list.name} or {volume_list.name} "
                        f"(splits found: {found})")  # fmt: skip
    if layout == "h5":
        records, sources = _h5_records(root, slice_list, volume_list)
    elif layout == "nifti":
        records, sources = _nifti_records(root, slice_list, volume_list)
    else:
        records, sources = _png_records(root, slice_list, volume_list)
    if not records:
        raise DataError(f"split {split!r} of {display_path(root)} lists no slices")
    return MedicalSlices(root, split, names, records, sources, layout)


def _class_names(root: Path) -> tuple[str, ...]:
    path = root / "classes.txt"
    if not path.is_file():
        return ACDC_CLASSES
    names = tuple(t.strip() for t in path.read_text(encoding="utf-8-sig").splitlines() if t.strip())
    if not names:
        raise DataError(f"{display_path(path)} is empty; write one foreground class name per line")
    return names


def _slice_key(slice_id: str, source: Path) -> tuple[str, int]:
    m = _SLICE.match(slice_id)
    if m is None:
        raise DataError(f"{display_path(source)}: slice id {slice_id!r} is not <volume>_slice_<k>; rename it")
    return m.group("volume"), int(m.group("k"))


def _records_from_slices(ids: list[tuple[str, int, str]], source_of) -> tuple[list[Record], list[_Source]]:
    """Records of slices ``(volume, k, id)``; ``slice_index`` = rank of ``k`` within the volume (0-based)."""
    ks: dict[str, list[int]] = {}
    for volume, k, _ in ids:
        ks.setdefault(volume, []).append(k)
    rank = {(v, k): r for v, kk in ks.items() for r, k in enumerate(sorted(set(kk)))}
    records, sources = [], []
    for volume, k, sid in ids:
        src = source_of(sid)
        records.append(Record(sid, src.image, (), volume=volume, slice_index=rank[(volume, k)]))
        sources.append(src)
    return records, sources


def _missing(paths: list[Path], listed_in: Path) -> None:
    gone = [p for p in paths if not p.is_file()]
    if gone:
        more = f" (and {len(gone) - 3} more)" if len(gone) > 3 else ""
        raise DataError(
            f"{len(gone)} file(s) listed in {display_path(listed_in)} do not exist: "
            f"{', '.join(display_path(p) for p in gone[:3])}{more}; restore them or remove them from the list"
        )


def _h5_records(root: Path, slice_list: Path, volume_list: Path) -> tuple[list[Record], list[_Source]]:
    data = root / "data"
    if slice_list.is_file():
        ids = [(*_slice_key(s, slice_list), s) for s in read_list(slice_list)]
        _missing([data / f"{s}.h5" for *_, s in ids], slice_list)
        return _records_from_slices(ids, lambda s: _Source(data / f"{s}.h5", data / f"{s}.h5"))
    volumes = read_list(volume_list)
    files = [data / f"{v}.h5" for v in volumes]
    _missing(files, volume_list)
    records, sources = [], []
    for v, f in zip(volumes, files, strict=True):
        for k in range(_h5_depth(f)):
            records.append(Record(f"{v}_slice_{k}", f, (), volume=v, slice_index=k))
            sources.append(_Source(f, f, k))
    return records, sources


def _png_records(root: Path, slice_list: Path, volume_list: Path) -> tuple[list[Record], list[_Source]]:
    images, labels = root / "slices", root / "labels"

    def source(s: str) -> _Source:
        lab = labels / f"{s}.png"
        return _Source(images / f"{s}.png", lab if lab.is_file() else None)

    if slice_list.is_file():
        ids = [(*_slice_key(s, slice_list), s) for s in read_list(slice_list)]
        _missing([images / f"{s}.png" for *_, s in ids], slice_list)
        return _records_from_slices(ids, source)
    ids = []
    for v in read_list(volume_list):
        found = sorted((_slice_key(p.stem, p)[1], p.stem) for p in images.glob(f"{v}_slice_*.png"))
        if not found:
            raise DataError(f"volume {v!r} listed in {display_path(volume_list)} has no slices "
                            f"{display_path(images)}/{v}_slice_<k>.png")  # fmt: skip
        ids += [(v, k, s) for k, s in found]
    return _records_from_slices(ids, source)


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise missing_extra("h5py", "medical", "reading .h5 medical data") from e
    return h5py


def _h5_depth(path: Path) -> int:
    with _h5_open(path) as f:
        shape = f["image"].shape
    if len(shape) != 3:
        raise DataError(f"{display_path(path)}: a volume file needs image [D, H, W], got shape {shape}")
    return int(shape[0])


def _h5_open(path: Path):
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"cannot read {display_path(path)} as HDF5 ({e}); re-export the file") from None
    if "image" not in f:
        f.close()
        raise DataError(f"{display_path(path)} has no dataset 'image' (found: {', '.join(f.keys()) or 'none'})")
    return f


def _read_h5(path: Path, index: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` (and ``label`` when present) of an h5 file, or their slice ``index`` of a volume file."""
    with _h5_open(path) as f:
        sel = () if index is None else (index,)
        image = np.asarray(f["image"][sel], dtype=np.float32)
        label = np.asarray(f["label"][sel], dtype=np.uint8) if "label" in f else None
    return image, label


def _read_gray_png(path: Path) -> np.ndarray:
    """A grayscale PNG as float32 [H, W] in [0, 1] (8-bit / 255, 16-bit / 65535)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            a = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"slice image not found: {display_path(path)}") from None
    except OSError as e:
        raise DataError(f"cannot read {display_path(path)} ({e}); re-export it as a grayscale PNG") from None
    if a.ndim != 2:
        raise DataError(f"{display_path(path)} is a {mode} image; slices must be single-channel grayscale PNGs")
    scale = 255.0 if a.dtype == np.uint8 or mode in ("L", "P", "1") else 65535.0
    return (a.astype(np.float32) / scale).clip(0, 1)


# ---------------------------------------------------------------------------- NIfTI volumes


def _nibabel():
    try:
        import nibabel
    except ImportError as e:
        raise missing_extra("nibabel", "medical", "NIfTI volumes") from e
    return nibabel


def _nifti_image_file(root: Path, volume: str) -> Path | None:
    """``volume``'s image file (.nii.gz or .nii): ``<root>/<v>``, ``<root>/<patient>/<v>`` or
    ``<root>/*/<patient>/<v>``, the patient being :func:`patient_of` or the id up to its first ``_`` (ACDC's
    ``patient001_4d``); None when there is none."""
    patients = list(dict.fromkeys((patient_of(volume), volume.split("_")[0])))

    def folders():
        yield root
        yield from (root / p for p in patients)
        yield from (d / p for d in sorted(root.iterdir()) for p in patients if (d / p).is_dir())

    for folder in folders():
        for ext in _NII:
            if (folder / f"{volume}{ext}").is_file():
                return folder / f"{volume}{ext}"
    return None


def _nifti_label_file(image: Path) -> Path:
    """The ``_gt`` label volume next to ``image`` (either extension); DataError when there is none."""
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    for ext in _NII:
        if (image.parent / f"{stem}_gt{ext}").is_file():
            return image.parent / f"{stem}_gt{ext}"
    expected = display_path(image.parent / f"{stem}_gt.nii.gz")
    raise DataError(f"{display_path(image)} has no label volume {expected}; add it (every volume of the nifti "
                    "layout needs its _gt file) or remove the volume from the list")  # fmt: skip


def _nifti_load(path: Path):
    """The nibabel image of ``path`` (header read, data not yet); DataError when it is not a readable NIfTI file."""
    nib = _nibabel()
    try:
        return nib.load(path)
    except FileNotFoundError:
        raise DataError(f"NIfTI file not found: {display_path(path)}") from None
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"cannot read {display_path(path)} as NIfTI ({e}); re-export the file") from None


def _nifti_shape(path: Path, img) -> tuple[int, int, int]:
    """``img``'s (x, y, z) shape (a trailing axis of length 1 dropped); DataError unless it is 3D."""
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        fix = ("list its 3D frames (ACDC: patientNNN_frameMM) instead of the 4D cine" if len(shape) == 4
               else "export it as one 3D volume")  # fmt: skip
        raise DataError(f"{display_path(path)} is {len(shape)}D (shape {shape}); the nifti layout reads 3D volumes: "
                        f"{fix}")  # fmt: skip
    return shape  # type: ignore[return-value]


def _nifti_files(root: Path, volume: str, listed_in: Path) -> tuple[Path, Path, int]:
    """``(image file, label file, depth)`` of ``volume``, its headers checked (3D, same shape)."""
    image = _nifti_image_file(root, volume)
    if image is None:
        p = patient_of(volume)
        raise DataError(f"volume {volume!r} listed in {display_path(listed_in)} not found: looked for "
                        f"{display_path(root)}/{volume}.nii[.gz], .../{p}/{volume}.nii[.gz] and .../*/{p}/{volume}"
                        ".nii[.gz]; restore it or remove it from the list")  # fmt: skip
    shape = _nifti_shape(image, _nifti_load(image))
    label = _nifti_label_file(image)
    label_shape = _nifti_shape(label, _nifti_load(label))
    if label_shape != shape:
        raise DataError(f"{display_path(label)}: label shape {label_shape} differs from the image's {shape} "
                        f"({display_path(image)}); re-export the pair on the image's grid")  # fmt: skip
    return image, label, shape[2]


def _nifti_records(root: Path, slice_list: Path, volume_list: Path) -> tuple[list[Record], list[_Source]]:
    if slice_list.is_file():
        ids = [(*_slice_key(s, slice_list), s) for s in read_list(slice_list)]
        files: dict[str, tuple[Path, Path, int]] = {}
        by_id = {}
        for volume, k, sid in ids:
            if volume not in files:
                files[volume] = _nifti_files(root, volume, slice_list)
            image, label, depth = files[volume]
            if k >= depth:
                raise DataError(f"slice {sid!r} listed in {display_path(slice_list)}: {display_path(image)} has "
                                f"{depth} slices (0..{depth - 1}); fix the slice index")  # fmt: skip
            by_id[sid] = _Source(image, label, k)
        return _records_from_slices(ids, by_id.__getitem__)
    records, sources = [], []
    for v in read_list(volume_list):
        image, label, depth = _nifti_files(root, v, volume_list)
        for k in range(depth):
            records.append(Record(f"{v}_slice_{k}", image, (), volume=v, slice_index=k))
            sources.append(_Source(image, label, k))
    return records, sources


def _nifti_array(path: Path) -> np.ndarray:
    """The voxels of a 3D NIfTI file as ``[D, H, W]`` = (z, y, x) (the scaling of the header applied)."""
    img = _nifti_load(path)
    shape = _nifti_shape(path, img)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read the voxels of {display_path(path)} ({e}); re-export the file") from None
    return np.ascontiguousarray(data.reshape(shape).transpose(2, 1, 0))


@functools.lru_cache(maxsize=16)
def _nifti_cached(image: Path, label: Path, stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    vol = _nifti_array(image).astype(np.float32)
    lo, hi = float(vol.min()), float(vol.max())
    vol = (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)
    raw = _nifti_array(label)
    lab = np.rint(raw) if raw.dtype.kind == "f" else raw
    if lab.size and ((lab != raw).any() or lab.min() < 0 or lab.max() > 255):
        raise DataError(f"{display_path(label)}: label values must be integers in 0..255 (found {raw.min()} .. "
                        f"{raw.max()}, non-integers: {bool((lab != raw).any())}); is it an image rather than a "
                        "label volume? Fix the _gt file")  # fmt: skip
    if lab.shape != vol.shape:
        raise DataError(f"{display_path(label)}: label shape {lab.shape} differs from the image's {vol.shape} "
                        f"({display_path(image)}); re-export the pair on the image's grid")  # fmt: skip
    vol, lab = vol.astype(np.float32), lab.astype(np.uint8)
    vol.flags.writeable = lab.flags.writeable = False  # shared by every caller of the cache
    return vol, lab


def _nifti_pair(image: Path, label: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 [D, H, W] in [0, 1], label uint8 [D, H, W])`` of a volume: min-max scaled per volume,
    read once and kept for the next slices (a small LRU cache, renewed when either file changes). Read-only."""
    if label is None:
        raise DataError(f"{display_path(image)} has no label volume; add its _gt file")
    try:
        stamp = tuple(n for p in (image, label) for n in (p.stat().st_mtime_ns, p.stat().st_size))
    except FileNotFoundError as e:
        raise DataError(f"NIfTI file not found: {display_path(Path(e.filename))}; restore it") from None
    return _nifti_cached(image, label, stamp)


def _nifti_spacing(path: Path) -> tuple[float, float, float] | None:
    """The voxel size in mm along ``[D, H, W]`` from the header's ``pixdim`` (z, y, x); None when not positive.

    The header's spatial unit is honoured (metres and microns converted; unknown is taken as mm, the NIfTI habit).
    """
    header = _nifti_load(path).header
    zooms = [float(z) for z in header.get_zooms()[:3]]
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    if len(zooms) != 3 or not all(z > 0 and math.isfinite(z) for z in zooms):
        return None
    return zooms[2] * scale, zooms[1] * scale, zooms[0] * scale


# ---------------------------------------------------------------------------- labelled / unlabelled split


@dataclass(frozen=True)
class PatientSplit:
    """A split's slices ``ds`` divided by patient: record indices of the labelled and unlabelled slices, and the
    labelled patients (in list order)."""

    ds: MedicalSlices
    labelled: list[int]
    unlabelled: list[int]
    patients: tuple[str, ...]


def split_by_patient(ds: MedicalSlices, n_labelled: int) -> PatientSplit:
    """The first ``n_labelled`` patients of the split (in list order) labelled, every other slice unlabelled.

    On ACDC's ``train_slices.list`` 3 patients give 68 labelled slices and 7 give 136 (SSL4MIS / ABD).
    """
    order: list[str] = []
    for r in ds.records:
        p = patient_of(str(r.volume))
        if p not in order:
            order.append(p)
    if not 1 <= n_labelled <= len(order):
        raise ConfigError(f"labelled patients must be in 1..{len(order)} (patients of split {ds.split!r}), "
                          f"got {n_labelled}")  # fmt: skip
    chosen = set(order[:n_labelled])
    lab = [i for i, r in enumerate(ds.records) if patient_of(str(r.volume)) in chosen]
    unl = [i for i, r in enumerate(ds.records) if patient_of(str(r.volume)) not in chosen]
    return PatientSplit(ds, lab, unl, tuple(order[:n_labelled]))


# ---------------------------------------------------------------------------- base augmentations


@dataclass(frozen=True)
class SliceAugment:
    """The base augmentations of ABD / SSL4MIS: a weak view (rotations, flips) and a strong one (+ cutout, jitter)."""

    rot_flip: float = 0.5
    """probability of a random 90° rotation plus a flip (otherwise maybe a small rotation)"""
    rotate: float = 0.5
    """probability of a rotation by up to ``max_angle`` when no 90° rotation was drawn"""
    max_angle: float = 20.0
    """largest small rotation (degrees, either way)"""
    cutout: float = 0.5
    """probability of a cutout on the strong view (filled with uniform noise, labelled background)"""
    cutout_area: tuple[float, float] = (0.02, 0.4)
    """range of the cutout's area, as a fraction of the slice"""
    cutout_ratio: tuple[float, float] = (0.3, 3.3)
    """range of the cutout's height / width"""
    brightness: float = 0.8
    """strong view: intensity × a factor in [1 - b, 1 + b]"""
    contrast: float = 0.8
    """strong view: deviation from the mean × a factor in [1 - c, 1 + c]"""


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def weak_view(
    image: torch.Tensor, label: torch.Tensor, size: int, aug: SliceAugment
) -> tuple[torch.Tensor, torch.Tensor]:
    """``image float [H, W]``, ``label long [H, W]`` → rotated/flipped and resized ``[1, S, S]``, ``[S, S]``.

    Uses torch's RNG (seed it per item). The image is resized bilinearly, the label by nearest neighbour.
    """
    x, y = image[None, None].float(), label[None, None].float()
    if float(torch.rand(())) < aug.rot_flip:
        k = int(torch.randint(4, ()))
        dim = 2 + int(torch.randint(2, ()))
        x, y = torch.rot90(x, k, (2, 3)).flip(dim), torch.rot90(y, k, (2, 3)).flip(dim)
    elif float(torch.rand(())) < aug.rotate:
        angle = _uniform(-aug.max_angle, aug.max_angle)
        x, y = _rotate(x, angle, "bilinear"), _rotate(y, angle, "nearest")
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = F.interpolate(y, size=(size, size), mode="nearest")
    return x[0].clamp(0, 1), y[0, 0].long()


def _rotate(x: torch.Tensor, degrees: float, mode: str) -> torch.Tensor:
    """``x [1, 1, H, W]`` rotated about its centre (zeros outside)."""
    t = math.radians(degrees)
    h, w = x.shape[-2:]
    theta = torch.tensor([[math.cos(t), -math.sin(t) * h / w, 0.0], [math.sin(t) * w / h, math.cos(t), 0.0]])
    grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def strong_view(image: torch.Tensor, label: torch.Tensor, aug: SliceAugment) -> tuple[torch.Tensor, torch.Tensor]:
    """A weak view ``[1, S, S]``, ``[S, S]`` → cutout (label 0 inside) then brightness and contrast jitter."""
    x, y = image.clone(), label.clone()
    s_h, s_w = x.shape[-2:]
    if float(torch.rand(())) < aug.cutout:
        area = _uniform(*aug.cutout_area) * s_h * s_w
        ratio = _uniform(*aug.cutout_ratio)
        h = max(1, min(s_h, int(round(math.sqrt(area * ratio)))))
        w = max(1, min(s_w, int(round(math.sqrt(area / ratio)))))
        top, left = int(torch.randint(s_h - h + 1, ())), int(torch.randint(s_w - w + 1, ()))
        x[..., top : top + h, left : left + w] = torch.rand(h, w)
        y[top : top + h, left : left + w] = 0
    if aug.brightness > 0:
        x = x * _uniform(max(0.0, 1 - aug.brightness), 1 + aug.brightness)
    if aug.contrast > 0:
        mean = x.mean()
        x = (x - mean) * _uniform(max(0.0, 1 - aug.contrast), 1 + aug.contrast) + mean
    return x.clamp(0, 1), y


class SliceViews(torch.utils.data.Dataset):
    """Slices ``indices`` of ``ds`` as training items (draws from torch's RNG: wrap in a seeded loader).

    Item: ``image [1, S, S]`` (weak view), ``label [S, S]``, and with ``strong`` also ``image_strong``,
    ``label_strong``. Without ``labelled`` every label is 255 (ignore), so an unlabelled slice's mask can
    never reach a loss.
    """

    def __init__(self, ds: MedicalSlices, indices: Sequence[int], size: int, aug: SliceAugment,
                 strong: bool = True, labelled: bool = True):  # fmt: skip
        self.ds, self.indices, self.size, self.aug = ds, list(indices), size, aug
        self.strong, self.labelled = strong, labelled

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i = self.indices[k]
        image, label = self.ds.load_slice(i)
        if label is None or not self.labelled:
            if self.labelled:
                raise DataError(f"slice {self.ds[i].image_id!r} has no label but is in the labelled set")
            label = np.zeros(image.shape, np.uint8)
        xw, yw = weak_view(torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)), self.size, self.aug)
        item = {"image": xw, "label": yw}
        if self.strong:
            xs, ys = strong_view(xw, yw, self.aug)
            item.update(image_strong=xs, label_strong=ys)
        if not self.labelled:
            for key in ("label", "label_strong"):
                if key in item:
                    item[key] = torch.full_like(item[key], IGNORE)
        return item
