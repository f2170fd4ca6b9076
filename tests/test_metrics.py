"""Confusion matrices, the scores derived from them, and slice evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from edgeloop.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    SegmentationScores,
    SliceResult,
    confusion_matrix,
    evaluate_slices,
    metric_fn,
    object_matrix,
    per_image_confusion,
    right_class_matrix,
)

NAMES = ("a", "b", "c", "d")

# Hand example: 6 pixels, one ignored, class 3 ("d") in neither map.
TARGET = np.array([[0, 0, 1], [1, 2, IGNORE_INDEX]])
PRED = np.array([[0, 1, 1], [2, 2, 0]])


def test_confusion_matrix_by_hand_skips_ignored_pixels() -> None:
    m = confusion_matrix(TARGET, PRED, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = 1
    expected[1, 2] = expected[2, 2] = 1
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 5  # the 255 pixel is not counted


def test_scores_by_hand_absent_class_is_nan_and_left_out_of_means() -> None:
    s = SegmentationScores.from_matrix(confusion_matrix(TARGET, PRED, 4))
    # IoU = TP / (TP + FP + FN): a 1/(1+0+1), b 1/(1+1+1), c 1/(1+1+0).
    assert s.iou[:3] == pytest.approx((1 / 2, 1 / 3, 1 / 2))
    assert math.isnan(s.iou[3])
    assert s.miou == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    # Dice = 2TP / (2TP + FP + FN).
    assert s.dice[:3] == pytest.approx((2 / 3, 2 / 4, 2 / 3))
    assert math.isnan(s.dice[3])
    assert s.mdice == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)
    assert s.n_pixels == 5


def test_class_predicted_but_absent_from_truth_scores_zero() -> None:
    s = SegmentationScores.from_matrix(confusion_matrix([0, 0], [0, 1], 2))
    assert s.iou == (0.5, 0.0)
    assert s.dice == pytest.approx((2 / 3, 0.0))
    assert s.miou == pytest.approx(0.25)


def test_dice_matches_formula_on_random_matrix() -> None:
    m = np.random.default_rng(3).integers(0, 50, size=(5, 5))
    s = SegmentationScores.from_matrix(m)
    for c in range(5):
        tp = m[c, c]
        fp = m[:, c].sum() - tp
        fn = m[c, :].sum() - tp
        assert s.dice[c] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert s.iou[c] == pytest.approx(tp / (tp + fp + fn))
    assert s.pixel_accuracy == pytest.approx(np.trace(m) / m.sum())


def test_no_pixels_gives_nan_everywhere() -> None:
    s = SegmentationScores.from_matrix(np.zeros((3, 3), dtype=np.int64))
    assert all(math.isnan(v) for v in (*s.iou, s.miou, s.mdice, s.pixel_accuracy))
    assert s.n_pixels == 0


def test_uint8_labels_do_not_overflow() -> None:
    # 20 * 19 + 19 = 399 does not fit uint8.
    t = np.array([19, 0], dtype=np.uint8)
    p = np.array([19, 0], dtype=np.uint8)
    m = confusion_matrix(t, p, 20)
    assert m[19, 19] == 1 and m[0, 0] == 1 and m.sum() == 2


@pytest.mark.parametrize(
    ("target", "pred", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), r"same shape.*\(2, 3\)"),
        (np.zeros(3, int), np.array([0, 4, 1]), r"pred values must be in \[0, 4\)"),
        (np.zeros(3, int), np.array([0, -1, 1]), r"pred values"),
        (np.array([0, 7, 1]), np.zeros(3, int), r"target values"),
        (np.zeros(3), np.zeros(3, int), r"target must hold integer labels"),
    ],
)
def test_confusion_matrix_rejects_bad_input(target, pred, match) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(target, pred, 4)


def test_ignore_index_that_is_a_class_is_rejected() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        confusion_matrix([0], [0], 4, ignore_index=3)


def _maps(seed: int, n: int = 6, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, size=(n, size, size))
    t[rng.random(t.shape) < 0.1] = IGNORE_INDEX
    p = rng.integers(0, 4, size=(n, size, size))
    return t, p


def test_per_image_confusion_stacked_equals_loop() -> None:
    t, p = _maps(0)
    per = per_image_confusion(t, p, 4)
    assert per.shape == (6, 4, 4)
    for i in range(6):
        np.testing.assert_array_equal(per[i], confusion_matrix(t[i], p[i], 4))


def test_per_image_confusion_list_of_varying_sizes() -> None:
    rng = np.random.default_rng(1)
    ts = [rng.integers(0, 3, size=s) for s in [(2, 3), (5, 4), (1, 1)]]
    ps = [rng.integers(0, 3, size=s) for s in [(2, 3), (5, 4), (1, 1)]]
    per = per_image_confusion(ts, ps, 3)
    assert per.shape == (3, 3, 3)
    assert per.sum(axis=(1, 2)).tolist() == [6, 20, 1]
    np.testing.assert_array_equal(per[1], confusion_matrix(ts[1], ps[1], 3))


def test_per_image_confusion_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W\), got shape \(4, 4\)"):
        per_image_confusion(np.zeros((4, 4), int), np.zeros((4, 4), int), 2)
    with pytest.raises(ValueError, match="as many images, got 2 and 1"):
        per_image_confusion([np.zeros(2, int)] * 2, [np.zeros(2, int)], 2)


def test_accumulator_equals_sum_of_per_image_matrices() -> None:
    t, p = _maps(2)
    cm = ConfusionMatrix(4)
    cm.update(t[:4], p[:4])  # a batch
    cm.update(t[4], p[4])  # single images
    cm.update(t[5], p[5])
    expected = per_image_confusion(t, p, 4).sum(axis=0)
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.scores() == SegmentationScores.from_matrix(expected)
    cm.matrix[0, 0] = 10**6  # a copy: the running sum is untouched
    np.testing.assert_array_equal(cm.matrix, expected)


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    t, p = _maps(4)
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(t), torch.from_numpy(p))
    expected = per_image_confusion(t, p, 4)
    np.testing.assert_array_equal(cm.matrix, expected.sum(axis=0))
    per = per_image_confusion(torch.from_numpy(t), torch.from_numpy(p), 4)
    np.testing.assert_array_equal(per, expected)
    m = confusion_matrix(torch.from_numpy(t[0]), torch.from_numpy(p[0]), 4)
    np.testing.assert_array_equal(m, expected[0])


def test_scores_to_dict_from_dict_round_trip_with_nan() -> None:
    s = SegmentationScores.from_matrix(confusion_matrix(TARGET, PRED, 4))
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["iou"][3] is None and d["dice"][3] is None
    back = SegmentationScores.from_dict(d)
    assert back == s
    assert math.isnan(back.iou[3])
    empty = SegmentationScores.from_matrix(np.zeros((2, 2), int))
    assert SegmentationScores.from_dict(empty.to_dict()) == empty


def test_named_class_metric_averages_only_those_classes() -> None:
    m = confusion_matrix(TARGET, PRED, 4)
    assert metric_fn("iou:a,b", NAMES)(m) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metric_fn("iou:b", NAMES)(m) == pytest.approx(1 / 3)
    # An absent named class is skipped like in miou.
    assert metric_fn("iou:c,d", NAMES)(m) == pytest.approx(1 / 2)
    assert metric_fn("miou", NAMES)(m) == pytest.approx(4 / 9)
    assert metric_fn("mdice", NAMES)(m) == pytest.approx(11 / 18)
    assert metric_fn("pixel_accuracy", NAMES)(m) == pytest.approx(3 / 5)
    assert isinstance(metric_fn("miou", NAMES)(m), float)


def test_unknown_metric_lists_valid_metrics() -> None:
    with pytest.raises(ValueError, match="unknown metric 'f1'.*'miou'.*'mdice'"):
        metric_fn("f1", NAMES)


def test_unknown_class_lists_valid_classes() -> None:
    with pytest.raises(ValueError, match=r"\['zebra'\].*\['a', 'b', 'c', 'd'\]"):
        metric_fn("iou:a,zebra", NAMES)
    with pytest.raises(ValueError, match="valid classes"):
        metric_fn("iou:", NAMES)


def test_metric_fn_rejects_wrong_matrix_shape() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\).*\(3, 3\)"):
        metric_fn("miou", NAMES)(np.eye(3))


@pytest.mark.parametrize("metric", ["miou", "mdice", "pixel_accuracy", "iou:a,d"])
def test_metric_fn_vectorised_equals_loop(metric: str) -> None:
    rng = np.random.default_rng(5)
    stack = rng.integers(0, 20, size=(50, 4, 4))
    stack[::7, 3, :] = 0  # class d absent from truth and prediction ...
    stack[::7, :, 3] = 0  # ... in some matrices: nan per class
    stack[10] = 0  # no pixels at all
    fn = metric_fn(metric, NAMES)
    out = fn(stack)
    assert out.shape == (50,)
    loop = np.array([fn(m) for m in stack])
    np.testing.assert_array_equal(out, loop)
    assert math.isnan(out[10])
    assert fn(stack.reshape(5, 10, 4, 4)).shape == (5, 10)


def _slice_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            ("i0", "cond:night"),
            ("i1", "cond:night"),
            ("i2", "cond:night"),
            ("i3", "cond:day"),
            ("zz", "cond:fog"),  # only an image that was not evaluated
            ("zz", "cond:day"),
        ],
        columns=["image_id", "slice"],
    )


def test_evaluate_slices_counts_flags_and_all() -> None:
    t, p = _maps(6, n=5)
    per = per_image_confusion(t, p, 4)
    ids = [f"i{i}" for i in range(5)]
    out = evaluate_slices(
        per, ids, _slice_table(), metric="miou", class_names=NAMES, min_images=2
    )
    assert list(out) == ["all", "cond:day", "cond:night"]  # fog: empty, skipped
    assert {k: v.n_images for k, v in out.items()} == {
        "all": 5,
        "cond:day": 1,
        "cond:night": 3,
    }
    assert out["cond:day"].insufficient
    assert not out["cond:night"].insufficient and not out["all"].insufficient
    night = per[:3].sum(axis=0)
    assert out["cond:night"].score == pytest.approx(metric_fn("miou", NAMES)(night))
    assert out["cond:night"].scores == SegmentationScores.from_matrix(night)
    assert out["all"].scores.n_pixels == int(per.sum())
    r = out["cond:night"]
    assert SliceResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_evaluate_slices_keeps_an_all_slice_from_the_table() -> None:
    per = np.ones((3, 2, 2), dtype=np.int64)
    table = pd.DataFrame({"image_id": ["x", "y"], "slice": ["all", "all"]})
    out = evaluate_slices(
        per, ["x", "y", "z"], table, metric="miou", class_names=("a", "b")
    )
    assert list(out) == ["all"] and out["all"].n_images == 2
    assert out["all"].insufficient  # default min_images = 20


def test_evaluate_slices_rejects_mismatched_ids() -> None:
    per = np.ones((3, 2, 2), dtype=np.int64)
    table = pd.DataFrame({"image_id": [], "slice": []})
    with pytest.raises(ValueError, match=r"2 ids for per_image of shape \(3, 2, 2\)"):
        evaluate_slices(per, ["x", "y"], table, metric="miou", class_names="ab")
    with pytest.raises(ValueError, match="duplicates"):
        evaluate_slices(per, ["x", "x", "y"], table, metric="miou", class_names="ab")


# Truth rows, prediction columns: background and three object classes.
DECOMPOSE = np.array(
    [
        [90, 4, 0, 1],  # background: 5 pixels invented as objects
        [2, 10, 3, 0],  # class 1: 2 missed, 3 given class 2
        [0, 1, 8, 0],  # class 2: 1 given class 1
        [1, 0, 2, 5],  # class 3: 1 missed, 2 given class 2
    ]
)


def test_object_matrix_merges_the_object_classes_by_hand() -> None:
    fg = object_matrix(DECOMPOSE, [1, 2, 3])
    np.testing.assert_array_equal(fg, [[90, 5], [3, 29]])
    assert fg.sum() == DECOMPOSE.sum()
    # Stacked matrices are collapsed one by one.
    stacked = object_matrix(np.stack([DECOMPOSE, 2 * DECOMPOSE]), [1, 2, 3])
    np.testing.assert_array_equal(stacked[1], [[180, 10], [6, 58]])
    # Object IoU = 29 / (29 + 5 + 3).
    assert SegmentationScores.from_matrix(fg).iou[1] == pytest.approx(29 / 37)
    # Objects [2, 3]: the rest is classes 0 and 1 merged.
    np.testing.assert_array_equal(object_matrix(DECOMPOSE, [3, 2]), [[106, 4], [2, 15]])


def test_right_class_matrix_moves_only_confusions_between_objects() -> None:
    right = right_class_matrix(DECOMPOSE, [1, 2, 3])
    np.testing.assert_array_equal(
        right,
        [[90, 4, 0, 1], [2, 13, 0, 0], [0, 0, 9, 0], [1, 0, 0, 7]],
    )
    assert right.sum() == DECOMPOSE.sum()
    # Misses and invented objects are kept, so the object-vs-rest matrix is the
    # same, and the per-class IoU can only rise.
    np.testing.assert_array_equal(
        object_matrix(right, [1, 2, 3]), object_matrix(DECOMPOSE, [1, 2, 3])
    )
    before = SegmentationScores.from_matrix(DECOMPOSE).iou
    after = SegmentationScores.from_matrix(right).iou
    assert all(a >= b for a, b in zip(after, before, strict=True))
    assert after[2] == pytest.approx(9 / 9)
    # Only confusions among the objects move: 1 -> 2 stays with objects [2, 3].
    assert right_class_matrix(DECOMPOSE, [2, 3])[1, 2] == 3
    assert right_class_matrix(DECOMPOSE, [2, 3])[3, 3] == 7
    # The input is not changed.
    assert DECOMPOSE[1, 2] == 3


@pytest.mark.parametrize("objects", [[], [4], [-1]])
@pytest.mark.parametrize("fn", [object_matrix, right_class_matrix])
def test_matrix_decompositions_reject_objects_that_are_no_class(fn, objects) -> None:
    with pytest.raises(ValueError, match="objects must be class ids"):
        fn(DECOMPOSE, objects)


def test_object_matrix_needs_a_class_left_out() -> None:
    with pytest.raises(ValueError, match="at least one class out"):
        object_matrix(DECOMPOSE, [0, 1, 2, 3])
