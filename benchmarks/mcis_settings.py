"""MCIS settings 1 / 2 / 3 on the synthetic benchmark, and the web noise rate where setting 3 stops helping.

Setting 1: the main set's image-level labels only. Setting 2: plus the generator's clean single-label
set (``extra_single``). Setting 3: plus its noisy web set (``extra_web``: a wrong query label with
probability ``web_wrong_rate``, unlisted objects with ``web_missing_rate``, shifted appearance). Same
backbone (EfficientNet-Lite0), preset (``cpu``), epochs and seed for every setting; extra data come at
``RATIO`` extra pairs per main pair (``--ratio``, default 0.5), so settings 2 and 3 see 1.5x the pairs.
``--matched-budget`` adds setting 1 trained for ``round(epochs x (1 + ratio))`` epochs, i.e. the same number
of pairs, to separate "more data" from "more steps".

Seeds are scored like the pipeline's: the classifier's plain-head CAMs (``make-cams --set test_partners=0
test_self_pairs=false``) at scales 1.0/0.5/1.5 + flip on the main train split, best background threshold (seed
mIoU, %). The extra data reach the classifier as ``train-cls --set extra=single:DIR:RATIO`` (or ``web:...``).

``--noise-rates R ...`` trains setting 3 again with web sets regenerated at those wrong-label rates
(same generator seed: the main set is byte-identical) and prints the curve.

Each (setting, seed) run writes ``OUT/setting<name>_seed<seed>/result.json`` and is skipped when that
exists, so runs can be spread over processes (``--generate-only`` first, then ``--settings 2 --seeds 1``
per process) and summarised afterwards (``--summary-only``).

    python benchmarks/mcis_settings.py --out runs/mcis_settings --seeds 0 1 2 --matched-budget --noise-rates 0.5 0.8
    python benchmarks/mcis_settings.py --out /tmp/mset --size tiny --preset tiny --backbone tiny --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import PLAIN_HEAD, load_results, save_result, seed_miou, training_log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/mcis_settings"))
    ap.add_argument("--size", default="small", help="synthetic preset (small: 600 train, 300 single, 300 web)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.5, help="extra pairs per main pair and epoch")
    ap.add_argument("--settings", nargs="+", default=["1", "2", "3"], help="any of 1, 1m (matched budget), 2, 3")
    ap.add_argument("--matched-budget", action="store_true", help="also run setting 1m")
    ap.add_argument("--noise-rates", type=float, nargs="*", default=[], help="web wrong-label rates for the curve")
    ap.add_argument("--preset", default="cpu", help="the MCIS preset (cpu, cpu192, paper, tiny)")
    ap.add_argument("--backbone", default="efficientnet-lite0", help="efficientnet-lite0, tiny or timm:<name>")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more train-cls --set overrides")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="data-loading processes per training")
    ap.add_argument("--generate-only", action="store_true", help="write the synthetic data (and web sets) and stop")
    ap.add_argument("--summary-only", action="store_true", help="print the table of the runs already done")
    args = ap.parse_args()
    from weakseg.data.synthetic import SynthConfig, generate

    data = args.out / "data"
    base_rate = SynthConfig(out=data).web_wrong_rate
    matched = round(args.epochs * (1 + args.ratio))
    if args.summary_only:
        return summarise(args.out, base_rate, args.ratio)
    if not (data / "DONE").is_file():
        generate(SynthConfig(out=data, size=args.size))
        (data / "DONE").write_text("")
    settings = list(args.settings) + (["1m"] if args.matched_budget and "1m" not in args.settings else [])
    runs: dict[str, tuple[tuple[str, ...], int]] = {
        "1": ((), args.epochs),
        "1m": ((), matched),
        "2": ((f"single:{data / 'extra_single'}:{args.ratio}",), args.epochs),
        "3": ((f"web:{data / 'extra_web'}:{args.ratio}",), args.epochs),
    }
    for rate in args.noise_rates:
        web = args.out / f"web_wrong{rate:g}"
        if not (web / "DONE").is_file():
            generate(SynthConfig(out=web, size=args.size, n_train=0, n_val=1, n_single=0, web_wrong_rate=rate))
            (web / "DONE").write_text("")
        runs[f"3@{rate:g}"] = ((f"web:{web / 'extra_web'}:{args.ratio}",), args.epochs)
        if f"3@{rate:g}" not in settings:
            settings.append(f"3@{rate:g}")
    if args.generate_only:
        return None

    from weakseg.stages.train_cls import TrainClsConfig, train_cls

    for seed in args.seeds:
        for name in settings:
            run = args.out / f"setting{name}_seed{seed}"
            if (run / "result.json").is_file():
                continue
            extra, epochs = runs[name]
            t0 = time.perf_counter()
            train_cls(
                TrainClsConfig(
                    data=data,
                    out=run / "cls",
                    method="mcis",
                    preset=args.preset,
                    set=(f"epochs={epochs}", *([f"extra={','.join(extra)}"] if extra else []), *args.set),
                    backbone=args.backbone,
                    seed=seed,
                    device=args.device,
                    workers=args.workers,
                )
            )
            miou = seed_miou(run / "cls", data, run / "cams", seed, args.device, cam_set=PLAIN_HEAD)[0]
            result = {"setting": name, "seed": seed, "epochs": epochs, "miou": miou}
            result |= training_log(run / "cls" / "tb") | {"total_s": round(time.perf_counter() - t0, 1)}
            save_result(run / "result.json", result)
            print(f"seed {seed} setting {name} ({epochs} epochs): {miou:.2f}", flush=True)
    summarise(args.out, base_rate, args.ratio)


def summarise(out: Path, base_rate: float, ratio: float) -> None:
    results = load_results(out, "setting*_seed*/result.json")

    def order(name: str) -> tuple[str, float]:
        return name.split("@")[0], float(name.split("@")[1]) if "@" in name else -1.0

    names = sorted({r["setting"] for r in results}, key=order)
    print(f"\n{'setting':<58}{'seed mIoU (%)':>16}   per seed")
    for name in names:
        rows = sorted((r["seed"], r["miou"], r["epochs"]) for r in results if r["setting"] == name)
        epochs = rows[0][2]
        label = {
            "1": f"1: image labels only ({epochs} epochs)",
            "1m": f"1: image labels only, {epochs} epochs (same pairs as 2/3)",
            "2": f"2: + clean single-label images (ratio {ratio})",
            "3": f"3: + noisy web images (wrong {base_rate:g}, ratio {ratio})",
        }.get(name, f"3: + web images, wrong-label rate {name.split('@')[-1]}")
        v = [m for _, m, _ in rows]
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        seeds = ", ".join(f"{m:.2f} (seed {s})" for s, m, _ in rows)
        print(f"{label:<58}{statistics.mean(v):>9.2f} ± {spread:<5.2f}  {seeds}")


if __name__ == "__main__":
    main()
