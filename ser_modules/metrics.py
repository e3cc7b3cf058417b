"""Metrics of both papers, defined once: WA, UA, WF1, confusion matrix, fold aggregation.

* WA  = overall accuracy (weighted accuracy in SER papers),
* UA  = mean per-class recall (unweighted accuracy, balanced accuracy),
* WF1 = support-weighted mean of per-class F1.

Computed with scikit-learn so that they agree with the reference implementation.
Folds are aggregated as the papers do (mean and standard deviation of the per-fold scores)
and also as the score of the pooled predictions.
"""

import numpy as np
from sklearn import metrics as sk_metrics

METRIC_NAMES = ("WA", "UA", "WF1")


def classification_scores(y_true, y_pred, labels=None):
    """Score predictions.

    Arguments
    ---------
    y_true, y_pred : sequence of int or str
        Reference and predicted labels of the same length (> 0).
    labels : sequence, optional
        All class labels in display order (classes absent from a fold still get a row of
        the confusion matrix). Defaults to the sorted union of both sequences.

    Returns
    -------
    dict
        ``WA``, ``UA``, ``WF1`` (floats), ``confusion`` (list of lists, rows = reference),
        ``labels`` and ``per_class`` (precision / recall / F1 / support per label).
    """
    y_true = list(y_true)
    y_pred = list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"{len(y_true)} references but {len(y_pred)} predictions"
        )
    if not y_true:
        raise ValueError("Cannot score an empty set of predictions.")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    labels = list(labels)
    present = [label for label in labels if label in set(y_true)]
    # UA averages recall over the classes present in the reference, like balanced accuracy.
    recalls = sk_metrics.recall_score(
        y_true, y_pred, labels=present, average=None, zero_division=0
    )
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "WA": float(sk_metrics.accuracy_score(y_true, y_pred)),
        "UA": float(np.mean(recalls)),
        "WF1": float(
            sk_metrics.f1_score(
                y_true,
                y_pred,
                labels=present,
                average="weighted",
                zero_division=0,
            )
        ),
        "labels": [str(label) for label in labels],
        "confusion": sk_metrics.confusion_matrix(
            y_true, y_pred, labels=labels
        ).tolist(),
        "per_class": {
            str(label): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def aggregate_folds(fold_predictions, labels=None):
    """Aggregate per-fold predictions.

    Arguments
    ---------
    fold_predictions : dict
        ``{fold_name: (y_true, y_pred)}``.
    labels : sequence, optional
        Class labels in display order.

    Returns
    -------
    dict
        ``folds`` (scores per fold), ``mean`` and ``std`` (population std, ``ddof=0``, of
        the per-fold WA / UA / WF1), ``pooled`` (scores of all predictions together).
    """
    if not fold_predictions:
        raise ValueError("No folds to aggregate.")
    folds = {
        name: classification_scores(t, p, labels)
        for name, (t, p) in fold_predictions.items()
    }
    all_true = [y for t, _ in fold_predictions.values() for y in t]
    all_pred = [y for _, p in fold_predictions.values() for y in p]
    return {
        "folds": folds,
        "mean": {
            m: float(np.mean([f[m] for f in folds.values()]))
            for m in METRIC_NAMES
        },
        "std": {
            m: float(np.std([f[m] for f in folds.values()]))
            for m in METRIC_NAMES
        },
        "pooled": classification_scores(all_true, all_pred, labels),
    }


def format_report(scores):
    """A per-class text report (precision, recall, F1, support) of :func:`classification_scores`."""
    lines = [
        f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}"
    ]
    for label, row in scores["per_class"].items():
        lines.append(
            f"{label:>12} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:7.3f} {row['support']:7d}"
        )
    lines.append(
        f"WA {scores['WA']:.4f}  UA {scores['UA']:.4f}  WF1 {scores['WF1']:.4f}"
    )
    return "\n".join(lines)
