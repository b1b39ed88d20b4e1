"""``report.html``: one self-contained page per run (tables + image gallery, readable offline).

Reads what the stages left on disk (``summary.json``, ``eval/cams.json``, ``pseudo/metrics.json``,
``eval/seg/metrics.json``, CAMs, pseudo labels, predictions) and embeds thumbnails as base64 PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.palette import mask_to_png
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import atomic_write_bytes, load_npz

THUMB = 160


def _png_b64(arr: np.ndarray) -> str:
    im = Image.fromarray(arr)
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _colour_mask(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask_to_png(mask).convert("RGB"))


def _heat(cam: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Jet-like colour map of a [H, W] map in [0, 1] blended over the image."""
    c = np.clip(cam, 0, 1)[..., None]
    colour = np.concatenate(
        [
            np.clip(1.5 - np.abs(4 * c - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * c - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * c - 1), 0, 1),
        ],
        axis=-1,
    )
    return (0.5 * image + 0.5 * 255 * colour).astype(np.uint8)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _metric_row(stage: str, m: dict | None, note: str = "") -> str:
    if m is None:
        return ""

    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}"

    return (
        f"<tr><td>{html.escape(stage)}</td><td>{pct(m.get('miou'))}</td><td>{pct(m.get('mean_precision'))}</td>"
        f"<td>{pct(m.get('mean_recall'))}</td><td>{html.escape(note)}</td></tr>"
    )


def _per_class_table(stages: dict[str, dict]) -> str:
    stages = {k: v for k, v in stages.items() if v and "per_class" in v}
    if not stages:
        return ""
    names = list(next(iter(stages.values()))["per_class"])
    head = "".join(f"<th>{html.escape(s)}</th>" for s in stages)
    rows = []
    for n in names:
        cells = []
        for m in stages.values():
            iou = m["per_class"].get(n, {}).get("iou")
            cells.append("<td>–</td>" if iou is None else f"<td>{100 * iou:.1f}</td>")
        rows.append(f"<tr><td>{html.escape(n)}</td>{''.join(cells)}</tr>")
    return f"<h2>Per-class IoU (%)</h2><table><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def write_report(
    run_dir: Path, data: Path, fmt: str = "auto", train_split: str = "train", val_split: str = "val", n_images: int = 8
) -> Path:
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    cams_eval = _read_json(run_dir / "eval" / "cams.json")
    pseudo_m = _read_json(run_dir / "pseudo" / "metrics.json")
    seg_m = _read_json(run_dir / "eval" / "seg" / "metrics.json")
    seed_m = cams_eval.get("metrics") if cams_eval else None

    rows = [
        _metric_row(
            f"seeds (CAMs, {train_split})",
            seed_m,
            f"best background threshold {cams_eval['best_threshold']}" if cams_eval else "",
        ),
        _metric_row(
            f"pseudo labels ({train_split})",
            pseudo_m,
            f"ignored pixels {100 * pseudo_m['ignored_fraction']:.1f}% (counted as background); "
            f"mIoU of the non-ignored pixels {100 * pseudo_m['scored']['miou']:.1f}"
            if pseudo_m and pseudo_m.get("ignored_fraction") is not None and (pseudo_m.get("scored") or {}).get("miou")
            else "",
        ),
        _metric_row(f"segmenter ({val_split})", seg_m),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>weakseg report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}",
        ".g img{margin:2px;border:1px solid #ddd}.g td{text-align:center}</style></head><body>",
        f"<h1>weakseg run: {html.escape(str(run_dir))}</h1>",
        f"<p>supervision: {html.escape(str(summary.get('supervision', '?')))}, "
        f"method: {html.escape(str(summary.get('method', '?')))}</p>",
        "<h2>mIoU per stage (%)</h2><table><tr><th>stage</th><th>mIoU</th><th>precision</th><th>recall</th>"
        f"<th>note</th></tr>{''.join(rows)}</table>",
    ]
    if summary.get("timings_s"):
        t = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in summary["timings_s"].items())
        parts.append(f"<h2>Stage times (s)</h2><table><tr><th>stage</th><th>seconds</th></tr>{t}</table>")
    parts.append(_per_class_table({"seeds": seed_m, "pseudo": pseudo_m, "segmenter": seg_m}))

    # gallery 1: training images — image / CAM / pseudo label / ground truth
    train = open_dataset(data, train_split, fmt)
    cams_dir, pseudo_dir = run_dir / "cams", run_dir / "pseudo"
    if cams_dir.is_dir():
        parts.append(
            f"<h2>Gallery: {html.escape(train_split)} — image / CAM / pseudo label / ground truth</h2><table class='g'>"
        )
        for i in _pick(len(train), n_images):
            rec = train[i]
            cam_file = cams_dir / f"{rec.image_id}.npz"
            if not cam_file.is_file():
                continue
            image = train.load_image(i)
            cams = load_npz(cam_file)["cams"].astype(np.float32)
            cam = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], np.float32)
            cells = [image, _heat(cam, image)]
            pl = pseudo_dir / f"{rec.image_id}.png"
            if pl.is_file():
                cells.append(_colour_mask(np.asarray(Image.open(pl))))
            gt = train.load_mask(i)
            if gt is not None:
                cells.append(_colour_mask(gt))
            names = ", ".join(train.class_names[c] for c in rec.labels)
            parts.append(_gallery_row(rec.image_id + f" ({names})", cells))
        parts.append("</table>")

    # gallery 2: validation images — image / prediction / ground truth
    pred_dir = run_dir / "eval" / "seg" / "pred"
    if pred_dir.is_dir():
        val = open_dataset(data, val_split, fmt)
        parts.append(f"<h2>Gallery: {html.escape(val_split)} — image / prediction / ground truth</h2><table class='g'>")
        for i in _pick(len(val), n_images):
            rec = val[i]
            pf = pred_dir / f"{rec.image_id}.png"
            if not pf.is_file():
                continue
            cells = [val.load_image(i), _colour_mask(np.asarray(Image.open(pf)))]
            gt = val.load_mask(i)
            if gt is not None:
                cells.append(_colour_mask(gt))
            parts.append(_gallery_row(rec.image_id, cells))
        parts.append("</table>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    return out


def _pick(n: int, k: int) -> list[int]:
    if n == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, k))})


def _gallery_row(title: str, cells: list[np.ndarray]) -> str:
    imgs = "".join(f"<td><img src='data:image/png;base64,{_png_b64(c)}'></td>" for c in cells)
    return f"<tr><td>{html.escape(title)}</td>{imgs}</tr>"
