"""Seeded, reproducible train / valid / test splits of a labelled corpus (scikit-learn based).

Every data preparation in ``recipes/`` builds its evaluation protocol from these few
functions, so that a protocol means the same thing on every corpus:

* :func:`leave_one_group_out` - one fold per group (IEMOCAP sessions or speakers);
* :func:`speaker_kfold` - K speaker-disjoint folds, label-stratified as far as the speakers allow;
* :func:`stratified_split` - a random share of the utterances with the label proportions kept;
* :func:`speaker_holdout_split` - a random share of the speakers held out;
* :func:`draw_validation` - a validation set taken from the training part of a split.

All functions take per-utterance arrays (labels, speakers) and return sorted integer
positions into them. They are deterministic for a given input order and ``seed``: callers
sort their utterances (by ID) before splitting, so that a split reproduces exactly across
runs and machines.
"""

import collections

import numpy as np

# scikit-learn is imported inside the functions: it costs a second of every recipe
# process's start, and a run on given manifests (--train_csv ...) splits nothing.


def _check_fraction(fraction, name):
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"{name} must be strictly between 0 and 1, got {fraction}."
        )


def leave_one_group_out(groups):
    """One fold per distinct group: that group is the test set, all others the training set.

    Arguments
    ---------
    groups : sequence of str
        ``(N,)`` group of each utterance (session, speaker ...).

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)
        ``(held_out_group, train_positions, test_positions)`` per fold, in sorted group order.
    """
    from sklearn.model_selection import LeaveOneGroupOut

    groups = np.asarray(groups)
    folds = []
    for train, test in LeaveOneGroupOut().split(groups, groups=groups):
        # LeaveOneGroupOut walks the groups in sorted order, so fold k is the k-th group.
        folds.append((str(groups[test[0]]), np.sort(train), np.sort(test)))
    return folds


