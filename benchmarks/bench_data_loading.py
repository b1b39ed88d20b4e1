"""Data loading: images/s of the classifier's training loader vs a bare PIL decode loop, in one run.

The bare loop opens and decodes the same JPEG files with PIL and nothing else; the loader adds the
dataset's safe loading (EXIF, mode checks), square resize, colour jitter, tensor conversion and
batching (``weakseg.data.transforms.LabelledImages`` in a torch DataLoader). Ratio = loader ÷ bare.

    python benchmarks/bench_data_loading.py [--data DIR] [--n 600] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None, help="VOC-layout dataset (default: generate the small preset)")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from weakseg.data.registry import open_dataset
    from weakseg.data.transforms import Jitter, LabelledImages

    tmp = None
    if args.data is None:
        from weakseg.data.synthetic import SynthConfig, generate

        tmp = tempfile.TemporaryDirectory()
        args.data = generate(SynthConfig(out=Path(tmp.name) / "synth", size="small"))
    ds = open_dataset(args.data, "train")
    idx = list(range(min(args.n, len(ds))))

    t0 = time.perf_counter()
    for i in idx:
        with Image.open(ds[i].image_path) as im:
            np.asarray(im.convert("RGB"))
    bare = len(idx) / (time.perf_counter() - t0)

    loader = torch.utils.data.DataLoader(
        LabelledImages(ds, idx, args.size, Jitter()), batch_size=8, num_workers=args.workers
    )
    t0 = time.perf_counter()
    n = sum(batch["image"].shape[0] for batch in loader)
    ours = n / (time.perf_counter() - t0)
    print(f"{'loop':<38}{'images/s':>10}")
    print(f"{'bare PIL decode':<38}{bare:>10.1f}")
    print(f"{'training loader (resize+jitter+batch)':<38}{ours:>10.1f}")
    print(f"ratio loader / bare decode: {ours / bare:.2f}  ({len(idx)} images, workers={args.workers})")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
