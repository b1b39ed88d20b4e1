"""Distribution on CPU (gloo): a 2-process run follows the 1-process run; sharded make-cams writes each image once.

Both start real processes (torchrun for train-cls, torch.multiprocessing.spawn for make-cams), one torch
thread each, on the tiny backbone and preset.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weakseg.stages.train_cls import TrainClsConfig, train_cls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _args(synth_root: Path) -> list[str]:
    # 40 main pairs, 8 single and 8 web pairs: every batch holds 4 pairs, 2 per process
    extra = f"extra=single:{synth_root / 'extra_single'}:0.2,web:{synth_root / 'extra_web'}:0.2"
    return [
        "--data", str(synth_root), "--backbone", "tiny", "--preset", "tiny", "--set", "epochs=1", extra,
        "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def single_run(synth_root, tmp_path_factory) -> Path:
    """The 1-process classifier (the reference), trained in this process."""
    import tyro

    out = tmp_path_factory.mktemp("dist") / "cls1"
    cfg = tyro.cli(TrainClsConfig, args=[*_args(synth_root), "--out", str(out)])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_cls(cfg)
    finally:
        torch.set_num_threads(n)


def test_two_processes_train_like_one(synth_root, single_run, tmp_path):
    from safetensors.torch import load_file

    from weakseg.backbones import create_backbone
    from weakseg.engine.device import seed_everything
    from weakseg.methods import create_method

    out = tmp_path / "cls2"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "weakseg", "train-cls", *_args(synth_root), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = load_file(single_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), (k, (one[k] - two[k]).abs().max())
    # and training did move the weights (the comparison is not between two untrained nets)
    method = create_method("mcis", "tiny")
    seed_everything(0)
    init = method.build(create_backbone("tiny", None, method.cfg.output_stride, pretrained=True), 10)
    moved = max((one[k] - v).abs().max().item() for k, v in init.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3
    steps = json.loads((out / "DONE").read_text())
    assert steps["epochs"] == 1 and "train/web/co" in steps["last_epoch_losses"]


def _make_cams_worker(rank: int, world: int, port: int, cls_dir: str, data: str, out: str, record: str) -> None:
    """One rank of a sharded make-cams; records the CAM files this rank writes."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from weakseg.stages import make_cams as make
    from weakseg.stages.make_cams import MakeCamsConfig, make_cams

    written: list[str] = []
    save = make.save_npz

    def recording_save(path, **arrays):
        written.append(Path(path).stem)
        return save(path, **arrays)

    make.save_npz = recording_save
    try:
        make_cams(
            MakeCamsConfig(
                cls_dir=Path(cls_dir),
                data=Path(data),
                out=Path(out),
                scales=(1.0,),
                set=("test_partners=1",),
                device="cpu",
            )
        )
    finally:
        Path(record, f"rank{rank}.json").write_text(json.dumps(written))
        if tdist.is_initialized():
            tdist.destroy_process_group()


def test_sharded_make_cams_writes_every_image_once(synth_root, single_run, synth_dataset, tmp_path):
    import torch.multiprocessing as mp

    out, record = tmp_path / "cams", tmp_path / "record"
    record.mkdir()
    args = (2, _free_port(), str(single_run), str(synth_root), str(out), str(record))
    mp.spawn(_make_cams_worker, args=args, nprocs=2, join=True)
    per_rank = [json.loads((record / f"rank{r}.json").read_text()) for r in range(2)]
    ids = [r.image_id for r in synth_dataset.records]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(ids)  # every image exactly once over both ranks
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(ids) and (out / "DONE").is_file()
