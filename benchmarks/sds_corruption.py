"""SDS (``weakseg select``) on a synthetic training set with a known share of corrupted (image, mask) pairs.

Steps (each skipped when its output is complete, so the script can be rerun or continued):

1. ``weakseg data synth --size small --seed 0`` (the training set to corrupt; val stays clean) and ``--seed 1``
   (a disjoint set on which the embedded toy CLIP is trained: the CLIP has never seen the benchmark's images);
2. ``weakseg clip pretrain`` on the seed-1 set (the toy CLIP; reuse one with ``--clip-weights``);
3. a corrupted copy of the train split (:func:`weakseg.data.corrupt.corrupt_dataset`: ``--per-type`` images for each
   of the 8 corruptions, 4 of the image, 4 of the mask);
4. ``weakseg select`` (SDS) on the corrupted train split → kept.txt and per-sample scores;
5. precision / recall of the dropped samples against the manifest, per corruption type, plus each score's ranking
   AUC (clean vs each corruption type) for both PCS and both ASF variants, and the selection each variant pair
   would make from the same scores;
6. ``weakseg train-seg --supervision full`` on the kept ids, on all ids, and on a seeded random subset of the same
   size as the kept one (same architecture, epochs and seed), then ``weakseg eval-seg`` on the clean val split.

Writes ``summary.json`` (+ ``select_summary.json``, ``scores.csv`` copies) into ``--results``. Run from the
repository root::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/sds_corruption.py --work /tmp/sds_bench \
        --results benchmarks/results/cpu-2026-11-30/sds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from weakseg.data.corrupt import CORRUPTIONS, corrupt_dataset
from weakseg.data.registry import open_dataset
from weakseg.methods.sds import CAM_WEIGHTS, PCS_SCORES, SDSConfig, sds_preset
from weakseg.stages.select import decide


def sh(cmd: list[str], log: list[dict]) -> float:
    """Run a weakseg command in a child process (one thread); returns its wall time."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    print("$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "weakseg", *cmd], check=True, env=env)
    dt = time.perf_counter() - t0
    log.append({"command": "weakseg " + " ".join(cmd), "seconds": round(dt, 1)})
    return dt


def auc_lower(bad: list[float], good: list[float]) -> float | None:
    """P(score of a corrupted sample < score of a clean one) (ties count half): 1 = the score ranks every corrupted
    sample below every clean one, 0.5 = chance."""
    if not bad or not good:
        return None
    b, g = np.asarray(bad)[:, None], np.asarray(good)[None, :]
    return float((b < g).mean() + 0.5 * (b == g).mean())


