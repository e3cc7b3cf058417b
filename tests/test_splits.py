"""Split helpers: disjointness, coverage, stratification, speaker grouping, determinism."""

import collections

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from ser_modules.splits import (
    draw_speaker_validation,
    draw_validation,
    leave_one_group_out,
    speaker_holdout_split,
    speaker_kfold,
    stratified_split,
)


def toy_corpus():
    """12 speakers x 8 utterances, 4 labels, 2 utterances of each label per speaker."""
    speakers = np.repeat([f"spk{index:02d}" for index in range(12)], 8)
    labels = np.tile(np.repeat(["ang", "hap", "neu", "sad"], 2), 12)
    return labels, speakers


def test_leave_one_group_out_holds_out_each_group_in_sorted_order():
    groups = ["Ses02", "Ses01", "Ses02", "Ses03", "Ses01"]
    folds = leave_one_group_out(groups)
    assert [group for group, _, _ in folds] == ["Ses01", "Ses02", "Ses03"]
    assert [test.tolist() for _, _, test in folds] == [[1, 4], [0, 2], [3]]
    assert [train.tolist() for _, train, _ in folds] == [
        [0, 2, 3],
        [1, 3, 4],
        [0, 1, 2, 4],
    ]


def test_speaker_kfold_tests_every_utterance_once_with_disjoint_speakers():
    labels, speakers = toy_corpus()
    folds = speaker_kfold(labels, speakers, n_folds=4, seed=0)
    assert len(folds) == 4
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(
        range(96)
    )
    for train, test in folds:
        assert not set(speakers[train]) & set(speakers[test])
        assert len(train) + len(test) == 96
        assert len(set(speakers[test])) == 3  # 12 equal speakers over 4 folds


def test_speaker_kfold_equals_sklearn_stratified_group_kfold():
    labels, speakers = toy_corpus()
    reference = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=5)
    expected = [
        np.sort(test)
        for _, test in reference.split(labels, labels, groups=speakers)
    ]
    folds = speaker_kfold(labels, speakers, n_folds=3, seed=5)
    assert all(
        np.array_equal(test, reference)
        for (_, test), reference in zip(folds, expected)
    )


def test_speaker_kfold_is_reproducible_and_depends_on_the_seed():
    labels, speakers = toy_corpus()
    first = speaker_kfold(labels, speakers, 4, seed=1)
    again = speaker_kfold(labels, speakers, 4, seed=1)
    other = speaker_kfold(labels, speakers, 4, seed=2)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert {tuple(test) for _, test in first} != {
        tuple(test) for _, test in other
    }


def test_speaker_kfold_rejects_more_folds_than_speakers():
    labels, speakers = toy_corpus()
    with pytest.raises(ValueError, match="between 2 and 12 folds"):
        speaker_kfold(labels, speakers, n_folds=13, seed=0)


def test_stratified_split_keeps_label_proportions_exactly():
    labels = np.repeat(["ang", "hap", "neu", "sad"], [10, 20, 30, 40])
    kept, held_out = stratified_split(labels, test_fraction=0.2, seed=3)
    assert collections.Counter(labels[held_out].tolist()) == {
        "ang": 2,
        "hap": 4,
        "neu": 6,
        "sad": 8,
    }
    assert sorted(kept.tolist() + held_out.tolist()) == list(range(100))


def test_stratified_split_is_reproducible_and_depends_on_the_seed():
    labels = np.repeat(["ang", "hap", "neu", "sad"], 10)
    assert np.array_equal(
        stratified_split(labels, 0.25, 4)[1],
        stratified_split(labels, 0.25, 4)[1],
    )
    assert not np.array_equal(
        stratified_split(labels, 0.25, 4)[1],
        stratified_split(labels, 0.25, 5)[1],
    )


def test_stratified_split_of_a_single_utterance_label_names_the_label_counts():
    labels = ["ang"] * 10 + ["hap"] * 10 + ["sur"]
    with pytest.raises(ValueError, match="'sur': 1"):
        stratified_split(labels, 0.2, seed=0)


def test_fraction_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        stratified_split(["a", "b"] * 5, 1.0, seed=0)


def test_speaker_holdout_holds_out_a_share_of_the_speakers():
    _, speakers = toy_corpus()
    kept, held_out = speaker_holdout_split(speakers, test_fraction=0.25, seed=0)
    assert len(set(speakers[held_out])) == 3  # 25 % of 12 speakers
    assert not set(speakers[kept]) & set(speakers[held_out])
    assert sorted(kept.tolist() + held_out.tolist()) == list(range(96))


def test_speaker_holdout_is_reproducible_and_depends_on_the_seed():
    _, speakers = toy_corpus()
    assert np.array_equal(
        speaker_holdout_split(speakers, 0.25, 9)[1],
        speaker_holdout_split(speakers, 0.25, 9)[1],
    )
    assert set(speakers[speaker_holdout_split(speakers, 0.25, 9)[1]]) != set(
        speakers[speaker_holdout_split(speakers, 0.25, 10)[1]]
    )


def test_stratified_validation_is_drawn_from_the_training_positions_only():
    labels, _ = toy_corpus()
    training = np.arange(0, 96, 2)  # every other utterance: 12 of each label
    train, valid = draw_validation(
        training, labels, valid_fraction=0.25, seed=0
    )
    assert sorted(train.tolist() + valid.tolist()) == training.tolist()
    assert collections.Counter(labels[valid].tolist()) == {
        "ang": 3,
        "hap": 3,
        "neu": 3,
        "sad": 3,
    }


def test_validation_by_speaker_moves_whole_training_speakers():
    labels, speakers = toy_corpus()
    training = np.flatnonzero(speakers < "spk08")  # 8 training speakers
    train, valid = draw_validation(
        training, labels, 0.25, seed=0, speakers=speakers
    )
    assert sorted(train.tolist() + valid.tolist()) == training.tolist()
    assert len(set(speakers[valid])) == 2
    assert not set(speakers[train]) & set(speakers[valid])
    assert set(speakers[valid]) < {f"spk{index:02d}" for index in range(8)}


def test_speaker_validation_prefers_a_group_that_holds_every_label():
    # Speakers act one emotion each (as most Urdu speakers do): 3 per label, sizes 2-6.
    labels, speakers = [], []
    for emotion in ("ang", "hap", "neu", "sad"):
        for index, size in enumerate((2, 4, 6)):
            labels += [emotion] * size
            speakers += [f"{emotion}{index}"] * size
    labels, speakers = np.array(labels), np.array(speakers)
    training = np.arange(len(labels))
    train, valid = draw_speaker_validation(training, labels, speakers, 0.34, 3)
    assert sorted(train.tolist() + valid.tolist()) == training.tolist()
    assert not set(speakers[train]) & set(speakers[valid])
    assert set(labels[valid]) == {"ang", "hap", "neu", "sad"}
    assert np.array_equal(
        valid, draw_speaker_validation(training, labels, speakers, 0.34, 3)[1]
    )
    with pytest.raises(ValueError, match="2 training speakers"):
        draw_speaker_validation(
            training[:2], labels, speakers, 0.2, 0
        )  # one speaker
