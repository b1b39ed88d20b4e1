"""CLIP-ES seeds and pseudo labels on the synthetic benchmark with the embedded toy CLIP (or real weights).

Stages, each resumable: the synthetic data; ``clip pretrain`` (the toy CLIP, zero-shot metrics on val; skipped
with ``--clip-weights``); ``train-cls --method clip-es --set clip_weights=...`` (trains nothing); ``make-cams`` on
the train split; ``eval-cams`` (seed mIoU, best background threshold); ``pseudo`` (pseudo-label mIoU). One
``result.json`` per variant under ``--out``; the raw stage JSONs stay in the run folders. Run from the repository
root with one thread, e.g.::

    OMP_NUM_THREADS=1 python benchmarks/clip_es.py --out runs/bench-clip-es --size small
    OMP_NUM_THREADS=1 python benchmarks/clip_es.py --out runs/bench-clip-es --size small --stage pretrain   # only

``--stage`` stops after a stage (pretrain, cams, pseudo), so that each process stays short.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from weakseg.engine.logging import setup_logging
from weakseg.stages.clip_pretrain import ClipPretrainConfig, clip_pretrain
from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.pseudo import PseudoConfig, make_pseudo
from weakseg.stages.train_cls import TrainClsConfig, train_cls
from weakseg.tasks import synthesize

sys.path.insert(0, str(Path(__file__).parent))
from common import save_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", default="small", help="synthetic preset: tiny, small, default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="cpu192", help="clip-es preset")
    p.add_argument("--pretrain-set", nargs="*", default=[], help="KEY=VALUE for clip pretrain (toy CLIP training)")
    p.add_argument("--clip-weights", default="", help="a real CLIP file instead of the toy CLIP")
    p.add_argument("--cam-set", nargs="*", default=[], help="KEY=VALUE prediction options of clip-es")
    p.add_argument("--variant", default="default", help="name of this CAM variant (its own cams/pseudo folders)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", action="store_true")
    p.add_argument("--stage", default="pseudo", choices=("pretrain", "cams", "pseudo"))
    a = p.parse_args()
    torch.set_num_threads(1)
    setup_logging()
    data = synthesize(a.out / f"data-{a.size}", a.size, a.seed)
    t0 = time.perf_counter()
    result: dict = {"command": " ".join(["python", *sys.argv]), "size": a.size, "seed": a.seed, "variant": a.variant}
    weights = a.clip_weights
    if not weights:
        pre = clip_pretrain(
            ClipPretrainConfig(
                data=data, out=a.out / "toy-clip", preset=a.preset, set=tuple(a.pretrain_set), seed=a.seed, device="cpu"
            )
        )
        weights = str(pre)
        result["zero_shot"] = {k: v for k, v in json.loads((pre / "metrics.json").read_text())["zero_shot"].items()}
        result["pretrain_set"] = a.pretrain_set
    if a.stage == "pretrain":
        return
    cls = train_cls(
        TrainClsConfig(
            data=data,
            out=a.out / "cls",
            method="clip-es",
            preset=a.preset,
            set=(f"clip_weights={weights}",),
            backbone="tiny",
            seed=a.seed,
            device="cpu",
        )
    )
    run = a.out / a.variant
    t1 = time.perf_counter()
    cams = make_cams(
        MakeCamsConfig(
            cls_dir=cls,
            data=data,
            out=run / "cams",
            scales=tuple(a.scales),
            flip=a.flip,
            set=tuple(a.cam_set),
            seed=a.seed,
            device="cpu",
        )
    )
    result["cams_seconds"] = round(time.perf_counter() - t1, 1)
    seeds = eval_cams(EvalCamsConfig(cams=cams, data=data, split="train", out=run / "eval_cams.json"))
    result.update(
        seed_miou=seeds["best_miou"],
        seed_threshold=seeds["best_threshold"],
        cam_set=a.cam_set,
        scales=a.scales,
        flip=a.flip,
    )
    if a.stage == "pseudo":
        pseudo = make_pseudo(PseudoConfig(cams=cams, data=data, out=run / "pseudo", seeds=run / "eval_cams.json"))
        result.update(
            pseudo_miou=pseudo.get("miou"),
            pseudo_miou_non_ignored=(pseudo.get("scored") or {}).get("miou"),
            pseudo_bg_threshold=pseudo.get("bg_threshold"),
            ignored_fraction=pseudo.get("ignored_fraction"),
        )
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save_result(run / "result.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "zero_shot"}, indent=1))


if __name__ == "__main__":
    main()
