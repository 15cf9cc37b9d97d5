"""Metrics: exact values on hand-made cases, and properties that must hold for any input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import metrics

K = 4
IGNORE = 255


@st.composite
def labelled_batches(draw: st.DrawFn, max_images: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(1, max_images))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (n, h, w), generator=g)
    ignore = torch.rand(n, h, w, generator=g) < draw(st.floats(0, 0.5))
    target[ignore] = IGNORE
    pred = torch.randint(0, K, (n, h, w), generator=g)
    return pred, target


def test_known_confusion_matrix_and_scores() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = metrics.confusion_matrix(pred, target, 3, IGNORE)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert metrics.pixel_accuracy(cm) == pytest.approx(5 / 7)
    # IoU: class 0: 1/(2+2-1)=1/3; class 1: 3/(3+4-3)=3/4; class 2: 1/(2+1-1)=1/2
    np.testing.assert_allclose(metrics.class_iou(cm), [1 / 3, 3 / 4, 1 / 2])
    assert metrics.miou(cm) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics.mean_class_accuracy(cm) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_absent_class_is_left_out_of_the_mean() -> None:
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    cm = metrics.confusion_matrix(pred, target, 3, IGNORE)
    assert np.isnan(metrics.class_iou(cm)[2])
    assert metrics.miou(cm) == 1.0


def test_out_of_range_label_is_an_error_not_a_silent_drop() -> None:
    with pytest.raises(ValueError, match=r"labels \[7\] outside \[0, 3\)"):
        metrics.confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3, IGNORE)


@settings(max_examples=60, deadline=None)
@given(labelled_batches())
def test_confusion_is_additive_over_any_split_of_the_batch(batch) -> None:
    pred, target = batch
    whole = metrics.confusion_matrix(pred, target, K, IGNORE)
    per_image = metrics.per_image_confusion(pred, target, K, IGNORE)
    assert torch.equal(per_image.sum(0), whole)
    streaming = metrics.ConfusionMatrix(K, IGNORE)
    for i in range(pred.shape[0]):
        streaming.update(pred[i], target[i])
    assert torch.equal(streaming.counts, whole)
    assert int(whole.sum()) == int((target != IGNORE).sum())


@settings(max_examples=40, deadline=None)
@given(labelled_batches(), st.randoms(use_true_random=False))
def test_scores_do_not_depend_on_class_order(batch, rnd) -> None:
    pred, target = batch
    perm = list(range(K))
    rnd.shuffle(perm)
    lut = torch.tensor([*perm, *range(K, 256)])
    relabel_t = torch.where(target == IGNORE, target, lut[target.clamp(max=255)])
    cm = metrics.confusion_matrix(pred, target, K, IGNORE)
    cm_perm = metrics.confusion_matrix(lut[pred], relabel_t, K, IGNORE)
    for fn in (metrics.miou, metrics.pixel_accuracy, metrics.mean_class_accuracy):
        a, b = fn(cm), fn(cm_perm)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b)


@settings(max_examples=40, deadline=None)
@given(labelled_batches())
def test_perfect_prediction_scores_one(batch) -> None:
    _, target = batch
    pred = torch.where(target == IGNORE, torch.zeros_like(target), target)
    cm = metrics.confusion_matrix(pred, target, K, IGNORE)
    if int(cm.sum()) == 0:
        return  # every pixel ignored: no score is defined
    assert metrics.miou(cm) == 1.0
    assert metrics.pixel_accuracy(cm) == 1.0
    assert metrics.mean_class_accuracy(cm) == 1.0


@settings(max_examples=40, deadline=None)
@given(labelled_batches())
def test_scores_lie_in_unit_interval_and_batched_equals_single(batch) -> None:
    pred, target = batch
    stack = metrics.per_image_confusion(pred, target, K, IGNORE).numpy()
    batched = metrics.miou(stack)
    for i in range(stack.shape[0]):
        single = metrics.miou(stack[i])
        assert (np.isnan(single) and np.isnan(batched[i])) or single == pytest.approx(batched[i])
        if not np.isnan(single):
            assert 0.0 <= single <= 1.0


def test_merge_equals_update_on_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = metrics.ConfusionMatrix(K), metrics.ConfusionMatrix(K)
    t1, t2 = torch.randint(0, K, (2, 8, 8), generator=g)
    p1, p2 = torch.randint(0, K, (2, 8, 8), generator=g)
    a.update(p1, t1)
    b.update(p2, t2)
    both = metrics.ConfusionMatrix(K)
    both.update(torch.stack([p1, p2]), torch.stack([t1, t2]))
    assert torch.equal(a.merge(b).counts, both.counts)
    with pytest.raises(ValueError, match="different classes"):
        a.merge(metrics.ConfusionMatrix(K + 1))


def test_metric_function_names_and_unknown_class() -> None:
    names = ("road", "car")
    cm = np.array([[3, 1], [0, 4]])
    assert metrics.metric_function("class_iou:car", names)(cm) == pytest.approx(4 / 5)
    with pytest.raises(KeyError, match="unknown class 'bus'; classes are road, car"):
        metrics.metric_function("class_iou:bus", names)
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.metric_function("dice", names)


def test_bootstrap_interval_brackets_estimate_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, K, (30, 16, 16), generator=g)
    noise = torch.rand(30, 16, 16, generator=g) < 0.3
    pred = torch.where(noise, torch.randint(0, K, (30, 16, 16), generator=g), target)
    stack = metrics.per_image_confusion(pred, target, K, IGNORE)
    estimate = metrics.miou(stack.sum(0))
    a = metrics.bootstrap_interval(stack, metrics.miou, n_resamples=500, seed=3)
    b = metrics.bootstrap_interval(stack, metrics.miou, n_resamples=500, seed=3)
    assert a == b
    assert a.low < estimate < a.high
    assert a.high - a.low < 0.1
    wider = metrics.bootstrap_interval(stack, metrics.miou, n_resamples=500, confidence=0.99)
    assert wider.high - wider.low > a.high - a.low


def test_bootstrap_of_identical_images_has_zero_width_and_one_image_has_none() -> None:
    cm = torch.tensor([[5, 1], [2, 7]])
    stack = cm.expand(10, 2, 2)
    interval = metrics.bootstrap_interval(stack, metrics.pixel_accuracy, n_resamples=100)
    assert interval.low == pytest.approx(interval.high)
    assert metrics.bootstrap_interval(stack[:1], metrics.pixel_accuracy) is None
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_interval(stack, metrics.pixel_accuracy, confidence=1.5)
