"""CLIP-ES and WeCLIP on the synthetic benchmark with the embedded toy CLIP (or real weights), beside MCIS.

The real stages (:mod:`weakseg.stages`) with a frozen CLIP, the demo's stage defaults unless said here:

- ``clip-es``: train-cls trains nothing; make-cams at one view (scale 1, no flip: the official setting); eval-cams
  (seed mIoU, train masks) and pseudo (weakseg's pseudo stage, as for MCIS);
- ``weclip``: train-cls trains WeCLIP's fusion + decoder on its online CLIP-ES/RFM pseudo labels (preset cpu192,
  ``--set`` overrides); the decoder is scored on val as WeCLIP's own segmenter (its tag-free argmax over every
  class, scales 1.0 / 0.75 + flip, WeCLIP's test views), without and with its test-time dense CRF; make-cams,
  eval-cams and pseudo on train give its seed / pseudo columns (the decoder's maps of the labelled classes).
- ``--train-seg`` (either method): also train-seg (DeepLabV3+, the demo's defaults) on the pseudo labels and
  eval-seg on val, as the demo does for MCIS.

One ``<method>.json`` per method in ``--results``; ``comparison.json`` beside them puts both next to the demo's MCIS
figures (``benchmarks/results/cpu-2026-11-30/demo/summary.json``). Data and the toy CLIP are those of
``benchmarks/clip_es.py``: pass its folders, or let this script make them. From the repository root, one thread::

    OMP_NUM_THREADS=1 python benchmarks/clip_es.py --out /tmp/clip --size small --stage pretrain \\
        --pretrain-set epochs=24
    OMP_NUM_THREADS=1 python benchmarks/clip_wsss.py --out /tmp/clip/wsss --data /tmp/clip/data-small \\
        --clip-weights /tmp/clip/toy-clip --method clip-es
    OMP_NUM_THREADS=1 python benchmarks/clip_wsss.py ... --method weclip --set epochs=4 rfm_start_step=100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from weakseg.cams.cam import make_views
from weakseg.cams.weclip import scores_to_label
from weakseg.config import apply_overrides
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import is_done
from weakseg.engine.device import resolve_device
from weakseg.engine.logging import setup_logging
from weakseg.eval.metrics import ConfusionMatrix, segmentation_class_names
from weakseg.methods.weclip import WeCLIPPredictor
from weakseg.stages.clip_pretrain import ClipPretrainConfig, clip_pretrain
from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
from weakseg.stages.eval_seg import EvalSegConfig, eval_seg
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.pseudo import PseudoConfig, make_pseudo
from weakseg.stages.train_cls import TrainClsConfig, load_classifier, train_cls
from weakseg.stages.train_seg import TrainSegConfig, train_seg
from weakseg.tasks import synthesize

sys.path.insert(0, str(Path(__file__).parent))
from common import save_result  # noqa: E402

DEMO = Path(__file__).parent / "results" / "cpu-2026-11-30" / "demo" / "summary.json"
VIEWS = {"clip-es": ((1.0,), False), "weclip": ((1.0, 0.75), True)}


def decoder_miou(cls_dir: Path, data: Path, split: str, scales: tuple[float, ...], flip: bool, crf: bool,
                 crf_bi_xy: float, long_side: int = 0, device: str = "cpu", tags: bool = False) -> dict:  # fmt: skip
    """WeCLIP's decoder as the segmenter: its tag-free prediction (``WeCLIPPredictor.segment``) scored on ``split``;
    views of long side ``long_side × scale`` (0: the training input size). ``tags``: a diagnostic, not WeCLIP's
    protocol: the argmax over background + the image's *labelled* classes only (reads the split's image labels)."""
    dev = resolve_device(device)
    net, method, _ = load_classifier(cls_dir, dev)
    sets = (f"crf={str(crf).lower()}", f"crf_bi_xy={crf_bi_xy}", *((f"input_size={long_side}",) if long_side else ()))
    cfg = apply_overrides(method.cfg, sets)
    ds = open_dataset(data, split)
    predictor = WeCLIPPredictor(net, ds, make_views(scales, flip), cfg, dev)
    cm = ConfusionMatrix(segmentation_class_names(ds.class_names))
    t0 = time.perf_counter()
    for i in range(len(ds)):
        if tags:
            classes = list(ds[i].labels)
            probs = predictor(i, classes)
            scores = torch.cat([(1 - probs.sum(0, keepdim=True)).clamp_min(0), probs])
            mask = scores_to_label(scores, classes).to(torch.uint8).cpu().numpy()
        else:
            _, mask = predictor.segment(ds.load_image(i))
        cm.update(ds.load_mask(i), mask)
    m = cm.metrics().to_dict()
    return {"miou": m["miou"], "per_class_iou": m.get("per_class"), "split": split, "scales": list(scales),
            "flip": flip, "image_labels_read": tags, "long_side": cfg.input_size, "crf": crf,
            "crf_bi_xy": crf_bi_xy if crf else None, "images": len(ds),
            "seconds": round(time.perf_counter() - t0, 1),
            "masks_read": f"ground-truth masks of split {split!r} of {data} (scoring only)"}  # fmt: skip


def compare(results: Path) -> None:
    """``comparison.json``: CLIP-ES / WeCLIP / the demo's MCIS, mIoU in %."""
    rows = {}
    demo = json.loads(DEMO.read_text())
    rows["mcis (demo)"] = {"seeds": demo["seeds"]["miou"], "pseudo": demo["pseudo"]["miou"],
                           "segmenter": demo["segmenter"]["miou"],
                           "source": str(DEMO.resolve().relative_to(DEMO.resolve().parents[4]))}  # fmt: skip
    for name in ("clip-es", "weclip"):
        path = results / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            rows[name] = {k: r["summary"][k]["miou"] for k in ("seeds", "pseudo", "segmenter") if k in r["summary"]}
            if "decoder_val" in r:
                rows[name]["decoder_val"] = r["decoder_val"]["miou"]
                rows[name]["decoder_val_crf"] = r["decoder_val_crf"]["miou"]
                if "decoder_val_with_tags" in r:
                    rows[name]["decoder_val_with_tags (diagnostic)"] = r["decoder_val_with_tags"]["miou"]
            rows[name]["source"] = str(path)
    pct = {n: {k: (round(100 * v, 2) if isinstance(v, float) else v) for k, v in r.items()} for n, r in rows.items()}
    save_result(results / "comparison.json", {"miou_percent": pct})
    print(json.dumps(pct, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folders")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/cpu-2026-11-30/clip_wsss"))
    p.add_argument("--method", choices=("clip-es", "weclip", "compare"), required=True)
    p.add_argument("--data", type=Path, default=None, help="dataset root (default: synthetic --size into OUT)")
    p.add_argument("--size", default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-weights", default="", help="CLIP file or `clip pretrain` folder (default: pretrain it)")
    p.add_argument("--pretrain-set", nargs="*", default=["epochs=24"], help="KEY=VALUE of clip pretrain")
    p.add_argument("--set", nargs="*", default=[], help="KEY=VALUE of the method (train-cls --set)")
    p.add_argument("--preset", default="cpu192", help="method preset (paper: the official recipe, real CLIP)")
    p.add_argument("--train-split", default="train", help="split to train on and score seeds/pseudo on")
    p.add_argument("--val-split", default="val")
    p.add_argument("--eval-size", type=int, default=0, help="WeCLIP decoder on val: long side at scale 1 (0: input)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-seg", action="store_true", help="also train and evaluate the DeepLabV3+ segmenter")
    p.add_argument("--crf-bi-xy", type=float, default=16.0, help="WeCLIP CRF bilateral std (64 at 512 px)")
    a = p.parse_args()
    torch.set_num_threads(1)
    setup_logging()
    a.results.mkdir(parents=True, exist_ok=True)
    if a.method == "compare":
        compare(a.results)
        return
    t0 = time.perf_counter()
    data = a.data or synthesize(a.out / f"data-{a.size}", a.size, a.seed)
    weights = a.clip_weights
    if not weights:
        cfg = ClipPretrainConfig(data=data, out=a.out / "toy-clip", preset="cpu192", set=tuple(a.pretrain_set),
                                 seed=a.seed, device="cpu")  # fmt: skip
        weights = str(clip_pretrain(cfg))
    scales, flip = VIEWS[a.method]
    run = a.out / a.method
    timings: dict[str, float] = {}
    old = a.results / f"{a.method}.json"
    earlier = json.loads(old.read_text()).get("timings_s", {}) if old.is_file() else {}

    def timed(name, fn, cfg):
        """Run a stage and time it; a stage complete from an earlier run keeps that run's time."""
        skipped = name in earlier and is_done(cfg.out) if name != "eval-cams" else False
        t = time.perf_counter()
        out = fn(cfg)
        timings[name] = earlier[name] if skipped else round(time.perf_counter() - t, 1)
        return out

    tr, va, dev = a.train_split, a.val_split, a.device
    cls = timed("cls", train_cls, TrainClsConfig(data=data, split=tr, out=run / "cls", method=a.method,
                                                 preset=a.preset, set=(f"clip_weights={weights}", *a.set),
                                                 backbone="tiny", seed=a.seed, device=dev))  # fmt: skip
    cams = timed("cams", make_cams, MakeCamsConfig(cls_dir=cls, data=data, split=tr, out=run / "cams",
                                                   scales=scales, flip=flip, seed=a.seed, device=dev))  # fmt: skip
    seeds = timed("eval-cams", eval_cams, EvalCamsConfig(cams=cams, data=data, split=tr,
                                                         out=run / "eval_cams.json"))  # fmt: skip
    pseudo = timed("pseudo", make_pseudo, PseudoConfig(cams=cams, data=data, split=tr, out=run / "pseudo",
                                                       seeds=run / "eval_cams.json"))  # fmt: skip
    summary: dict = {
        "seeds": {"miou": seeds["best_miou"], "threshold": seeds["best_threshold"],
                  "masks_read": f"ground-truth masks of split {tr!r} of {data}"},
        "pseudo": {"miou": pseudo.get("miou"), "miou_non_ignored": (pseudo.get("scored") or {}).get("miou"),
                   "ignored_fraction": pseudo.get("ignored_fraction"), "bg_threshold": pseudo.get("bg_threshold"),
                   "masks_read": f"ground-truth masks of split {tr!r} of {data}"},
    }  # fmt: skip
    if a.train_seg:
        seg = timed("seg", train_seg, TrainSegConfig(data=data, split=tr, out=run / "seg", labels=run / "pseudo",
                                                     seed=a.seed, device=dev))  # fmt: skip
        ev = timed("eval-seg", eval_seg, EvalSegConfig(data=data, split=va, seg_dir=seg, out=run / "eval_seg",
                                                       device=dev))  # fmt: skip
        summary["segmenter"] = {"miou": ev["miou"], "split": va, "scales": ev["scales"], "flip": ev["flip"],
                                "masks_read": ev["masks_read"]}  # fmt: skip
    result = {"command": " ".join(["python", *sys.argv]), "method": a.method, "clip_weights": weights,
              "set": a.set, "cam_scales": list(scales), "cam_flip": flip, "summary": summary,
              "timings_s": timings}  # fmt: skip
    zero_shot = Path(weights) / "metrics.json"
    if zero_shot.is_file():
        result["toy_clip_zero_shot"] = json.loads(zero_shot.read_text()).get("zero_shot")
    if a.method == "weclip":
        cls_dir = a.out / a.method / "cls"
        for key, crf, tags in (("decoder_val", False, False), ("decoder_val_crf", True, False),
                               ("decoder_val_with_tags", False, True)):  # fmt: skip
            result[key] = decoder_miou(cls_dir, Path(data), va, (1.0, 0.75), True, crf, a.crf_bi_xy, a.eval_size, dev,
                                       tags)  # fmt: skip
            timings[key] = result[key]["seconds"]
        result["cls_done"] = json.loads((cls_dir / "DONE").read_text()) if (cls_dir / "DONE").is_file() else None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save_result(a.results / f"{a.method}.json", result)
    compare(a.results)


if __name__ == "__main__":
    main()
