"""Whole-pipeline tests: `weakseg run` end to end, stage skipping, SIGKILL + resume, determinism."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from weakseg.engine.artifacts import is_done, load_json, load_npz

TINY = [
    "--synth-preset",
    "tiny",
    "--cls.backbone",
    "tiny",
    "--cls.preset",
    "tiny",
    "--cls.set",
    "epochs=2",
    "input_size=48",
    "--seg.arch",
    "tiny",
    "--seg.train.epochs",
    "2",
    "--cams.scales",
    "1.0",
    "--cams.set",
    "test_partners=1",
    "--device",
    "cpu",
    "--report-images",
    "2",
]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "weakseg", "run", "--out", str(out), *TINY, *extra]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(_cmd(out, *extra), capture_output=True, text=True, env=env, timeout=600)


def _digest(folder: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def _cam_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: load_npz(p)["cams"] for p in sorted(folder.glob("*.npz"))}


def _final_outputs(out: Path) -> dict:
    return {
        "cams": _cam_arrays(out / "cams"),
        "pseudo": _digest(out / "pseudo", "*.png"),
        "seg": _digest(out / "seg", "model.safetensors"),
        "pred": _digest(out / "eval" / "seg" / "pred", "*.png"),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["cams"].keys() == b["cams"].keys() and a["cams"]
    for k in a["cams"]:
        np.testing.assert_array_equal(a["cams"][k], b["cams"][k], err_msg=k)
    assert a["pseudo"] == b["pseudo"] and a["pseudo"]
    assert a["seg"] == b["seg"] and a["seg"]
    assert a["pred"] == b["pred"] and a["pred"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_writes_every_stage_and_report(reference_run):
    out = reference_run
    for stage in ("data", "cls", "cams", "pseudo", "seg"):
        assert is_done(out / stage), stage
    assert (out / "report.html").read_text().count("<img") >= 4
    assert (out / "summary.json").is_file() and (out / "eval" / "cams.json").is_file()
    cls = load_json(out / "cls" / "config.json")["record"]
    assert cls["method"] == "mcis" and cls["backbone"] == "tiny"
    assert (cls["method_config"]["input_size"], cls["method_config"]["epochs"]) == (48, 2)  # --cls.set reached it
    assert load_json(out / "cams" / "config.json")["record"]["method_config"]["test_partners"] == 1  # --cams.set
    assert load_json(out / "seg" / "config.json")["record"]["train"]["epochs"] == 2  # --seg.train.epochs
    assert load_json(out / "eval" / "seg" / "metrics.json")["scales"] == [1.0, 1.5]  # EvalSegOptions.scales
    summary = load_json(out / "summary.json")
    assert {"task", "supervision", "method", "seeds", "pseudo", "segmenter", "timings_s"} <= summary.keys()
    assert (summary["task"], summary["method"]) == ("tags", "mcis")
    # the pseudo labels' background threshold came from the seed sweep (eval/cams.json)
    seeds = load_json(out / "eval" / "cams.json")
    assert summary["seeds"]["threshold"] == seeds["best_threshold"]
    assert summary["pseudo"]["bg_threshold"] == pytest.approx(max(0.05, seeds["best_threshold"] - 0.15))
    # the run's config.json reads back as the RunConfig it ran with
    from weakseg.pipeline import load_run_config

    cfg = load_run_config(out / "config.json")
    assert cfg.cls.set == ("epochs=2", "input_size=48") and cfg.cams.scales == (1.0,) and cfg.seg.arch == "tiny"


def test_rerun_skips_complete_stages(reference_run):
    before = {
        p: p.stat().st_mtime_ns
        for p in (reference_run / "cls" / "model.safetensors", next((reference_run / "cams").glob("*.npz")))
    }
    times = load_json(reference_run / "summary.json")["timings_s"]
    r = _run(reference_run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = load_json(reference_run / "summary.json")["timings_s"]  # skipped stages keep the first run's times
    assert all(again[k] == times[k] for k in ("data", "cls", "cams", "pseudo", "seg")) and times["cls"] > 0


def test_same_seed_gives_identical_cams_and_pseudo_labels(reference_run, tmp_path):
    r = _run(tmp_path / "again")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(_final_outputs(reference_run), _final_outputs(tmp_path / "again"))


def _kill_when(out: Path, ready, timeout: float = 300) -> None:
    """Start `weakseg run`, SIGKILL it as soon as `ready(out)` is true."""
    proc = subprocess.Popen(
        _cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONHASHSEED="0")
    )
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if ready(out):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


STAGE_POINTS = {
    "cls": lambda o: (o / "cls" / "state" / "train_state.json").is_file() and not is_done(o / "cls"),
    "cams": lambda o: len(list((o / "cams").glob("*.npz"))) >= 3 and not is_done(o / "cams"),
    "pseudo": lambda o: len(list((o / "pseudo").glob("*.png"))) >= 3 and not is_done(o / "pseudo"),
    "seg": lambda o: (o / "seg" / "state" / "train_state.json").is_file() and not is_done(o / "seg"),
}


@pytest.mark.parametrize("stage", ["cams"])
def test_sigkill_mid_stage_then_resume_matches(reference_run, tmp_path, stage):
    _check_kill_resume(reference_run, tmp_path, [stage])


# in the default suite: 24-34 s on one thread (2-core CPU machine under load, 2026-11-30), reference run shared
def test_sigkill_in_every_stage_then_resume_matches(reference_run, tmp_path):
    _check_kill_resume(reference_run, tmp_path, list(STAGE_POINTS))


def _check_kill_resume(reference_run: Path, tmp_path: Path, stages: list[str]) -> None:
    out = tmp_path / "killed"
    for stage in stages:
        _kill_when(out, STAGE_POINTS[stage])
        assert not is_done(out / stage), f"run finished {stage} before it could be killed"
        leftovers = [p for p in out.rglob("*.tmp")]
        # a temp file may be left by the kill, but it is never taken as an output
        assert all(p.name.startswith(".") for p in leftovers)
    r = _run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(_final_outputs(reference_run), _final_outputs(out))
