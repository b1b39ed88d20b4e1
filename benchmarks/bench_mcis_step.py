"""Benchmark (a): MCIS training step time ÷ plain CAM step time on the same batch (CPU).

Same pair batch (B anchors + B partners at 128 px), same backbone (efficientnet-lite0) and head
(the ``cpu`` preset's by default), measured in one run, the cases interleaved:

- ``cam``: plain CAM on the 2B images of the pairs (the reference);
- ``mcis``: MCIS on the B pairs, no self-pairs (target ≤ 1.1);
- ``mcis + self-pairs``: with the reference's three copies of each anchor: flip, 0.75×, 2× (target
  ≤ 4.0; the copies alone add 1 + 0.56 + 4 = 5.56 images per anchor, so the backbone work is already
  (2 + 5.56) / 2 = 3.78× the pair's);
- ``cam on the same images``: plain CAM on every image the self-pair step sees (its work floor), to
  separate the cost of the extra images from MCIS's own overhead.

A step is forward + loss + backward + SGD update; ``--warmup`` iterations, then median (and min) of
``--iters``. One torch thread by default: on a shared 2-core machine two threads stall each other.

    python benchmarks/bench_mcis_step.py [--batch 4] [--size 128] [--iters 5] [--threads 1] [--preset cpu]
    python benchmarks/bench_mcis_step.py --batch 2 --size 64 --iters 1 --warmup 0 --backbone tiny --preset tiny  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--preset", default="cpu", help="head / stride preset (cpu, cpu192, paper or tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from weakseg.backbones import create_backbone
    from weakseg.methods import cam, mcis

    torch.manual_seed(0)
    k, b, s = 10, args.batch, args.size
    copies_spec = mcis.PRESETS["paper"].self_pairs  # flip, 0.75x, 2x
    base = dataclasses.replace(mcis.PRESETS[args.preset], input_size=s, contrastive_from_epoch=0)
    cam_cfg = cam.CamConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(cam.CamConfig)})
    plain_cam = cam.CamMethod(cam_cfg)
    anchor, partner = torch.rand(b, 3, s, s), torch.rand(b, 3, s, s)
    y_a = (torch.rand(b, k) < 0.3).float()
    y_p = (torch.rand(b, k) < 0.3).float()
    y_a[:, 0] = y_p[:, 0] = 1  # the pairs share class 0
    copies = []
    for scale, flip in copies_spec:
        n = max(8, round(s * scale))
        v = F.interpolate(anchor, (n, n), mode="bilinear", align_corners=False)
        copies.append(v.flip(-1) if flip else v)
    pair = {"anchor": anchor, "partner": partner, "label_a": y_a, "label_p": y_p}
    # the images of the self-pair step, grouped by size as MCIS batches them
    same_size = torch.cat([anchor, partner, *(c for c in copies if c.shape[-1] == s)])
    groups = [same_size, *(c for c in copies if c.shape[-1] != s)]

    def cam_on_groups(net, batch, epoch):
        losses = [plain_cam.step(net, {"image": g, "label": torch.ones(g.shape[0], k)}, epoch) for g in groups]
        return {"loss": sum(x["loss"] for x in losses)}

    plain = {"image": torch.cat([anchor, partner]), "label": torch.cat([y_a, y_p])}
    no_self = mcis.MCISMethod(dataclasses.replace(base, self_pairs=()))
    with_self = mcis.MCISMethod(dataclasses.replace(base, self_pairs=copies_spec))
    cases = {  # name: (method that builds the net, its step, batch)
        "cam (2B images)": (plain_cam, plain_cam.step, plain),
        "mcis": (no_self, no_self.step, {**pair, "views": []}),
        "mcis + self-pairs": (with_self, with_self.step, {**pair, "views": copies}),
        "cam on the same images": (plain_cam, cam_on_groups, None),
    }
    nets = {}
    for name, (method, _, _) in cases.items():
        torch.manual_seed(0)
        net = method.build(create_backbone(args.backbone, output_stride=method.cfg.output_stride), k).train()
        nets[name] = (net, torch.optim.SGD(net.parameter_groups(method.cfg), lr=1e-4, momentum=0.9, nesterov=True))

    times: dict[str, list[float]] = {name: [] for name in cases}
    for it in range(args.warmup + args.iters):
        for name, (_, step, batch) in cases.items():  # interleaved: load changes hit every case alike
            net, opt = nets[name]
            t0 = time.perf_counter()
            loss = step(net, batch, 5)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med["cam (2B images)"]
    print(f"{args.backbone} @ {s}px, {b} pairs/step, preset {args.preset} head, {args.threads} thread(s)")
    print(f"{'case':<26}{'median ms':>10}{'min ms':>9}{'÷ cam':>8}")
    for n, t in times.items():
        print(f"{n:<26}{1000 * med[n]:>10.0f}{1000 * min(t):>9.0f}{med[n] / ref:>8.2f}")
    print(f"ratio without self-pairs: {med['mcis'] / ref:.2f} (target ≤ 1.1)")
    print(f"ratio with self-pairs:    {med['mcis + self-pairs'] / ref:.2f} (target ≤ 4.0)")
    floor = med["cam on the same images"]
    print(f"MCIS + self-pairs ÷ plain CAM on the same images: {med['mcis + self-pairs'] / floor:.2f} (own overhead)")


if __name__ == "__main__":
    main()
