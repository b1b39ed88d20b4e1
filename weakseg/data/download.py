"""Fetch and unpack the public WSSS benchmarks (PASCAL VOC 2012 + SBD aug, MS-COCO 2014).

``download(name, dest)`` looks in ``dest`` for each archive, downloads the missing ones from their
official addresses, extracts them (rejecting any member that would land outside ``dest``) and checks
the file counts. Where the network fails, the DataError lists exactly which archives to fetch by
hand, where to put them and what to run next; placed archives are then only extracted.

Layout after extraction (the root returned, readable by :func:`weakseg.data.registry.open_dataset`):

- ``voc``:  ``<dest>/VOCdevkit/VOC2012`` with ``SegmentationClassAug/`` and
  ``ImageSets/Segmentation/train_aug.txt`` (the aug masks' ids minus the val ids);
- ``coco``: ``<dest>`` with ``train2014/``, ``val2014/`` and ``annotations/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from weakseg.data.images import display_path
from weakseg.errors import DataError, unknown_name

log = logging.getLogger(__name__)

RERUN = "weakseg data download --name {name} --dest {dest}"


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    about: str
    into: str = ""  # sub-folder of dest to extract into


ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "voc": (
        Archive(
            "VOCtrainval_11-May-2012.tar",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "PASCAL VOC 2012 trainval images and masks, 1.9 GB",
        ),
        Archive(
            "SegmentationClassAug.zip",
            "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
            "SBD masks of the 10,582 train_aug images as PNGs (converted from "
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz)",
            into="VOCdevkit/VOC2012",
        ),
    ),
    "coco": (
        Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", "COCO 2014 train images, 13 GB"),
        Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip", "COCO 2014 val images, 6 GB"),
        Archive(
            "annotations_trainval2014.zip",
            "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
            "COCO 2014 instance annotations, 241 MB",
        ),
    ),
}
# Files expected in each folder after extraction (relative to dest).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "voc": {"VOCdevkit/VOC2012/JPEGImages": 17125, "VOCdevkit/VOC2012/SegmentationClass": 2913},
    "coco": {"train2014": 82783, "val2014": 40504},
}
ROOTS = {"voc": "VOCdevkit/VOC2012", "coco": ""}


def _urlfetch(url: str, target: Path, timeout: float = 30.0) -> None:
    """Stream ``url`` into ``target`` (via a .part file, renamed when complete)."""
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:  # noqa: S310 (fixed https/http URLs)
        shutil.copyfileobj(r, f, length=1 << 20)
    os.replace(part, target)


def _inside(dest: Path, name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return False
    target = (dest / p).resolve()
    return target == dest or dest in target.parents


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar or zip archive into ``dest``; refuse members (or links) that would escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    name = display_path(archive)

    def refuse(member: str) -> DataError:
        return DataError(
            f"{name} contains {member!r}, which would be written outside {display_path(dest)}; refusing to "
            "extract it. Delete the archive and download it again from the official address"
        )

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
                for i in infos:
                    if not _inside(dest, i.filename):
                        raise refuse(i.filename)
                for i in infos:
                    zf.extract(i, dest)
            return
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    if not _inside(dest, m.name):
                        raise refuse(m.name)
                    if m.issym() or m.islnk():
                        link = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
                        if not _inside(dest, link):
                            raise refuse(f"{m.name} -> {m.linkname}")
                    elif not (m.isfile() or m.isdir()):
                        raise refuse(m.name)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(dest, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    tf.extractall(dest, members=members)
            return
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot extract {name} ({e}); damaged or incomplete: delete it, download again") from None
    raise DataError(f"{name} is neither a tar nor a zip archive; delete it and download it again")


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else 0


def _write_train_aug(root: Path) -> None:
    """``train_aug.txt`` = ids of the SBD aug masks minus the VOC 2012 val ids (the usual 10,582)."""
    aug, sets = root / "SegmentationClassAug", root / "ImageSets" / "Segmentation"
    out = sets / "train_aug.txt"
    if out.exists() or not aug.is_dir():
        return
    val_file = sets / "val.txt"
    val = set(val_file.read_text().split()) if val_file.is_file() else set()
    ids = sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{i}\n" for i in ids))
    if len(ids) != 10582:
        log.warning("train_aug.txt lists %d ids (the standard split has 10,582)", len(ids))


def download(
    name: str,
    dest: str | Path,
    *,
    expected_counts: Mapping[str, int] | None = None,
    fetch: Callable[[str, Path], None] | None = None,
) -> Path:
    """Download (where missing), extract and verify a benchmark; returns the dataset root.

    ``expected_counts`` overrides :data:`EXPECTED_COUNTS` (folder relative to ``dest`` -> file count);
    ``fetch(url, target)`` replaces the urllib download (both for tests).
    """
    if name not in ARCHIVES:
        raise unknown_name("dataset to download", name, ARCHIVES)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _urlfetch
    failed: list[tuple[Archive, str]] = []
    for a in ARCHIVES[name]:
        target = dest / a.filename
        if target.is_file():
            continue
        log.info("downloading %s (%s)", a.url, a.about)
        try:
            fetch(a.url, target)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            failed.append((a, str(getattr(e, "reason", e))))
    if failed:
        width = max(len(a.filename) for a, _ in failed)
        lines = "\n".join(f"  {a.filename:<{width}}  from {a.url}\n  {'':<{width}}  ({a.about})" for a, _ in failed)
        raise DataError(
            f"could not download {len(failed)} archive(s) of {name!r} ({failed[0][1]}). Download them by hand "
            f"(browser, wget or curl) and place them, unrenamed, in {display_path(dest.resolve())}:\n{lines}\n"
            f"then run again: {RERUN.format(name=name, dest=display_path(dest))}  "
            "(archives found there are extracted, not downloaded)"
        )
    for a in ARCHIVES[name]:
        marker = dest / f".{a.filename}.extracted"
        if marker.exists():
            continue
        log.info("extracting %s", a.filename)
        safe_extract(dest / a.filename, dest / a.into)
        marker.write_text("ok\n")
    root = dest / ROOTS[name]
    if name == "voc":
        _write_train_aug(root)
    counts = dict(EXPECTED_COUNTS[name] if expected_counts is None else expected_counts)
    wrong = [(d, n, _count_files(dest / d)) for d, n in counts.items() if _count_files(dest / d) != n]
    if wrong:
        detail = "; ".join(f"{display_path(dest / d)} holds {got} files, expected {n:,}" for d, n, got in wrong)
        raise DataError(
            f"{name} looks incomplete after extraction: {detail}. An archive is probably truncated: delete it, "
            f"its .extracted marker and the folder, download it again and rerun "
            f"`{RERUN.format(name=name, dest=display_path(dest))}`"
        )
    return root
