"""ABD training step ÷ cross-teaching step on the same batch (issue #16 target: ≤ 1.3), CPU.

Both methods at the same preset (default ``cpu``: two U-Nets, 4 + 4 slices at 128 px) take the same batch
(real ACDC slices when ``--data`` exists, else random tensors of the same shape), forward + backward +
optimiser step, median of ``--steps`` after warm-up, interleaved so that load changes hit both alike. Also
times the displacement alone (reliabilities, indices, patch moves for ABD-I and ABD-R) and counts the images
each model sees per step. Writes ``results/cpu-2026-11-30/bench_abd_step.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from weakseg.data.acdc import open_slices, split_by_patient
from weakseg.engine.artifacts import save_json
from weakseg.methods import create_method
from weakseg.methods.abd import (
    bidirectional_displace,
    inverse_displacement,
    patch_profile,
    patch_reliability,
    reliable_displacement,
)
from weakseg.methods.base import LoaderContext

TARGET = 1.3
OUT = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30" / "bench_abd_step.json"


def _batch(method, data: Path, seed: int) -> tuple[dict, str]:
    if (data / "train_slices.list").is_file():
        split = split_by_patient(open_slices(data, "train"), 3)
        make, _ = method.loader(split, LoaderContext(seed=seed))
        return next(iter(make(0))), f"ACDC slices from {data}"
    c = method.cfg
    n, s = c.labelled_bs + c.unlabelled_bs, c.input_size
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (n, s, s), generator=g)
    label[c.labelled_bs :] = 255
    batch = {
        "image": torch.rand(n, 1, s, s, generator=g),
        "label": label,
        "image_strong": torch.rand(n, 1, s, s, generator=g),
        "label_strong": label.clone(),
        "n_labelled": torch.tensor(c.labelled_bs),
        "iteration": torch.tensor(0),
    }
    return batch, "random tensors"


def _timed_step(method, net, opt, batch) -> float:
    t = time.perf_counter()
    losses = method.step(net, batch, 0)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    opt.step()
    return time.perf_counter() - t


def _displacement_only(method, batch) -> float:
    """Seconds of ABD's own tensor work (no network): reliabilities, indices and patch moves, from fixed logits."""
    c, p = method.cfg, method.cfg.patch_size
    n = int(batch["n_labelled"])
    b, s = batch["image"].shape[0], c.input_size
    z1, z2 = torch.randn(b, 4, s, s), torch.randn(b, 4, s, s)
    xw, xs, yw, ys = batch["image"], batch["image_strong"], batch["label"], batch["label_strong"]
    t = time.perf_counter()
    r1, r2 = patch_reliability(z1.softmax(1).amax(1), p), patch_reliability(z2.softmax(1).amax(1), p)
    d_i = inverse_displacement(r1[:n], r2[:n])
    moved = torch.rand(n) < c.abd_i_prob
    bidirectional_displace(xw[:n], xs[:n], d_i, p, moved)
    bidirectional_displace(yw[:n], ys[:n], d_i, p, moved)
    d_r = reliable_displacement(r1[n:], r2[n:], patch_profile(z1[n:], p), patch_profile(z2[n:], p), c.top_k)
    bidirectional_displace(xw[n:], xs[n:], d_r, p)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/acdc"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = {name: create_method(name, args.preset) for name in ("cross-teaching", "abd")}
    batch, source = _batch(methods["abd"], args.data, 0)
    nets, opts, times = {}, {}, {name: [] for name in methods}
    for name, m in methods.items():
        torch.manual_seed(0)
        nets[name] = m.build(None, 4).train()
        opts[name] = m.optimizer(nets[name])
    for k in range(args.warmup + args.steps):
        for name, m in methods.items():
            dt = _timed_step(m, nets[name], opts[name], batch)
            if k >= args.warmup:
                times[name].append(dt)
    disp = statistics.median(_displacement_only(methods["abd"], batch) for _ in range(args.steps))
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["abd"] / med["cross-teaching"]
    c = methods["abd"].cfg
    n_l, n_u = c.labelled_bs, c.unlabelled_bs
    result = {
        "figure": "ABD training step / cross-teaching training step, same batch",
        "preset": args.preset,
        "batch": {"labelled": n_l, "unlabelled": n_u, "input_size": c.input_size, "source": source},
        "encoder": c.encoder,
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "ratio": round(ratio, 3),
        "target": TARGET,
        "status": "met" if ratio <= TARGET else "missed",
        "images_per_model_per_step": {"cross-teaching": n_l + n_u, "abd": n_l + n_u + 2 * n_l + 2 * n_u},
        "displacement_only_s": round(disp, 5),
        "displacement_share_of_abd_step": round(disp / med["abd"], 4),
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "note": "ABD's recipe forwards and backpropagates 2 x (labelled + unlabelled) displaced images per model on "
        "top of the base batch (ABD-I pairs + ABD-R pairs), i.e. 3x the images of cross teaching; the "
        "displacement itself is the displacement_only_s share.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
