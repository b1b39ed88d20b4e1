"""Peak memory of ``make-cams`` on a large split, per configuration: CAMs stream to disk, so RSS must stay flat.

Generates a synthetic split of ``--n`` training images (default 10,000), trains nothing: it takes a
classifier folder (``--cls-dir``, e.g. one written by ``weakseg train-cls`` on any synthetic set --
the class list is the same) and, for each configuration, runs ``make-cams`` in a **fresh child
process** and reads that child's own peak RSS (``ru_maxrss`` of the ``os.wait4`` that reaps it), so
each figure is the peak of that one process and a configuration that needs less memory reports less.
Each child is spawned by a small launcher process (see ``WRAP``), so the RSS of whatever runs this
script does not leak into the figures.
Baseline, in the same run: a child that only imports torch and loads the classifier.

    python benchmarks/bench_cams_memory.py --cls-dir runs/demo/cls --work /tmp/cams_mem \\
        [--n 10000] [--partners 3] [--cache-mb 0 512] [--json benchmarks/results/MACHINE-DATE/cams_memory.json]

``--partners N`` pairs every image with N partners per class (an MCIS classifier's ``make-cams --set
test_partners=N``; self-pairs off; default 3); 0 gives plain-head CAMs, where the feature cache is
off whatever ``cache_mb`` says. ``--cache-mb`` lists the ``cache_mb`` values to measure (one child each).
Smoke on tiny data (a tiny MCIS classifier trained for one epoch, seconds):

    python benchmarks/bench_cams_memory.py --train-tiny --size tiny --n 2000 --work /tmp/cams_mem_tiny

The parent imports neither torch nor weakseg (the data are generated in a child too).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

LOAD = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from weakseg.stages.train_cls import load_classifier
load_classifier(Path(sys.argv[1]), torch.device("cpu"))
"""

RUN = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from weakseg.stages.train_cls import load_classifier
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
cls_dir, data, out = Path(sys.argv[1]), Path(sys.argv[3]), Path(sys.argv[4])
partners, cache_mb = sys.argv[5], sys.argv[6]
_, method, _ = load_classifier(cls_dir, torch.device("cpu"))
paired = hasattr(method.cfg, "test_partners")  # MCIS: partners, self-pairs and the cache are its prediction options
options = (f"test_partners={partners}", "test_self_pairs=false", f"cache_mb={cache_mb}") if paired else ()
if int(partners) and not paired:
    raise SystemExit(f"--partners {partners} needs a classifier with test-time partners (MCIS), not {cls_dir}")
make_cams(MakeCamsConfig(cls_dir=cls_dir, data=data, out=out, split="train", scales=(1.0,), set=options, device="cpu"))
"""

DATA = """
import sys
from pathlib import Path
from weakseg.data.synthetic import SynthConfig, generate
generate(SynthConfig(out=Path(sys.argv[1]), size=sys.argv[2], n_train=int(sys.argv[3]), n_val=10, n_single=0,
                     n_web=0), workers=1)
"""

TRAIN_TINY = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from weakseg.stages.train_cls import TrainClsConfig, train_cls
train_cls(TrainClsConfig(data=Path(sys.argv[1]), out=Path(sys.argv[2]), method="mcis", backbone="tiny", preset="tiny",
                         set=("epochs=1", "batch_size=8"), device="cpu"))
"""


WRAP = """
import json, os, sys
pid = os.posix_spawn(sys.executable, [sys.executable, *sys.argv[2:]], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "max_rss_kib": usage.ru_maxrss}, f)
"""
"""A small launcher (no site, no torch) that spawns the measured child and reads that one child's rusage.

Linux starts a child's ``ru_maxrss`` at the peak RSS of the process that spawned it (``exec`` folds the
spawning address space's high-water mark in), so a child spawned straight from a large process (a pytest
run with torch loaded) would report at least that process's peak; the launcher's own RSS (~10 MiB) is the
floor instead."""


def child_peak_mib(code: str, args: list[str]) -> tuple[float, float]:
    """Run ``python -c code args`` in a fresh process; return (its own peak RSS in MiB, seconds).

    ``os.wait4`` returns the resource usage of that one child, not the maximum over every child so far
    (``RUSAGE_CHILDREN``), so a later, smaller child reports a smaller peak.
    """
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage.json"
        subprocess.run([sys.executable, "-S", "-c", WRAP, str(result), "-c", code, *args], check=True)
        r = json.loads(result.read_text())
    if r["exit"]:
        raise SystemExit(f"child {args} failed with exit code {r['exit']}")
    return r["max_rss_kib"] / 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cls-dir", type=Path, default=None, help="classifier folder (train-cls output)")
    ap.add_argument("--train-tiny", action="store_true", help="train a tiny MCIS classifier (1 epoch) into WORK/cls")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", default="default", help="synthetic size preset of the images (tiny: 96-112 px)")
    ap.add_argument("--partners", type=int, default=3, help="partners per class (MCIS classifiers); 0: plain head")
    ap.add_argument("--cache-mb", type=int, nargs="+", default=[0, 512], help="cache_mb values, one child each")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = ap.parse_args(argv)
    if (args.cls_dir is None) == (not args.train_tiny):
        ap.error("give either --cls-dir or --train-tiny")

    data = args.work / "data"
    if not (data / "synth.json").is_file():
        child_peak_mib(DATA, [str(data), args.size, str(args.n)])
    cls_dir = args.cls_dir
    if args.train_tiny:
        cls_dir = args.work / "cls"
        child_peak_mib(TRAIN_TINY, [str(data), str(cls_dir)])

    threads = str(args.threads)
    base, _ = child_peak_mib(LOAD, [str(cls_dir), threads])
    runs = []
    for cache_mb in args.cache_mb:
        out = args.work / f"cams_cache{cache_mb}"
        if out.exists():
            shutil.rmtree(out)  # a complete folder would be skipped, not measured
        peak, secs = child_peak_mib(
            RUN, [str(cls_dir), threads, str(data), str(out), str(args.partners), str(cache_mb)]
        )
        n = len(list(out.glob("*.npz")))
        runs.append({"cache_mb": cache_mb, "peak_rss_mib": round(peak, 1), "seconds": round(secs, 1), "images": n})
        print(
            f"make-cams, {args.partners} partners per class, cache_mb {cache_mb}, {n} images in {secs:.0f} s: "
            f"peak RSS {peak:.0f} MiB; ratio to the load-only child {peak / base:.2f}"
        )
    print(f"load-only child (torch + classifier): {base:.0f} MiB")
    result = {
        "benchmark": "bench_cams_memory",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": importlib.metadata.version("torch"),
        },
        "cls_dir": str(cls_dir),
        "data": {"size": args.size, "n_train": args.n},
        "partners": args.partners,
        "threads": args.threads,
        "measure": "ru_maxrss of each make-cams child from os.wait4 in a small launcher (that process's own peak), MiB",
        "load_only_rss_mib": round(base, 1),
        "floor_rss_mib": round(child_peak_mib("pass", [])[0], 1),  # a bare python child: the launcher's floor
        "runs": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
