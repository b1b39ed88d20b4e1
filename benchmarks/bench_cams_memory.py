"""Peak memory of ``make-cams`` on a large split: CAMs stream to disk, so RSS must stay flat.

Generates a synthetic split of ``--n`` training images (default 10,000), trains nothing: it takes a
classifier folder (``--cls-dir``, e.g. one written by ``weakseg train-cls`` on any synthetic set —
the class list is the same) and runs ``make-cams`` in a child process, then prints the child's
peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) next to the RSS of the same child after only
importing torch and loading the classifier (the baseline), in one run.

    python benchmarks/bench_cams_memory.py --cls-dir runs/demo/cls --work /tmp/cams_mem [--n 10000] [--partners 3]

``--partners N`` pairs every image with N partners per class (an MCIS classifier's ``make-cams --set
test_partners=N``; self-pairs off); 0 (default) gives plain-head CAMs.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, resource
from pathlib import Path
import torch
torch.set_num_threads(2)
from weakseg.stages.train_cls import load_classifier
_, method, _ = load_classifier(Path(sys.argv[1]), torch.device("cpu"))
if sys.argv[2] == "run":
    from weakseg.stages.make_cams import MakeCamsConfig, make_cams
    paired = hasattr(method.cfg, "test_partners")  # MCIS: partners and self-pairs are its prediction options
    options = (f"test_partners={sys.argv[5]}", "test_self_pairs=false") if paired else ()
    make_cams(MakeCamsConfig(cls_dir=Path(sys.argv[1]), data=Path(sys.argv[3]), out=Path(sys.argv[4]), split="train",
                             scales=(1.0,), set=options, device="cpu"))
"""


def child_peak_mib(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, *args], check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(peak, before) / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cls-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--partners", type=int, default=0, help="partners per class (MCIS classifiers)")
    args = ap.parse_args()
    from weakseg.data.synthetic import SynthConfig, generate

    data = generate(SynthConfig(out=args.work / "data", size="default", n_train=args.n, n_val=10, n_single=0, n_web=0))
    base, _ = child_peak_mib([str(args.cls_dir), "load"])
    peak, secs = child_peak_mib([str(args.cls_dir), "run", str(data), str(args.work / "cams"), str(args.partners)])
    n = len(list((args.work / "cams").glob("*.npz")))
    print(
        f"make-cams on {n} images in {secs:.0f} s: peak RSS {peak:.0f} MiB; "
        f"after loading torch + classifier only {base:.0f} MiB; ratio {peak / base:.2f}"
    )


if __name__ == "__main__":
    main()
