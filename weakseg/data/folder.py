"""A plain folder format for your own data::

    <root>/images/<name>.<jpg|png|...>
    <root>/masks/<name>.png        optional class-index masks (same stem as the image)
    <root>/labels.csv              image-level labels in the cls_labels.csv format (image_id = stem)
    <root>/classes.txt             one foreground class name per line
    <root>/splits/<split>.txt      optional; one image name (or stem) per line. Split "all" = every image

An image needs a row in ``labels.csv`` (an empty row = no object) or a mask to get its labels.
"""

from __future__ import annotations

from pathlib import Path

from weakseg.data.check import Entry, Problem, Scan, raise_errors
from weakseg.data.dataset import MaskFileDataset, Record
from weakseg.data.images import IMAGE_EXTENSIONS, display_path, is_utf8_name, load_mask
from weakseg.data.labels import CLASSES_TXT, labels_from_mask, read_classes, scan_cls_labels
from weakseg.errors import DataError

LABELS_CSV = "labels.csv"


def is_folder(root: Path) -> bool:
    return (root / "images").is_dir() and ((root / LABELS_CSV).is_file() or (root / "masks").is_dir())


def available_splits(root: str | Path) -> list[str]:
    d = Path(root) / "splits"
    return ["all"] + (sorted(p.stem for p in d.glob("*.txt") if p.stem != "all") if d.is_dir() else [])


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def resolve_listed(root: Path, image_dir: Path, split_file: Path) -> tuple[list[Path], list[Problem]]:
    """Images named by a split file: a path relative to the root, a file name or a stem in ``image_dir``."""
    try:
        text = split_file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"split file not found: {display_path(split_file)}; use split 'all' or create the file "
            "with one image name per line"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{display_path(split_file)} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    by_stem: dict[str, Path] = {}
    for p in list_images(image_dir):
        by_stem.setdefault(p.stem, p)
    out, problems = [], []
    for line in text.splitlines():
        tok = line.strip()
        if not tok:
            continue
        cands = [root / tok, image_dir / tok, Path(tok)]
        hit = next((c for c in cands if c.suffix and c.is_file()), None) or by_stem.get(Path(tok).stem)
        if hit is None:
            missing = image_dir / (tok if Path(tok).suffix else f"{tok}.jpg")
            problems.append(
                Problem(
                    display_path(missing),
                    "missing_file",
                    f"image {tok!r} listed in {display_path(split_file)} does not exist in {display_path(image_dir)}",
                    f"add the image or remove the line from {display_path(split_file)}",
                )
            )
            continue
        out.append(hit)
    return out, problems


def non_utf8_problems(paths: list[Path]) -> tuple[list[Path], list[Problem]]:
    keep, problems = [], []
    for p in paths:
        if is_utf8_name(p):
            keep.append(p)
        else:
            name = display_path(p)
            problems.append(
                Problem(
                    name,
                    "non_utf8_name",
                    f"file name {name} is not valid UTF-8, so label and split files cannot name it",
                    "rename it to a UTF-8 name (e.g. `convmv -f latin1 -t utf8 --notest <file>`)",
                )
            )
    return keep, problems


def scan(root: str | Path, split: str = "all") -> Scan:
    root = Path(root)
    if not (root / CLASSES_TXT).is_file():
        raise DataError(f"{display_path(root / CLASSES_TXT)} not found; write one foreground class name per line")
    names = read_classes(root / CLASSES_TXT)
    image_dir, mask_dir = root / "images", root / "masks"
    if split == "all":
        images, problems = list_images(image_dir), []
        source = display_path(image_dir)
    else:
        split_file = root / "splits" / f"{split}.txt"
        images, problems = resolve_listed(root, image_dir, split_file)
        source = display_path(split_file)
    images, bad = non_utf8_problems(images)
    problems += bad
    labels: dict[str, tuple[int, ...]] = {}
    csv_path = root / LABELS_CSV
    if csv_path.is_file():
        labels, issues = scan_cls_labels(csv_path, names)
        problems += [
            Problem(display_path(csv_path), f"labels_{i.kind}", i.message, "fix the row in the label file")
            for i in issues
        ]
    entries: list[Entry] = []
    stems: dict[str, Path] = {}
    for img in images:
        if img.stem in stems and stems[img.stem] != img:
            problems.append(
                Problem(
                    display_path(img),
                    "duplicate_id",
                    f"{display_path(img)} and {display_path(stems[img.stem])} share the id {img.stem!r}",
                    "rename one of them; image ids are file names without extension",
                )
            )
            continue
        stems[img.stem] = img
        mask = mask_dir / f"{img.stem}.png"
        mask = mask if mask.is_file() else None
        lab = labels.get(img.stem)
        if lab is None and mask is None:
            problems.append(
                Problem(
                    display_path(img),
                    "no_labels",
                    f"image {img.name!r} has no row in {LABELS_CSV} and no mask; it is left out",
                    f"add a row '{img.stem},<class names>' to {display_path(csv_path)} (empty = no object)",
                    "warning",
                )
            )
            continue
        entries.append(Entry(img.stem, img, mask, lab, source))
    return Scan(names, entries, problems)


class FolderDataset(MaskFileDataset):
    """A split of a plain folder dataset (see module docstring)."""

    def __init__(self, root: str | Path, split: str = "all"):
        root = Path(root)
        s = scan(root, split)
        raise_errors(s.problems, f"{display_path(root)} (folder format, split {split!r})", n_entries=len(s.entries))
        records = []
        for e in s.entries:
            labels = e.labels
            if labels is None:
                try:
                    labels = labels_from_mask(load_mask(e.mask_path), len(s.class_names))  # type: ignore[arg-type]
                except ValueError as err:
                    raise DataError(f"mask {display_path(e.mask_path)}: {err}; fix the mask or classes.txt") from None
            records.append(Record(e.image_id, e.image_path, labels))
        super().__init__(root, split, s.class_names, records, [e.mask_path for e in s.entries])