def selection_metrics(rows: list[dict], corrupted: dict[str, str]) -> dict:
    dropped = [r for r in rows if not r["kept"]]
    bad_dropped = sum(r["image_id"] in corrupted for r in dropped)
    clean = [r for r in rows if r["image_id"] not in corrupted]
    out = {
        "images": len(rows),
        "corrupted": len(corrupted),
        "dropped": len(dropped),
        "precision": bad_dropped / len(dropped) if dropped else None,
        "recall": bad_dropped / len(corrupted) if corrupted else None,
        "clean_dropped_share": sum(not r["kept"] for r in clean) / len(clean),
        "chance_precision": len(corrupted) / len(rows),
        "per_type": {},
    }
    for t in CORRUPTIONS:
        rs = [r for r in rows if corrupted.get(r["image_id"]) == t]
        if not rs:
            continue
        auc = {}
        for name in rows[0]["pcs_variants"]:
            auc[f"pcs_{name}"] = auc_lower(
                [r["pcs_variants"][name] for r in rs], [r["pcs_variants"][name] for r in clean]
            )
        for name in rows[0]["asf_variants"]:
            auc[f"asf_{name}"] = auc_lower(
                [r["asf_variants"][name] for r in rs], [r["asf_variants"][name] for r in clean]
            )
        out["per_type"][t] = {
            "kind": CORRUPTIONS[t].kind,
            "n": len(rs),
            "recall": sum(not r["kept"] for r in rs) / len(rs),
            "dropped_by": {k: sum(r["dropped_by"] == k for r in rs) for k in ("pcs", "asf", "no_class")},
            "auc": auc,
            "mean_pcs": float(np.mean([r["pcs"] for r in rs])),
            "mean_asf": float(np.mean([r["asf"] for r in rs])),
        }  # fmt: skip
    out["clean_mean_pcs"] = float(np.mean([r["pcs"] for r in clean]))
    out["clean_mean_asf"] = float(np.mean([r["asf"] for r in clean]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="working folder (data, CLIP, runs)")
    ap.add_argument("--results", type=Path, required=True, help="folder for the raw JSON results")
    ap.add_argument("--clip-weights", default="", help="an existing `clip pretrain` folder (skips step 2)")
    ap.add_argument("--per-type", type=int, default=20, help="images per corruption type (8 types)")
    ap.add_argument("--preset", default="toy", help="SDS preset of `weakseg select`")
    ap.add_argument("--set", nargs="*", default=[], help="SDS overrides KEY=VALUE")
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--crop", type=int, default=96, help="train-seg crop (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0], help="seeds of the random same-size subsets")
    ap.add_argument("--stop-after", choices=("select", "seg"), default="seg")
    a = ap.parse_args()
    w, log = a.work, []
    w.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    data, clip_data, corrupt = w / "data-small", w / "clipdata-seed1", w / "corrupt"
    for root, seed in ((data, 0), (clip_data, 1)):
        if not (root / "synth.json").is_file():
            sh(["data", "synth", "--out", str(root), "--size", "small", "--seed", str(seed)], log)
    clip = a.clip_weights or str(w / "toy-clip")
    if not a.clip_weights:
        sh(["clip", "pretrain", "--data", str(clip_data), "--out", clip, "--device", "cpu"], log)
    if not (corrupt / "corruptions.json").is_file():
        if corrupt.exists():
            shutil.rmtree(corrupt)
        t0 = time.perf_counter()
        corrupt_dataset(data, corrupt, per_type=a.per_type, seed=a.seed)
        log.append({"command": f"corrupt_dataset(per_type={a.per_type}, seed={a.seed})",
                    "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    manifest = json.loads((corrupt / "corruptions.json").read_text())
    sel = w / "-".join(["select", a.preset, *(x.replace("=", "") for x in a.set)])
    sh(["select", "--data", str(corrupt), "--out", str(sel), "--clip-weights", clip, "--preset", a.preset,
        *(["--set", *a.set] if a.set else []), "--device", "cpu"], log)  # fmt: skip
    rows = json.loads((sel / "scores.json").read_text())
    result: dict = {
        "benchmark": "sds_corruption",
        "data": "weakseg data synth --size small --seed 0 (600 train / 150 val); toy CLIP trained on --seed 1",
        "corruption": {k: manifest[k] for k in ("per_type", "images", "share", "types", "seed")},
        "select": json.loads((sel / "summary.json").read_text()),
        "selection": selection_metrics(rows, manifest["corrupted"]),
        "clip_metrics": json.loads((Path(clip) / "metrics.json").read_text()).get("zero_shot", {}),
    }
    # the other score variants, decided from the same scores (no second CLIP pass)
    sds = SDSConfig(**{k: v for k, v in result["select"]["sds"].items()})
    names = open_dataset(corrupt, "train").class_names
    result["variants"] = {}
    for ps, cw in itertools.product(PCS_SCORES, CAM_WEIGHTS):
        alt = [{**r, "pcs": r["pcs_variants"][ps], "asf": r["asf_variants"][cw]} for r in rows]
        decide(alt, replace(sds, pcs_score=ps, cam_weight=cw), names)
        m = selection_metrics(alt, manifest["corrupted"])
        result["variants"][f"pcs={ps},asf={cw}"] = {
            k: m[k] for k in ("dropped", "precision", "recall", "clean_dropped_share")
        } | {"recall_per_type": {t: v["recall"] for t, v in m["per_type"].items()}}
    paper = sds_preset("paper")  # the official threshold on the same (entropy, none) scores
    alt = [{**r, "pcs": r["pcs_variants"]["entropy"], "asf": r["asf_variants"]["none"]} for r in rows]
    decide(alt, paper, names)
    m = selection_metrics(alt, manifest["corrupted"])
    result["variants"]["preset=paper (PCS > 0.1, asf_keep 0.5)"] = {
        k: m[k] for k in ("dropped", "precision", "recall", "clean_dropped_share")
    } | {"recall_per_type": {t: v["recall"] for t, v in m["per_type"].items()}}
    a.results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sel / "scores.csv", a.results / "scores.csv")
    if a.stop_after == "seg":
        kept = (sel / "kept.txt").read_text().split()
        ids = [r["image_id"] for r in rows]
        (w / "all.txt").write_text("\n".join(ids) + "\n")
        lists = {"sds_kept": sel / "kept.txt", "all": w / "all.txt"}
        for s in a.random_seeds:  # seeded random subsets of the kept list's size
            rng = np.random.default_rng(s)
            random_ids = sorted(rng.choice(ids, size=len(kept), replace=False).tolist())
            suffix = "" if s == a.seed else f"_seed{s}"
            (w / f"random{suffix}.txt").write_text("\n".join(random_ids) + "\n")
            lists[f"random_same_size{suffix}"] = w / f"random{suffix}.txt"
        seg = {}
        for name, ids_file in lists.items():
            out = w / f"seg-{name}-{a.arch}-e{a.epochs}-c{a.crop}"
            n = len(ids_file.read_text().split())
            sh(["train-seg", "--data", str(corrupt), "--out", str(out), "--supervision", "full", "--keep",
                str(ids_file), "--arch", a.arch, "--train.epochs", str(a.epochs), "--crop", str(a.crop),
                "--seed", str(a.seed), "--device", "cpu"], log)  # fmt: skip
            ev = out / "eval-val"
            if not (ev / "metrics.json").is_file():
                sh(["eval-seg", "--seg-dir", str(out), "--data", str(corrupt), "--out", str(ev), "--split", "val",
                    "--scales", "1.0", "--no-flip", "--device", "cpu"], log)  # fmt: skip
            m = json.loads((ev / "metrics.json").read_text())
            listed = ids_file.read_text().split()
            by_type = {t: sum(manifest["corrupted"].get(i) == t for i in listed) for t in CORRUPTIONS}
            seg[name] = {"images": n, "corrupted_in_train": sum(by_type.values()), "corrupted_by_type": by_type,
                         "val_miou": m["miou"]}  # fmt: skip
        result["segmenter"] = {"arch": a.arch, "epochs": a.epochs, "crop": a.crop, "seed": a.seed,
                               "eval": "val split (clean), scale 1,"
                               " no flip", "runs": seg}  # fmt: skip
    result["commands"] = log
    result["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (a.results / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("selection", "segmenter") if k in result}, indent=1))


if __name__ == "__main__":
    main()