def speaker_kfold(labels, speakers, n_folds, seed):
    """Speaker-disjoint K-fold split with label stratification (``StratifiedGroupKFold``).

    Every utterance is in the test set of exactly one fold, and no speaker appears in both
    the training and the test positions of a fold. Speakers are shuffled with ``seed``
    before being balanced across folds.

    Arguments
    ---------
    labels : sequence of str
        ``(N,)`` emotion label of each utterance.
    speakers : sequence of str
        ``(N,)`` speaker of each utterance.
    n_folds : int
        Number of folds K (at most the number of speakers).
    seed : int
        Random state of the speaker shuffle.

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        ``(train_positions, test_positions)`` for each of the K folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, speakers = np.asarray(labels), np.asarray(speakers)
    n_speakers = len(set(speakers.tolist()))
    if not 2 <= n_folds <= n_speakers:
        raise ValueError(
            f"A speaker-grouped {n_folds}-fold split needs between 2 and {n_speakers} folds "
            f"(the number of speakers found): choose --n_folds accordingly."
        )
    splitter = StratifiedGroupKFold(
        n_splits=n_folds, shuffle=True, random_state=seed
    )
    return [
        (np.sort(train), np.sort(test))
        for train, test in splitter.split(
            np.zeros(len(labels)), labels, groups=speakers
        )
    ]


def stratified_split(labels, test_fraction, seed):
    """Random split of the utterances that keeps the label proportions (seeded).

    Arguments
    ---------
    labels : sequence of str
        ``(N,)`` label of each utterance.
    test_fraction : float
        Share of the utterances held out (rounded up by scikit-learn), in (0, 1).
    seed : int
        Random state.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(kept_positions, held_out_positions)``.
    """
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction, "The held-out fraction")
    labels = np.asarray(labels)
    try:
        kept, held_out = train_test_split(
            np.arange(len(labels)),
            test_size=test_fraction,
            stratify=labels,
            random_state=seed,
        )
    except ValueError as error:
        counts = dict(sorted(collections.Counter(labels.tolist()).items()))
        raise ValueError(
            f"Cannot draw a label-stratified {test_fraction:.0%} share of {len(labels)} "
            f"utterances with label counts {counts} ({error}). Every label needs at least 2 "
            "utterances and each side at least one per label: change the fraction, merge or "
            "drop rare labels."
        ) from error
    return np.sort(kept), np.sort(held_out)


def speaker_holdout_split(speakers, test_fraction, seed):
    """Hold out a random share of the speakers (``GroupShuffleSplit``, seeded).

    Arguments
    ---------
    speakers : sequence of str
        ``(N,)`` speaker of each utterance.
    test_fraction : float
        Share of the *speakers* held out (rounded up, at least one), in (0, 1).
    seed : int
        Random state.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(kept_positions, held_out_positions)``, with no speaker on both sides.
    """
    from sklearn.model_selection import GroupShuffleSplit

    _check_fraction(test_fraction, "The held-out fraction")
    speakers = np.asarray(speakers)
    if len(set(speakers.tolist())) < 2:
        raise ValueError("A speaker hold-out split needs at least 2 speakers.")
    splitter = GroupShuffleSplit(
        n_splits=1, test_size=test_fraction, random_state=seed
    )
    kept, held_out = next(
        splitter.split(np.zeros(len(speakers)), groups=speakers)
    )
    return np.sort(kept), np.sort(held_out)


def draw_validation(
    train_positions, labels, valid_fraction, seed, speakers=None
):
    """Move a seeded share of the training utterances to a validation set.

    Without ``speakers`` the share is label-stratified over utterances; with ``speakers``
    whole training speakers are moved (a speaker-independent validation set).

    Arguments
    ---------
    train_positions : sequence of int
        Positions (into ``labels``) of the training part of a split.
    labels : sequence of str
        ``(N,)`` label of every utterance of the corpus.
    valid_fraction : float
        Share of the training utterances (or speakers) moved to validation, in (0, 1).
    seed : int
        Random state.
    speakers : sequence of str, optional
        ``(N,)`` speaker of every utterance; given, validation is drawn by speaker.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(train_positions, valid_positions)``: disjoint, together the input positions.
    """
    train_positions = np.sort(np.asarray(train_positions, dtype=int))
    if speakers is None:
        kept, valid = stratified_split(
            np.asarray(labels)[train_positions], valid_fraction, seed
        )
    else:
        kept, valid = speaker_holdout_split(
            np.asarray(speakers)[train_positions], valid_fraction, seed
        )
    return train_positions[kept], train_positions[valid]


def draw_speaker_validation(
    train_positions, labels, speakers, valid_fraction, seed
):
    """Hold out whole training speakers for validation, as label-stratified as they allow.

    A validation set of the training speakers' own clips ranks models by how well they
    recognise *known* speakers, which flatters models that memorise speakers (on Urdu a
    valid UA of 0.96 went with a test UA of 0.68). This draws the validation speakers
    with ``StratifiedGroupKFold`` (``round(1 / valid_fraction)`` speaker groups of the
    training part, shuffled with ``seed``) and keeps the group that holds the most labels,
    then the largest smallest label count, then the size nearest ``valid_fraction``: on
    corpora whose speakers each act a few emotions, a plain random draw of speakers would
    often leave whole labels out of validation.

    Arguments
    ---------
    train_positions : sequence of int
        Positions (into ``labels``) of the training part of a split.
    labels : sequence of str
        ``(N,)`` label of every utterance of the corpus.
    speakers : sequence of str
        ``(N,)`` speaker of every utterance of the corpus.
    valid_fraction : float
        Approximate share of the training utterances moved to validation, in (0, 1).
    seed : int
        Random state of the speaker shuffle.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(train_positions, valid_positions)``: disjoint, together the input positions,
        with no speaker on both sides.
    """
    _check_fraction(valid_fraction, "The validation fraction")
    train_positions = np.sort(np.asarray(train_positions, dtype=int))
    labels = np.asarray(labels)[train_positions]
    speakers = np.asarray(speakers)[train_positions]
    n_speakers = len(set(speakers.tolist()))
    if n_speakers < 2:
        raise ValueError(
            "A speaker-disjoint validation set needs at least 2 training speakers; "
            "use --valid_split=utterance."
        )
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = min(max(2, round(1.0 / valid_fraction)), n_speakers)
    splitter = StratifiedGroupKFold(
        n_splits=n_groups, shuffle=True, random_state=seed
    )
    target = valid_fraction * len(labels)
    best, best_score = None, None
    for kept, held_out in splitter.split(
        np.zeros(len(labels)), labels, groups=speakers
    ):
        counts = collections.Counter(labels[held_out].tolist())
        score = (
            len(counts),
            min(counts.values()),
            -abs(len(held_out) - target),
        )
        if best_score is None or score > best_score:  # first of equals wins
            best, best_score = (kept, held_out), score
    kept, held_out = best
    return train_positions[np.sort(kept)], train_positions[np.sort(held_out)]
