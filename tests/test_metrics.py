import numpy as np
import pytest
from PIL import Image

from weakseg.errors import DataError
from weakseg.eval.metrics import ConfusionMatrix, confusion
from weakseg.stages.evaluate import EvalConfig, evaluate_folders


def naive_iou(gts, preds, c):
    ious = []
    for k in range(c):
        inter = union = 0
        for g, p in zip(gts, preds, strict=True):
            valid = g != 255
            inter += np.sum((g == k) & (p == k) & valid)
            union += np.sum(((g == k) | (p == k)) & valid)
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


def test_hand_computed_example():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    cm = ConfusionMatrix(["bg", "a", "b"])
    cm.update(gt, pred)
    m = cm.metrics()
    # bg: TP 1, FN 1 (pred a), FP 0 -> 1/2; a: TP 2, FP 2 -> 2/4; b: TP 0 -> 0
    np.testing.assert_allclose(m.iou, [0.5, 0.5, 0.0])
    assert m.miou == pytest.approx(1 / 3)
    assert m.pixel_accuracy == pytest.approx(3 / 5)
    np.testing.assert_allclose(m.precision[:2], [1.0, 0.5])
    assert np.isnan(m.precision[2])
    np.testing.assert_allclose(m.recall, [0.5, 1.0, 0.0])


def test_matches_naive_loop_on_random_masks():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (17, 23)) for _ in range(6)]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    preds = [rng.integers(0, 5, (17, 23)) for _ in range(6)]
    cm = ConfusionMatrix([str(i) for i in range(5)])
    for g, p in zip(gts, preds, strict=True):
        cm.update(g, p)
    np.testing.assert_allclose(cm.metrics().iou, naive_iou(gts, preds, 5))


def test_absent_class_is_nan_and_excluded_from_mean():
    gt = np.zeros((4, 4), np.uint8)
    cm = ConfusionMatrix(["bg", "a"])
    cm.update(gt, gt.copy())
    m = cm.metrics()
    assert np.isnan(m.iou[1]) and m.miou == 1.0


def test_out_of_range_prediction_counts_as_miss():
    gt = np.array([[1, 1]])
    pred = np.array([[1, 255]])
    m = ConfusionMatrix(["bg", "a"])
    m.update(gt, pred)
    assert m.metrics().iou[1] == pytest.approx(0.5)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="classes"):
        confusion(np.full((2, 2), 7), np.zeros((2, 2)), 2)


def test_evaluate_folders(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    gt = np.array([[0, 1], [2, 255]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt" / "a.png")
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(tmp_path / "pred" / "a.png")
    m = evaluate_folders(EvalConfig(pred=tmp_path / "pred", gt=tmp_path / "gt", out=tmp_path / "m.json"))
    assert m.class_names == ("background", "cat", "dog")
    np.testing.assert_allclose(m.iou, [1.0, 0.5, 0.0])
    assert (tmp_path / "m.json").is_file()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "pred" / "a.png")
    with pytest.raises(DataError, match="a.png"):
        evaluate_folders(EvalConfig(pred=tmp_path / "pred", gt=tmp_path / "gt"))
