"""The nifti layout of weakseg.data.acdc: tiny NIfTI volumes written with nibabel (known voxel spacing) read back as
slices and volumes, the header's spacing carried to HD95 / ASD in mm (directly and through eval-volumes), and the
bad inputs (label shape, missing _gt, 4D cine, missing volume, slice index, nibabel absent) as clear DataErrors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from weakseg.data.acdc import SliceAugment, SliceViews, detect_layout, open_slices, split_by_patient
from weakseg.errors import ConfigError, DataError, MissingExtraError
from weakseg.eval.medical import per_class_scores

nib = pytest.importorskip("nibabel")
pytestmark = pytest.mark.usefixtures("one_thread")

# voxel size of every test file: x (columns) 1.25 mm, y (rows) 1.5 mm, z (slices) 10 mm -- in-plane sizes differ so a
# swapped axis shows; in weakseg's [D, H, W] order the spacing is (10, 1.5, 1.25)
ZOOMS = (1.25, 1.5, 10.0)
SPACING = (10.0, 1.5, 1.25)


def _write(path: Path, dhw: np.ndarray, zooms: tuple[float, ...] = ZOOMS) -> Path:
    """Write a ``[D, H, W]`` array as NIfTI (x, y, z) = (W, H, D) with voxel size ``zooms`` (x, y, z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(dhw.transpose(2, 1, 0)) if dhw.ndim == 3 else dhw
    affine = np.diag([*zooms[:3], 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _case(seed: int, depth: int = 3, h: int = 12, w: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Raw int16 intensities (as a scanner writes them) and labels 0..3, ``[D, H, W]`` with H != W."""
    rng = np.random.default_rng(seed)
    label = np.zeros((depth, h, w), np.uint8)
    label[:, 2:6, 2:7] = 1
    label[:, 5:10, 8:12] = 2
    label[1:, 7:9, 9:11] = 3
    image = (np.array([50, 400, 250, 700])[label] + rng.integers(0, 40, label.shape)).astype(np.int16)
    return image, label


def _scaled(raw: np.ndarray) -> np.ndarray:
    raw = raw.astype(np.float32)
    return (raw - raw.min()) / (raw.max() - raw.min())


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory) -> tuple[Path, dict]:
    """The ACDC challenge download: database/training/patientNNN/patientNNN_frameMM[_gt].nii.gz (+ the 4D cine,
    Info.cfg), with SSL4MIS-style lists put in database/."""
    root = tmp_path_factory.mktemp("database")
    cases = {}
    for p, frames in ((1, (1, 12)), (2, (1, 14)), (3, (1, 9))):
        folder = root / "training" / f"patient{p:03d}"
        for f in frames:
            vid = f"patient{p:03d}_frame{f:02d}"
            image, label = _case(10 * p + f, depth=2 + p)
            _write(folder / f"{vid}.nii.gz", image)
            _write(folder / f"{vid}_gt.nii.gz", label)
            cases[vid] = (image, label)
        _write(folder / f"patient{p:03d}_4d.nii.gz", np.zeros((16, 12, 3, 4), np.int16))
        (folder / "Info.cfg").write_text(f"ED: 1\nES: {frames[1]}\nGroup: NOR\n")
    train = ["patient002_frame01", "patient002_frame14.nii.gz", "patient001_frame01", "patient001_frame12"]
    (root / "train.list").write_text("\n".join(train) + "\n")
    (root / "val.list").write_text("patient003_frame01\npatient003_frame09\n")
    slices = ["patient001_frame01_slice_2", "patient001_frame01_slice_0", "patient002_frame14_slice_3"]
    (root / "few_slices.list").write_text("\n".join(slices) + "\n")
    return root, cases


def test_acdc_download_layout_reads_slices_volumes_and_spacing(acdc_root):
    root, cases = acdc_root
    assert detect_layout(root) == "nifti" and detect_layout(root / "training") == "nifti"
    train = open_slices(root, "train")
    assert train.layout == "nifti"
    assert train.volumes == ["patient002_frame01", "patient002_frame14", "patient001_frame01", "patient001_frame12"]
    assert len(train) == 4 + 4 + 3 + 3  # patient p's volumes have 2 + p slices
    i = train.index_of("patient002_frame14_slice_3")
    assert (train[i].volume, train[i].slice_index) == ("patient002_frame14", 3)
    image, label = cases["patient002_frame14"]
    got_image, got_label = train.load_slice(i)
    assert got_image.dtype == np.float32 and got_label.dtype == np.uint8 and got_image.shape == (12, 16)
    assert np.allclose(got_image, _scaled(image)[3]) and np.array_equal(got_label, label[3])
    for v in train.volumes:
        vol, lab = train.load_volume(v)
        assert np.allclose(vol, _scaled(cases[v][0])) and np.array_equal(lab, cases[v][1])
        assert train.spacing(v) == pytest.approx(SPACING)
    split = split_by_patient(train, 1)
    assert split.patients == ("patient002",) and len(split.labelled) == 8 and len(split.unlabelled) == 6
    item = SliceViews(train, split.labelled, 16, SliceAugment())[0]
    assert item["image"].shape == (1, 16, 16) and item["label"].shape == (16, 16)
    val = open_slices(root, "val", "nifti")
    vol, lab = val.load_volume("patient003_frame09")
    assert vol.shape == lab.shape == (5, 12, 16) and np.array_equal(lab, cases["patient003_frame09"][1])


def test_slice_list_picks_slices_by_their_index_in_the_volume(acdc_root):
    root, cases = acdc_root
    ds = open_slices(root, "few")
    assert [r.image_id for r in ds.records] == ["patient001_frame01_slice_2", "patient001_frame01_slice_0",
                                                "patient002_frame14_slice_3"]  # fmt: skip
    assert [r.slice_index for r in ds.records] == [1, 0, 0]  # rank within the listed slices, as in the other layouts
    image, label = cases["patient001_frame01"]
    assert np.array_equal(ds.load_slice(0)[1], label[2]) and np.allclose(ds.load_slice(0)[0], _scaled(image)[2])
    vol, lab = ds.load_volume("patient001_frame01")  # the listed slices, in slice order
    assert np.array_equal(lab, label[[0, 2]]) and np.allclose(vol, _scaled(image)[[0, 2]])
    (root / "bad_slices.list").write_text("patient001_frame01_slice_3\n")  # patient 1's volumes have 3 slices
    with pytest.raises(DataError, match=r"patient001_frame01.nii.gz has 3 slices \(0..2\); fix the slice index"):
        open_slices(root, "bad")


def test_flat_layout_with_nii_files_and_a_trailing_unit_axis(tmp_path):
    image, label = _case(5)
    _write(tmp_path / "caseA.nii", image)
    _write(tmp_path / "caseA_gt.nii", label)
    _write(tmp_path / "caseB.nii.gz", image[..., None].transpose(2, 1, 0, 3), ZOOMS)  # (x, y, z, 1): still 3D
    _write(tmp_path / "caseB_gt.nii.gz", label)
    (tmp_path / "test.list").write_text("caseA\ncaseB\n")
    (tmp_path / "classes.txt").write_text("RV\nMyo\nLV\n")
    ds = open_slices(tmp_path, "test")
    assert ds.layout == "nifti" and ds.volumes == ["caseA", "caseB"] and ds.class_names == ("RV", "Myo", "LV")
    for v in ds.volumes:
        vol, lab = ds.load_volume(v)
        assert np.allclose(vol, _scaled(image)) and np.array_equal(lab, label)
        assert ds.spacing(v) == pytest.approx(SPACING)


def test_header_spacing_units_are_honoured(tmp_path):
    image, label = _case(6)
    img = nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), np.diag([0.00125, 0.0015, 0.01, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, str(tmp_path / "m.nii.gz"))
    _write(tmp_path / "m_gt.nii.gz", label)
    (tmp_path / "test.list").write_text("m\n")
    assert open_slices(tmp_path, "test").spacing("m") == pytest.approx(SPACING)


# ---------------------------------------------------------------------------- spacing -> metrics


def test_hd95_of_a_known_shift_is_the_shift_times_the_header_spacing(tmp_path):
    pytest.importorskip("medpy")
    gt = np.zeros((4, 12, 16), np.uint8)
    gt[:, 2:10, 5] = 1  # a one-voxel-thick sheet across the columns: every voxel moves by exactly the shift
    gt[1, 3:9, 8:14] = 2  # a patch in one slice
    _write(tmp_path / "v.nii.gz", np.zeros(gt.shape, np.int16))
    _write(tmp_path / "v_gt.nii.gz", gt)
    (tmp_path / "test.list").write_text("v\n")
    ds = open_slices(tmp_path, "test")
    _, label = ds.load_volume("v")
    spacing = ds.spacing("v")
    pred = np.zeros_like(label)
    pred[np.roll(label == 1, 2, axis=2)] = 1  # 2 columns right: 2 x 1.25 mm
    pred[np.roll(label == 2, 1, axis=0)] = 2  # 1 slice down: 1 x 10 mm
    mm = per_class_scores(label, pred, (1, 2), spacing)
    assert mm[1].unit == "mm" and mm[1].hd95 == pytest.approx(2.5) and mm[1].asd == pytest.approx(2.5)
    assert mm[2].hd95 == pytest.approx(10.0) and mm[2].asd == pytest.approx(10.0)
    vox = per_class_scores(label, pred, (1, 2), None)
    assert vox[1].unit == "voxel" and vox[1].hd95 == pytest.approx(2.0) and vox[2].hd95 == pytest.approx(1.0)


def test_eval_volumes_reports_mm_from_the_nifti_header(tmp_path, monkeypatch):
    """The eval-volumes stage on a NIfTI split, no --spacing: the header's spacing reaches the metrics. The model is
    an untrained tiny one whose prediction is replaced by the ground truth (decoded from the intensities) shifted by
    two columns, so every class's HD95 and ASD must be 2 x 1.25 mm."""
    pytest.importorskip("medpy")
    from weakseg.engine.checkpoint import save_model
    from weakseg.engine.stage import begin_stage
    from weakseg.methods import create_method
    from weakseg.methods.abd import SemiSupervisedMethod
    from weakseg.stages.eval_volumes import EvalVolumesConfig, eval_volumes

    data = tmp_path / "data"
    for v, cols in (("c1", (3, 7, 10)), ("c2", (2, 6, 11))):
        label = np.zeros((3, 10, 16), np.uint8)
        for c, col in enumerate(cols, start=1):
            label[:, 1:9, col] = c  # one-voxel-thick sheets: every surface voxel moves by the whole shift
        _write(data / f"{v}.nii.gz", (label.astype(np.int16) * 100))  # scaled to label / 3
        _write(data / f"{v}_gt.nii.gz", label)
    (data / "test.list").write_text("c1\nc2\n")

    model = tmp_path / "semi"
    method = create_method("supervised-only", "tiny")
    record = {"method": "supervised-only", "method_config": method.cfg, "class_names": ["RV", "Myo", "LV"]}
    begin_stage(model, "train-semi", record)
    save_model(model / "model.safetensors", method.build(None, 4))

    def shifted_truth(self, net, volume):
        return np.roll(np.rint(volume * 3).astype(np.uint8), 2, axis=2)

    monkeypatch.setattr(SemiSupervisedMethod, "predict_volume", shifted_truth)
    r = eval_volumes(EvalVolumesConfig(model_dir=model, data=data, out=tmp_path / "eval", device="cpu"))
    assert r["unit"] == "mm" and r["volumes"] == 2
    for name in ("RV", "Myo", "LV"):
        assert r["per_class"][name]["hd95"] == pytest.approx(2.5) and r["per_class"][name]["asd"] == pytest.approx(2.5)
        assert r["per_class"][name]["dice"] == 0.0
    assert "HD95 mm" in r["table"]
    r = eval_volumes(EvalVolumesConfig(model_dir=model, data=data, out=tmp_path / "eval2", device="cpu",
                                       spacing=(1.0, 1.0, 1.0)))  # fmt: skip
    assert r["mean"]["hd95"] == pytest.approx(2.0)  # an explicit --spacing wins over the header


# ---------------------------------------------------------------------------- bad input


def test_label_shape_differing_from_the_image_names_the_label_file(tmp_path):
    image, label = _case(7)
    _write(tmp_path / "a.nii.gz", image)
    _write(tmp_path / "a_gt.nii.gz", label[:, :, :-1])
    (tmp_path / "test.list").write_text("a\n")
    with pytest.raises(DataError, match=r"a_gt.nii.gz: label shape \(15, 12, 3\) differs from the image's "
                                        r"\(16, 12, 3\).*re-export the pair"):  # fmt: skip
        open_slices(tmp_path, "test")


def test_missing_gt_file_names_the_expected_path(tmp_path):
    image, _ = _case(8)
    _write(tmp_path / "training" / "patient005" / "patient005_frame01.nii.gz", image)
    (tmp_path / "test.list").write_text("patient005_frame01\n")
    with pytest.raises(DataError, match=r"has no label volume .*patient005/patient005_frame01_gt.nii.gz; add it"):
        open_slices(tmp_path, "test")


def test_4d_file_is_refused_with_the_fix(acdc_root, tmp_path):
    root, _ = acdc_root
    (root / "cine.list").write_text("patient001_4d\n")
    with pytest.raises(DataError, match=r"patient001_4d.nii.gz is 4D \(shape \(16, 12, 3, 4\)\).*patientNNN_frameMM"):
        open_slices(root, "cine")
    _write(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.int16))
    (tmp_path / "test.list").write_text("flat\n")
    with pytest.raises(DataError, match="is 2D .*export it as one 3D volume"):
        open_slices(tmp_path, "test")


def test_missing_volume_bad_labels_corrupt_file_unknown_layout_and_no_nibabel(acdc_root, tmp_path, monkeypatch):
    root, _ = acdc_root
    (root / "gone.list").write_text("patient004_frame01\n")
    with pytest.raises(DataError, match=r"volume 'patient004_frame01' listed in .*gone.list not found.*patient004/"):
        open_slices(root, "gone")
    with pytest.raises(DataError, match="has no test_slices.list or test.list"):
        open_slices(root, "test")
    with pytest.raises(ConfigError, match="valid names: auto, h5, png, nifti"):
        open_slices(root, "train", "nii")

    image, label = _case(9)
    _write(tmp_path / "a.nii.gz", image)
    _write(tmp_path / "a_gt.nii.gz", label.astype(np.float32) + 0.5)  # an image saved as the label
    (tmp_path / "test.list").write_text("a\n")
    ds = open_slices(tmp_path, "test")
    with pytest.raises(DataError, match="a_gt.nii.gz: label values must be integers"):
        ds.load_volume("a")
    _write(tmp_path / "a_gt.nii.gz", label + 3)  # values up to 6 with 3 classes
    with pytest.raises(DataError, match=r"a_gt.nii.gz: label values \[4, 5, 6\] outside 0..3"):
        open_slices(tmp_path, "test").load_volume("a")

    (tmp_path / "a.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(DataError, match=r"cannot read .*a.nii.gz as NIfTI .*re-export the file"):
        open_slices(tmp_path, "test")

    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"NIfTI volumes needs the optional package 'nibabel'.*\[medical\]"):
        open_slices(tmp_path, "test")
