"""Specification of the metrics (ser_modules/metrics.py): WA, UA, WF1 and fold aggregation."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from ser_modules.metrics import (
    aggregate_folds,
    classification_scores,
    format_report,
)


def _random_predictions(seed, num_classes=4, size=60):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, size).tolist()
    # Predictions right about half of the time, so that every metric is far from 0 and 1.
    y_pred = [
        t if rng.random() < 0.5 else int(rng.integers(0, num_classes))
        for t in y_true
    ]
    return y_true, y_pred


def _assert_matches_sklearn(y_true, y_pred, labels):
    scores = classification_scores(y_true, y_pred, labels)
    assert scores["WA"] == pytest.approx(
        sk_metrics.accuracy_score(y_true, y_pred)
    )
    assert scores["UA"] == pytest.approx(
        sk_metrics.balanced_accuracy_score(y_true, y_pred)
    )
    assert scores["WF1"] == pytest.approx(
        sk_metrics.f1_score(y_true, y_pred, average="weighted")
    )
    assert (
        scores["confusion"]
        == sk_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    )


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_sklearn_on_random_predictions(seed):
    y_true, y_pred = _random_predictions(seed)
    _assert_matches_sklearn(y_true, y_pred, labels=[0, 1, 2, 3])


@pytest.mark.parametrize("seed", range(3))
def test_scores_match_sklearn_when_a_class_is_never_predicted(seed):
    y_true, y_pred = _random_predictions(seed)
    y_pred = [0 if p == 3 else p for p in y_pred]
    assert 3 in y_true and 3 not in y_pred
    _assert_matches_sklearn(y_true, y_pred, labels=[0, 1, 2, 3])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(3))
def test_class_absent_from_references_does_not_count_in_ua_or_wf1(seed):
    # sklearn's balanced accuracy and weighted F1 ignore classes without references.
    y_true, y_pred = _random_predictions(seed)
    y_true = [0 if t == 3 else t for t in y_true]
    assert 3 not in y_true and 3 in y_pred
    _assert_matches_sklearn(y_true, y_pred, labels=[0, 1, 2, 3])


def test_hand_computed_example():
    # Class a: 2 of 3 right; class b: 1 of 1 right. Predicted b twice: precision 0.5, F1 2/3.
    scores = classification_scores(["a", "a", "a", "b"], ["a", "a", "b", "b"])
    assert scores["WA"] == pytest.approx(0.75)
    assert scores["UA"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["WF1"] == pytest.approx(0.75 * 0.8 + 0.25 * (2 / 3))
    assert scores["confusion"] == [[2, 1], [0, 1]]


def test_per_class_report_matches_sklearn_precision_recall_f1_support():
    y_true, y_pred = _random_predictions(0)
    labels = [3, 1, 0, 2]
    scores = classification_scores(y_true, y_pred, labels)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels
    )
    assert list(scores["per_class"]) == ["3", "1", "0", "2"]
    for i, label in enumerate(labels):
        row = scores["per_class"][str(label)]
        assert row == pytest.approx(
            {
                "precision": precision[i],
                "recall": recall[i],
                "f1": f1[i],
                "support": support[i],
            }
        )


def test_class_absent_from_the_fold_keeps_its_row_in_display_order():
    scores = classification_scores(
        ["neu", "sad"], ["neu", "neu"], labels=["neu", "hap", "sad"]
    )
    assert scores["labels"] == ["neu", "hap", "sad"]
    assert scores["confusion"] == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert scores["per_class"]["hap"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert scores["UA"] == pytest.approx(
        0.5
    )  # mean of neu (1.0) and sad (0.0) recall only


def test_default_labels_are_the_sorted_union_of_references_and_predictions():
    scores = classification_scores(["sad", "ang"], ["hap", "ang"])
    assert scores["labels"] == ["ang", "hap", "sad"]


def test_format_report_lists_every_class_and_the_summary_scores():
    report = format_report(
        classification_scores(["neu", "sad", "sad"], ["neu", "sad", "neu"])
    )
    lines = report.splitlines()
    assert lines[1].split() == ["neu", "0.500", "1.000", "0.667", "1"]
    assert lines[2].split() == ["sad", "1.000", "0.500", "0.667", "2"]
    assert lines[-1] == "WA 0.6667  UA 0.7500  WF1 0.6667"


def test_length_mismatch_and_empty_input_are_rejected():
    with pytest.raises(ValueError, match="3 references but 2 predictions"):
        classification_scores([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        classification_scores([], [])


def test_aggregate_folds_mean_and_std_are_numpy_over_per_fold_sklearn_scores():
    folds = {
        f"fold{seed}": _random_predictions(seed, size=20 + 10 * seed)
        for seed in range(4)
    }
    aggregated = aggregate_folds(folds, labels=[0, 1, 2, 3])
    by_hand = {
        "WA": [sk_metrics.accuracy_score(t, p) for t, p in folds.values()],
        "UA": [
            sk_metrics.balanced_accuracy_score(t, p) for t, p in folds.values()
        ],
        "WF1": [
            sk_metrics.f1_score(t, p, average="weighted")
            for t, p in folds.values()
        ],
    }
    for metric, values in by_hand.items():
        assert aggregated["mean"][metric] == pytest.approx(np.mean(values))
        assert aggregated["std"][metric] == pytest.approx(
            np.std(values, ddof=0)
        )
    assert list(aggregated["folds"]) == list(folds)
    assert aggregated["folds"]["fold2"]["WA"] == pytest.approx(by_hand["WA"][2])


def test_aggregate_folds_hand_computed_mean_and_population_std():
    aggregated = aggregate_folds(
        {"A": ([0, 0, 1, 1], [0, 1, 1, 1]), "B": ([0, 1], [0, 1])}
    )
    assert aggregated["mean"]["WA"] == pytest.approx(0.875)
    assert aggregated["std"]["WA"] == pytest.approx(0.125)


def test_pooled_scores_equal_the_scores_of_the_concatenated_predictions():
    folds = {
        f"fold{seed}": _random_predictions(seed, size=15 + 5 * seed)
        for seed in range(3)
    }
    aggregated = aggregate_folds(folds, labels=[0, 1, 2, 3])
    all_true = sum((t for t, _ in folds.values()), [])
    all_pred = sum((p for _, p in folds.values()), [])
    assert aggregated["pooled"] == classification_scores(
        all_true, all_pred, labels=[0, 1, 2, 3]
    )
    # Unequal fold sizes: the pooled WA weights folds by size, the mean does not.
    assert aggregated["pooled"]["WA"] != pytest.approx(aggregated["mean"]["WA"])


def test_aggregating_no_folds_is_rejected():
    with pytest.raises(ValueError, match="No folds"):
        aggregate_folds({})
