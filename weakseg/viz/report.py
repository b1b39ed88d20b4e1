"""``report.html``: one self-contained page per run (tables, small plots, image galleries; readable offline).

Reads what the stages left on disk (``summary.json``, ``eval/cams.json``, ``pseudo/metrics.json``,
``eval/seg/metrics.json``, the tensorboard logs in ``cls/tb`` and ``seg/tb``, CAMs, pseudo labels, predictions)
and shows: the class colours, mIoU per stage with the masks each number read, where the background threshold
came from, the seed threshold sweep and the training losses as inline SVG plots, per-class IoU as bars, and
galleries (each labelled class's CAM of a training image; validation predictions). Thumbnails are base64 PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.palette import PALETTE, mask_to_png
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import atomic_write_bytes, load_npz

log = logging.getLogger(__name__)

THUMB = 144
STAGE_COLOURS = {"seeds": "#e6550d", "pseudo": "#3182bd", "segmenter": "#31a354"}
LINE_COLOURS = ("#3182bd", "#e6550d", "#31a354", "#756bb1", "#d62728", "#8c6d31", "#17becf", "#7f7f7f")
CSS = """
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:2px}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:middle}
th{background:#f4f4f4}td.l,th.l{text-align:left}td.w{max-width:330px;overflow-wrap:anywhere}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #888;vertical-align:middle;margin-right:5px}
.legend span.item{display:inline-block;margin:2px 14px 2px 0;white-space:nowrap}
.bar{display:inline-block;height:10px;vertical-align:middle;margin-right:4px}
.plots{display:flex;flex-wrap:wrap;gap:14px}.plots figure{margin:0}
.plots figcaption{max-width:none;white-space:normal;width:340px}
figure{margin:2px;display:inline-block;text-align:center;vertical-align:top}
figcaption{font-size:12px;max-width:150px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.g img{border:1px solid #ddd}.row{margin:8px 0;padding-bottom:6px;border-bottom:1px solid #eee}
.row .title{font-size:13px;margin-bottom:2px}.warn{color:#b00;font-weight:bold}.note{color:#555;font-size:13px}
"""


def _png_b64(arr: np.ndarray, size: int = THUMB, nearest: bool = False) -> str:
    """PNG (base64) of an image scaled to fit ``size`` px (small images are enlarged; masks with ``nearest``)."""
    im = Image.fromarray(arr)
    scale = size / max(im.size)
    if scale != 1:
        resample = Image.NEAREST if nearest else Image.BILINEAR if scale > 1 else Image.LANCZOS
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
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


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def _swatch(index: int) -> str:
    return f"<span class='sw' style='background:{_hex(PALETTE[index])}'></span>"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


# ---------------------------------------------------------------------------- tensorboard scalars


def read_scalars(tb_dir: Path, skip: Sequence[str] = ("lr", "grad_norm")) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of a tensorboard log folder (tags ending in one of ``skip`` left out)."""
    if not Path(tb_dir).is_dir():
        return {}
    # tensorboard is a dependency, but its event reader takes half a second to import: only reports need it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quiet = logging.getLogger("tensorboard")  # its directory watcher logs "No path found after ..." at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags = [t for t in acc.Tags().get("scalars", []) if t.split("/")[-1] not in skip]
        return {t: [(e.step, float(e.value)) for e in acc.Scalars(t)] for t in tags}
    except Exception as e:  # a damaged log must not cost the whole report
        log.warning("report: cannot read the tensorboard logs in %s (%s)", tb_dir, e)
        return {}
    finally:
        quiet.setLevel(level)


# ---------------------------------------------------------------------------- inline SVG plots


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step - 1e-9) * step
    return [round(float(v), 10) + 0.0 for v in np.arange(start, hi + step * 1e-6, step)]  # + 0.0: no "-0"


def svg_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    marks: Sequence[tuple[float, str, str]] = (),
    width: int = 340,
    height: int = 220,
    ylim: tuple[float, float] | None = None,
) -> str:
    """A small line plot as inline SVG: one polyline per series, dashed vertical ``marks`` ``(x, label, colour)``."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    left, right, top, bottom = 48, 12 + 64 * (len(series) > 1), 26, 36  # several series: a legend on the right
    xs = [p[0] for p in pts] + [m[0] for m in marks]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = ylim if ylim is not None else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    if ylim is None:
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
        f"font-size='10'><rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='#fafafa' stroke='#999'/>",
        f"<text x='{width / 2}' y='14' text-anchor='middle' font-size='12'>{html.escape(title)}</text>",
        f"<text x='{left + pw / 2}' y='{height - 4}' text-anchor='middle'>{html.escape(xlabel)}</text>",
        f"<text x='11' y='{top + ph / 2}' text-anchor='middle' transform='rotate(-90 11 {top + ph / 2})'>"
        f"{html.escape(ylabel)}</text>",
    ]
    for t in _ticks(x0, x1):
        out.append(
            f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{top + ph}' y2='{top + ph + 3}' stroke='#999'/>"
            f"<text x='{sx(t):.1f}' y='{top + ph + 13}' text-anchor='middle'>{t:g}</text>"
        )
    for t in _ticks(y0, y1):
        out.append(
            f"<line x1='{left}' x2='{left + pw}' y1='{sy(t):.1f}' y2='{sy(t):.1f}' stroke='#e4e4e4'/>"
            f"<text x='{left - 4}' y='{sy(t) + 3:.1f}' text-anchor='end'>{t:g}</text>"
        )
    for k, (x, label, colour) in enumerate(marks):
        out.append(
            f"<line x1='{sx(x):.1f}' x2='{sx(x):.1f}' y1='{top}' y2='{top + ph}' stroke='{colour}' "
            f"stroke-dasharray='4 3'/><text x='{sx(x) + (-3 if sx(x) > left + pw / 2 else 3):.1f}' "
            f"y='{top + 11 + 11 * k}' fill='{colour}' text-anchor='{'end' if sx(x) > left + pw / 2 else 'start'}'>"
            f"{html.escape(label)}</text>"
        )
    for k, (name, s) in enumerate(series.items()):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        if len(s) == 1:
            out.append(f"<circle cx='{sx(s[0][0]):.1f}' cy='{sy(s[0][1]):.1f}' r='3' fill='{colour}'/>")
        else:
            out.append(f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        if len(series) > 1:
            ly, lx = top + 8 + 12 * k, left + pw + 6
            out.append(
                f"<line x1='{lx}' x2='{lx + 12}' y1='{ly - 3}' y2='{ly - 3}' stroke='{colour}' stroke-width='2'/>"
                f"<text x='{lx + 15}' y='{ly}'>{html.escape(name)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------- sections


def _legend(class_names: Sequence[str]) -> str:
    items = [("background", 0), *((n, c + 1) for c, n in enumerate(class_names)), ("ignore (255)", 255)]
    spans = "".join(f"<span class='item'>{_swatch(i)}{html.escape(n)}</span>" for n, i in items)
    ramp = _heat(np.tile(np.linspace(0, 1, 120, dtype=np.float32), (10, 1)), np.full((10, 120, 3), 255.0))
    cam = f"<span class='item'>CAM 0 <img src='data:image/png;base64,{_png_b64(ramp, 120)}'> 1</span>"
    return f"<h2>Classes</h2><p class='legend'>{spans}<br>{cam} (over the image)</p>"


def _stage_rows(
    cams_eval: dict | None, pseudo_m: dict | None, seg_m: dict | None, summary: dict, train_split: str, val_split: str
) -> str:
    rows = []

    def row(stage: str, m: dict | None, masks: str, note: str = "") -> None:
        m = m or {}
        rows.append(
            f"<tr><td class='l'>{html.escape(stage)}</td><td>{_pct(m.get('miou'))}</td>"
            f"<td>{_pct(m.get('mean_precision'))}</td><td>{_pct(m.get('mean_recall'))}</td>"
            f"<td class='l w'>{html.escape(masks)}</td><td class='l w'>{html.escape(note)}</td></tr>"
        )

    seeds = summary.get("seeds") or {}
    if cams_eval:
        row(
            f"seeds (CAMs, {train_split})",
            cams_eval.get("metrics"),
            _masks(cams_eval),
            f"best background threshold {cams_eval['best_threshold']:g}",
        )
    elif seeds.get("skipped"):
        row(f"seeds (CAMs, {train_split})", None, "none", f"not scored: {seeds['skipped']}")
    if pseudo_m:
        note = ""
        if pseudo_m.get("ignored_fraction") is not None and (pseudo_m.get("scored") or {}).get("miou") is not None:
            note = (
                f"ignored pixels {100 * pseudo_m['ignored_fraction']:.1f}% (counted as background); "
                f"mIoU of the non-ignored pixels {100 * pseudo_m['scored']['miou']:.1f}"
            )
        elif pseudo_m.get("ignored_fraction") is not None:
            note = f"ignored pixels {100 * pseudo_m['ignored_fraction']:.1f}%; no masks: not scored"
        row(f"pseudo labels ({train_split})", pseudo_m, _masks(pseudo_m), note)
    if seg_m:
        row(f"segmenter ({seg_m.get('split', val_split)})", seg_m, _masks(seg_m), seg_m.get("note", ""))
    if not rows:
        return ""
    head = "<tr><th class='l'>stage</th><th>mIoU</th><th>precision</th><th>recall</th><th class='l'>masks read</th>"
    return f"<h2>mIoU per stage (%)</h2><table>{head}<th class='l'>note</th></tr>{''.join(rows)}</table>"


def _masks(result: dict) -> str:
    """Which masks a stage's numbers read: its ``masks_read`` ("none" when it read none; "–" for older outputs)."""
    if "masks_read" not in result:
        return "–"
    return result["masks_read"] or "none"


def _threshold_line(pseudo_m: dict | None, summary: dict) -> str:
    p = pseudo_m or summary.get("pseudo") or {}
    if p.get("bg_threshold") is None:
        return ""
    source = p.get("bg_threshold_source") or "source not recorded"
    return f"<p>Background threshold of the pseudo labels: <b>{p['bg_threshold']:g}</b> — {html.escape(source)}.</p>"


def _plots(run_dir: Path, cams_eval: dict | None, pseudo_m: dict | None) -> str:
    figs = []
    if cams_eval and cams_eval.get("per_threshold"):
        pts = sorted((float(t), 100 * v) for t, v in cams_eval["per_threshold"].items() if v is not None)
        marks = [(float(cams_eval["best_threshold"]), f"best {cams_eval['best_threshold']:g}", "#31a354")]
        if pseudo_m and pseudo_m.get("bg_threshold") is not None:
            marks.append((float(pseudo_m["bg_threshold"]), f"pseudo bg {pseudo_m['bg_threshold']:g}", "#e6550d"))
        svg = svg_plot(
            {"seed mIoU": pts}, "Seed mIoU vs background threshold", "background threshold", "mIoU (%)", marks
        )
        figs.append(
            f"<figure>{svg}<figcaption class='note'>{html.escape(cams_eval.get('masks_read', ''))}"
            "</figcaption></figure>"
        )
    for stage, title in (("cls", "Classifier training loss"), ("seg", "Segmenter training loss")):
        scalars = read_scalars(run_dir / stage / "tb")
        if scalars:
            series = {t.split("/")[-1]: v for t, v in scalars.items()}
            figs.append(f"<figure>{svg_plot(series, title, 'step', 'loss')}</figure>")
    return f"<h2>Plots</h2><div class='plots'>{''.join(figs)}</div>" if figs else ""


def _per_class_bars(stages: dict[str, dict | None]) -> str:
    def scored(m: dict | None) -> bool:  # a stage without masks has per_class entries with no IoU
        return bool(m and m.get("per_class") and any(c.get("iou") is not None for c in m["per_class"].values()))

    stages = {k: v for k, v in stages.items() if scored(v)}
    if not stages:
        return ""
    names = list(next(iter(stages.values()))["per_class"])
    key = "".join(
        f"<span class='item'><span class='bar' style='width:24px;background:{STAGE_COLOURS[s]}'></span>"
        f"{html.escape(s)}</span>"
        for s in stages
    )
    head = "".join(f"<th class='l'>{html.escape(s)}</th>" for s in stages)
    rows = []
    for k, n in enumerate(names):
        cells = []
        for s, m in stages.items():
            iou = m["per_class"].get(n, {}).get("iou")
            if iou is None or iou != iou:  # absent or NaN (class absent from both masks and predictions)
                cells.append("<td class='l'>–</td>")
            else:
                bar = f"<span class='bar' style='width:{max(1, round(150 * iou))}px;background:{STAGE_COLOURS[s]}'>"
                cells.append(f"<td class='l'>{bar}</span>{100 * iou:.1f}</td>")
        index = 0 if k == 0 else k  # the first row is background (index 0), then class c at c + 1
        rows.append(f"<tr><td class='l'>{_swatch(index)}{html.escape(n)}</td>{''.join(cells)}</tr>")
    return (
        f"<h2>Per-class IoU (%)</h2><p class='legend'>{key}</p>"
        f"<table><tr><th class='l'>class</th>{head}</tr>{''.join(rows)}</table>"
    )


def _figure(arr: np.ndarray, caption: str, swatch: int | None = None, mask: bool = False) -> str:
    sw = _swatch(swatch) if swatch is not None else ""
    return (
        f"<figure><img src='data:image/png;base64,{_png_b64(arr, nearest=mask)}'><figcaption>{sw}"
        f"{html.escape(caption)}"
        "</figcaption></figure>"
    )


def _train_gallery(run_dir: Path, train, n_images: int) -> str:
    cams_dir, pseudo_dir = run_dir / "cams", run_dir / "pseudo"
    if not cams_dir.is_dir():
        return ""
    rows, peaks = [], []
    for i in _pick(len(train), n_images):
        rec = train[i]
        cam_file = cams_dir / f"{rec.image_id}.npz"
        if not cam_file.is_file():
            continue
        image = train.load_image(i)
        z = load_npz(cam_file)
        cams, classes = z["cams"].astype(np.float32), [int(c) for c in np.asarray(z["classes"]).reshape(-1)]
        figs = [_figure(image, "image")]
        for cam, c in zip(cams, classes, strict=True):
            if cam.shape != image.shape[:2]:
                cam = np.asarray(Image.fromarray(cam).resize(image.shape[1::-1], Image.BILINEAR))
            peaks.append(float(cam.max()))
            figs.append(_figure(_heat(cam, image), f"CAM {train.class_names[c]}", c + 1))
        pl = pseudo_dir / f"{rec.image_id}.png"
        if pl.is_file():
            figs.append(_figure(_colour_mask(np.asarray(Image.open(pl))), "pseudo label", mask=True))
        gt = train.load_mask(i)
        if gt is not None:
            figs.append(_figure(_colour_mask(gt), "ground truth", mask=True))
        names = ", ".join(train.class_names[c] for c in rec.labels) or "no object"
        rows.append(
            f"<div class='row'><div class='title'>{html.escape(rec.image_id)} ({html.escape(names)})</div>"
            f"{''.join(figs)}</div>"
        )
    if not rows:
        return ""
    warn = ""
    if peaks and max(peaks) < 1e-3:
        warn = (
            "<p class='warn'>Every CAM shown is zero: the classifier gives no positive evidence for the "
            "images' own classes (too little training?); the pseudo labels are then all background.</p>"
        )
    title = f"Gallery: {html.escape(train.split)} — image, the CAM of each labelled class, pseudo label, ground truth"
    return f"<h2>{title}</h2>{warn}<div class='g'>{''.join(rows)}</div>"


def _val_gallery(run_dir: Path, data: Path, fmt: str, val_split: str, n_images: int) -> str:
    pred_dir = run_dir / "eval" / "seg" / "pred"
    if not pred_dir.is_dir():
        return ""
    val = open_dataset(data, val_split, fmt)
    rows = []
    for i in _pick(len(val), n_images):
        rec = val[i]
        pf = pred_dir / f"{rec.image_id}.png"
        if not pf.is_file():
            continue
        figs = [
            _figure(val.load_image(i), "image"),
            _figure(_colour_mask(np.asarray(Image.open(pf))), "prediction", mask=True),
        ]
        gt = val.load_mask(i)
        if gt is not None:
            figs.append(_figure(_colour_mask(gt), "ground truth", mask=True))
        rows.append(f"<div class='row'><div class='title'>{html.escape(rec.image_id)}</div>{''.join(figs)}</div>")
    title = f"Gallery: {html.escape(val_split)} — image, segmenter prediction, ground truth"
    return f"<h2>{title}</h2><div class='g'>{''.join(rows)}</div>" if rows else ""


def write_report(
    run_dir: Path, data: Path, fmt: str = "auto", train_split: str = "train", val_split: str = "val", n_images: int = 8
) -> Path:
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    cams_eval = _read_json(run_dir / "eval" / "cams.json")
    pseudo_m = _read_json(run_dir / "pseudo" / "metrics.json")
    seg_m = _read_json(run_dir / "eval" / "seg" / "metrics.json")
    train = open_dataset(data, train_split, fmt)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>weakseg report</title><style>{CSS}</style></head>"
        f"<body><h1>weakseg run: {html.escape(str(run_dir))}</h1>",
        f"<p>task: {html.escape(str(summary.get('task', '?')))} — supervision: "
        f"{html.escape(str(summary.get('supervision', '?')))}, method: {html.escape(str(summary.get('method', '?')))}"
        f"; data: {html.escape(str(data))}</p>",
        _legend(train.class_names),
        _stage_rows(cams_eval, pseudo_m, seg_m, summary, train_split, val_split),
        _threshold_line(pseudo_m, summary),
        _plots(run_dir, cams_eval, pseudo_m),
        _per_class_bars({"seeds": (cams_eval or {}).get("metrics"), "pseudo": pseudo_m, "segmenter": seg_m}),
    ]
    if summary.get("timings_s"):
        t = "".join(
            f"<tr><td class='l'>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in summary["timings_s"].items()
        )
        parts.append(f"<h2>Stage times (s)</h2><table><tr><th class='l'>stage</th><th>seconds</th></tr>{t}</table>")
    parts.append(_train_gallery(run_dir, train, n_images))
    parts.append(_val_gallery(run_dir, data, fmt, val_split, n_images))
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_bytes(out, "\n".join(p for p in parts if p).encode())
    return out


def _pick(n: int, k: int) -> list[int]:
    if n == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, k))})
