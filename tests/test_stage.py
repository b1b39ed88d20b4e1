"""The stage-output contract (weakseg.engine.stage): skip, resume, extend, refuse with the keys, or overwrite."""

from __future__ import annotations

import pytest

from weakseg.engine.artifacts import is_done, load_json, mark_done
from weakseg.engine.stage import begin_stage, record_diff, stage_record
from weakseg.errors import ConfigError
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.train_cls import TrainClsConfig, train_cls

pytestmark = pytest.mark.usefixtures("one_thread")

REC = {"lr": 0.1, "epochs": 2, "net": {"depth": 3, "width": 8}, "scales": [1.0, 0.5]}


def test_record_diff_names_nested_keys():
    new = {**REC, "net": {"depth": 4, "width": 8}, "scales": [1.0], "extra": 1}
    assert record_diff(REC, new) == ["extra", "net.depth", "scales"]
    assert record_diff(REC, dict(REC)) == []


def test_new_then_complete_then_resume(tmp_path):
    out = tmp_path / "stage"
    assert begin_stage(out, "demo", REC, meta={"note": "x"}) == "run"
    saved = load_json(out / "config.json")
    assert saved == {"stage": "demo", "record": REC, "note": "x"}
    assert begin_stage(out, "demo", REC) == "run"  # interrupted: no DONE -> resume
    mark_done(out)
    assert begin_stage(out, "demo", REC) == "complete"


def test_another_configuration_is_refused_with_the_keys_or_rebuilt(tmp_path):
    out = tmp_path / "stage"
    begin_stage(out, "demo", REC)
    (out / "part.npz").write_bytes(b"old")
    mark_done(out)
    with pytest.raises(ConfigError, match=r"differs in: epochs, net\.depth.*--overwrite"):
        begin_stage(out, "demo", {**REC, "epochs": 3, "net": {"depth": 1, "width": 8}})
    assert (out / "part.npz").is_file() and is_done(out)  # refused: nothing touched
    assert begin_stage(out, "demo", {**REC, "epochs": 3}, overwrite=True) == "run"
    assert not (out / "part.npz").exists() and not is_done(out)
    assert load_json(out / "config.json")["record"]["epochs"] == 3


def test_keys_that_may_change_extend_a_complete_run(tmp_path):
    out = tmp_path / "stage"
    begin_stage(out, "demo", REC)
    mark_done(out)
    assert begin_stage(out, "demo", {**REC, "epochs": 5}, may_change=("epochs",)) == "run"
    assert not is_done(out) and load_json(out / "config.json")["record"]["epochs"] == 5


def test_a_foreign_folder_is_not_written_into(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no config.json"):
        begin_stage(out, "demo", REC)
    assert (out / "notes.txt").read_text() == "keep me"


def test_stage_record_drops_what_does_not_change_outputs(tmp_path):
    cfg = MakeCamsConfig(cls_dir=tmp_path / "c", data=tmp_path / "d", out=tmp_path / "o", device="cuda")
    rec = stage_record(cfg)
    assert "device" not in rec and "out" not in rec and rec["scales"] == [1.0, 0.5, 1.5, 2.0]


def test_make_cams_rerun_with_other_scales_is_refused_not_reused(synth_root, tmp_path):
    cls = train_cls(TrainClsConfig(data=synth_root, out=tmp_path / "cls", method="cam", preset="tiny",
                                   set=("epochs=1", "input_size=48"), backbone="tiny", device="cpu"))  # fmt: skip
    cfg = MakeCamsConfig(cls_dir=cls, data=synth_root, out=tmp_path / "cams", scales=(1.0,), flip=False, device="cpu")
    make_cams(cfg)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cams").glob("*.npz")}
    other = MakeCamsConfig(**{**cfg.__dict__, "scales": (1.0, 0.5)})
    with pytest.raises(ConfigError, match="differs in: scales"):
        make_cams(other)
    make_cams(MakeCamsConfig(**{**other.__dict__, "overwrite": True}))
    again = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cams").glob("*.npz")}
    assert again.keys() == first.keys() and all(again[k] > first[k] for k in first)  # every file rebuilt
    assert load_json(tmp_path / "cams" / "config.json")["record"]["scales"] == [1.0, 0.5]
    with pytest.raises(ConfigError, match="differs in: method_config.input_size"):  # a method option changed
        make_cams(_with_set(other, "input_size=64"))


def _with_set(cfg: MakeCamsConfig, *items: str) -> MakeCamsConfig:
    return MakeCamsConfig(**{**cfg.__dict__, "set": items})
