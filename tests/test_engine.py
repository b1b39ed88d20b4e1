import json
import os
import pickle

import numpy as np
import pytest
import torch

from weakseg.engine.artifacts import atomic_write_bytes, is_done, load_npz, mark_done, save_json, save_npz
from weakseg.engine.checkpoint import load_model, load_weights_file, save_model
from weakseg.engine.trainer import LoopConfig, fit, poly_lr, step_lr
from weakseg.errors import ConfigError


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b.bin", b"xyz")
    assert p.read_bytes() == b"xyz"
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_npz_roundtrip_and_refuses_object_arrays(tmp_path):
    save_npz(tmp_path / "c.npz", cams=np.ones((2, 3, 4), np.float16), classes=np.array([1, 4], np.int16))
    z = load_npz(tmp_path / "c.npz")
    assert z["cams"].dtype == np.float16 and z["classes"].tolist() == [1, 4]
    with pytest.raises(TypeError):
        save_npz(tmp_path / "d.npz", x=np.array([{"a": 1}], dtype=object))


def test_done_marker(tmp_path):
    assert not is_done(tmp_path)
    mark_done(tmp_path, {"n": 3})
    assert is_done(tmp_path) and json.loads((tmp_path / "DONE").read_text()) == {"n": 3}


def test_save_json_dataclass(tmp_path):
    cfg = LoopConfig(epochs=2)
    save_json(tmp_path / "c.json", cfg)
    assert json.loads((tmp_path / "c.json").read_text())["epochs"] == 2


def test_model_roundtrip_and_mismatch(tmp_path):
    m = torch.nn.Linear(3, 2)
    save_model(tmp_path / "m.safetensors", m)
    m2 = torch.nn.Linear(3, 2)
    load_model(tmp_path / "m.safetensors", m2)
    assert torch.equal(m.weight, m2.weight)
    with pytest.raises(ConfigError, match="does not match"):
        load_model(tmp_path / "m.safetensors", torch.nn.Linear(3, 5))
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors", m2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"weight": _Evil()}))
    with pytest.raises(ConfigError, match="refusing to load"):
        load_weights_file(bad)


def test_plain_torch_state_dict_loads(tmp_path):
    p = tmp_path / "ok.pth"
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, p)
    assert list(load_weights_file(p)) == ["w"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_weights_file(tmp_path / "missing.pth")


def test_lr_schedules():
    assert poly_lr(10)(0) == 1.0 and poly_lr(10)(9) < 0.2
    f = step_lr(steps_per_epoch=4, milestones=(1, 2))
    assert [f(s) for s in (0, 3, 4, 8)] == pytest.approx([1, 1, 0.1, 0.01])


def _train(tmp_path, epochs):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(32, 4, generator=g)
    ys = xs @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def make_loader(epoch):
        perm = torch.randperm(32)  # seeded by the loop (seed + epoch)
        return [(xs[perm[i : i + 8]], ys[perm[i : i + 8]]) for i in range(0, 32, 8)]

    def step(net, batch, epoch):
        x, y = batch
        return {"loss": ((net(x).squeeze(1) - y) ** 2).mean()}

    fit(
        model,
        step,
        make_loader,
        opt,
        poly_lr(16),
        LoopConfig(epochs=epochs, progress=False),
        tmp_path,
        torch.device("cpu"),
    )
    return model


def test_fit_resume_matches_uninterrupted(tmp_path):
    full = _train(tmp_path / "a", 4)
    _train(tmp_path / "b", 2)  # "interrupted" after 2 epochs
    resumed = _train(tmp_path / "b", 4)
    assert torch.allclose(full.weight, resumed.weight) and torch.allclose(full.bias, resumed.bias)
    assert (tmp_path / "a" / "model.safetensors").is_file()


def test_require_complete_outputs_names_the_problem(tmp_path):
    from weakseg.engine.artifacts import mark_done, require_complete_outputs
    from weakseg.errors import DataError

    folder = tmp_path / "pseudo"
    with pytest.raises(DataError, match="does not exist; run the pseudo stage"):
        require_complete_outputs(folder, ["a"], ".png", "pseudo-label", "the pseudo stage")
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no DONE marker"):
        require_complete_outputs(folder, ["a"], ".png", "pseudo-label", "the pseudo stage")
    mark_done(folder)
    require_complete_outputs(folder, ["a"], ".png", "pseudo-label", "the pseudo stage")
    with pytest.raises(DataError, match=r"1 images have no pseudo-label file .*\['b'\]"):
        require_complete_outputs(folder, ["a", "b"], ".png", "pseudo-label", "the pseudo stage")


def test_config_record_drops_fields_that_do_not_change_outputs():
    from dataclasses import dataclass
    from pathlib import Path

    from weakseg.engine.stage import stage_record

    @dataclass(frozen=True)
    class C:
        out: Path
        scales: tuple[float, ...]
        workers: int = 2
        device: str = "cpu"
        overwrite: bool = False

    assert stage_record(C(Path("x"), (1.0, 0.5))) == {"scales": [1.0, 0.5]}
    assert stage_record(C(Path("x"), (1.0,)), drop=("workers", "overwrite")) == {
        "out": "x", "scales": [1.0], "device": "cpu",
    }  # fmt: skip


def test_fit_logs_the_gradient_norm_and_clips_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(4, 3) * 100, torch.randn(4, 1))]  # huge inputs -> huge gradients

    def step(net, batch, epoch):
        x, y = batch
        return {"loss": ((net(x) - y) ** 2).mean()}

    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, step, lambda e: data, opt, lambda s: 1.0, LoopConfig(epochs=1, grad_clip=0.5, progress=False),
        tmp_path / "run", torch.device("cpu"), log_dir=tmp_path / "tb")  # fmt: skip
    # one SGD step at lr 1 with the gradient clipped to norm 0.5 moves the parameters by at most 0.5
    moved = torch.cat([(model.weight - before).flatten()]).norm()
    assert moved <= 0.5 + 1e-5
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    logged = ea.Scalars("train/grad_norm")[0].value
    assert logged > 100  # the norm before clipping is what is logged
