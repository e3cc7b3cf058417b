"""The field's classic baseline: openSMILE functionals + a linear SVM.

    python recipes/custom/baseline.py hparams/svm_egemaps.yaml \
        --data_folder=/path/to/corpus --labels_csv=labels.csv

Each ``recipes/<DATASET>/baseline.py`` reads top to bottom as the flow of the baseline
(the same manifests, folds and dataset defaults as that dataset's ``train.py``); the
functions here are its steps, with explicit arguments. For every fold: the eGeMAPSv02
functionals (88 per utterance; ``--features=compare`` for the 6,373 ComParE_2016 ones) of
the first ``crop_seconds`` of each utterance (:func:`extract_functionals`), a
``StandardScaler`` fitted on the fold's training set and a linear SVM (scikit-learn
``SVC(kernel="linear")``) whose ``C`` is chosen on the selection set by the selection
metric; the SVM trained on the training set with that ``C`` is tested
(:func:`select_and_test`, :func:`run_fold`). The folds are aggregated by
:func:`ser_modules.recipe.summarise` into the same ``results.json`` (with the run's
identity, :mod:`ser_modules.run_identity`) / ``results.md`` / confusion matrix as a
learned model, so ``python -m ser_modules.reports`` shows it as a row next to them.

A finished fold is not redone when the command is run again, and only when its
fingerprint (:func:`ser_modules.recipe.fold_fingerprint`: hparams, manifests, audio,
labels, feature set, code) is the one stored with it.
"""

import dataclasses
import json
import logging
import os

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ser_modules.audio import (
    audio_info,
    crop_or_pad,
    load_audio,
    seconds_to_samples,
)
from ser_modules.fingerprint import check_fingerprint, json_sha256
from ser_modules.manifest import atomic_write_text, read_csv, resolve_path
from ser_modules.metrics import classification_scores
from ser_modules.recipe import (
    fold_fingerprint,
    fold_has_results,
    run_provenance,
    shared_label_encoder,
)
from ser_modules.upstreams.opensmile import (
    FEATURE_SETS as OPENSMILE_FEATURE_SETS,
)
from ser_modules.upstreams.opensmile import (
    LLD_WINDOW_SECONDS,
    build_smile,
    feature_set_name,
    opensmile_functionals,
    opensmile_version,
)

logger = logging.getLogger(__name__)

CLASSIFIER = "StandardScaler + SVC(kernel='linear')"


def check_feature_level(feature_level):
    """The baseline classifies utterance-level functionals; refuse anything else."""
    if feature_level != "functionals":
        raise ValueError(
            f"feature_level={feature_level!r}: the classic baseline classifies "
            "utterance-level functionals; frame-level LLDs are the upstream of the "
            "neural recipes (train.py with --features=egemaps)."
        )


def make_svm(c, class_weight=None, max_iter=-1):
    """``StandardScaler -> SVC(kernel="linear", C=c)`` (standardisation fitted on the training set)."""
    return make_pipeline(
        StandardScaler(),
        SVC(kernel="linear", C=c, class_weight=class_weight, max_iter=max_iter),
    )


def select_and_test(
    train,
    valid,
    test,
    c_grid,
    labels,
    metric="UA",
    class_weight=None,
    max_iter=-1,
):
    """Choose ``C`` on the validation set, then test the SVM trained with it.

    Arguments
    ---------
    train, valid, test : tuple of (numpy.ndarray, numpy.ndarray)
        ``(X (N, F), y (N,))`` per set; ``y`` holds class indices.
    c_grid : list of float
        Candidate ``C`` values; on a tie of the validation score the smallest ``C`` (the
        strongest regularisation) wins.
    labels : list of int
        Every class index (for the scores).
    metric : str
        ``WA``, ``UA`` or ``WF1``: the validation score to maximise.
    class_weight : str or None
        ``"balanced"`` or None, passed to ``SVC``.
    max_iter : int
        ``SVC``'s iteration limit (-1: none).

    Returns
    -------
    dict
        ``C`` (chosen), ``valid_scores`` (``{C: score}``), ``predictions`` (test class
        indices) and ``model`` (the fitted pipeline).
    """
    if not c_grid:
        raise ValueError(
            "c_grid is empty: give at least one C for the linear SVM."
        )
    valid_scores, best = {}, None
    for c in sorted(float(value) for value in c_grid):
        model = make_svm(c, class_weight, max_iter).fit(*train)
        score = classification_scores(
            valid[1], model.predict(valid[0]), labels=labels
        )[metric]
        valid_scores[c] = float(score)
        if best is None or score > valid_scores[best[0]]:
            best = (c, model)
    c, model = best
    return {
        "C": c,
        "valid_scores": valid_scores,
        "predictions": model.predict(test[0]).tolist(),
        "model": model,
    }


def manifest_rows(splits, folds):
    """The rows of every manifest of the folds to run, each utterance once."""
    rows = {}
    for fold in folds:
        for path in splits[fold].values():
            for row in read_csv(path):
                rows.setdefault(row["ID"], row)
    return list(rows.values())


def extract_functionals(
    rows, replacements, feature_set, sample_rate, crop_seconds
):
    """Functionals ``{utt_id: (F,)}`` of manifest rows (first ``crop_seconds`` of each file).

    ``sample_rate=None`` reads each file at its own rate (openSMILE's configurations work
    at any rate); otherwise files are resampled to ``sample_rate`` as for the neural
    recipes. An utterance shorter than openSMILE's 60 ms analysis window is zero-padded to
    it (as the frame-level upstream is), with a warning naming it.
    """
    smile = build_smile(feature_set, "functionals")
    features, padded = {}, []
    for row in rows:
        path = resolve_path(row["wav"], replacements, row["ID"])
        rate = sample_rate or audio_info(path)[1]
        waveform = load_audio(path, rate)
        num_samples = (
            seconds_to_samples(crop_seconds, rate) if crop_seconds else None
        )
        min_samples = round(LLD_WINDOW_SECONDS * rate)
        if waveform.shape[-1] < min_samples:
            padded.append(row["ID"])
        waveform = crop_or_pad(
            waveform, num_samples, mode="first", min_samples=min_samples
        )
        features[row["ID"]] = opensmile_functionals(
            waveform, rate, feature_set, smile=smile
        )
    if padded:
        logger.warning(
            "%d utterances are shorter than openSMILE's %.0f ms window: zero-padded to it (%s).",
            len(padded),
            1000 * LLD_WINDOW_SECONDS,
            ", ".join(padded[:5]) + (" ..." if len(padded) > 5 else ""),
        )
    return features


@dataclasses.dataclass
class BaselineRun:
    """What every fold of a baseline run shares: built once, after the preparation."""

    splits: dict
    replacements: dict
    label_encoder: object
    provenance: dict
    extraction: dict

    @classmethod
    def start(
        cls,
        dataset_name,
        yaml_text,
        prepare_kwargs,
        splits,
        folds,
        upstream_identity,
        output_folder,
        data_folder,
        prepare_folder,
    ):
        """The labels of every fold (``<output_folder>/label_encoder.txt``), the
        manifests' path replacements and the run's shared fingerprint.

        Arguments
        ---------
        dataset_name, yaml_text, prepare_kwargs
            See :func:`ser_modules.recipe.run_provenance`.
        splits : dict
            ``{fold: {split: csv}}`` of every fold (:func:`ser_modules.recipe.fold_manifests`).
        folds : list of str
            The folds to run: their utterances are the ones :meth:`functionals` extracts.
        upstream_identity : dict
            ``upstream_record(...)["identity"]``.
        output_folder, data_folder, prepare_folder : str
            The run's folders.
        """
        label_encoder = shared_label_encoder(splits, output_folder)
        return cls(
            splits=splits,
            replacements={
                "data_root": data_folder,
                "prep_root": prepare_folder,
            },
            label_encoder=label_encoder,
            provenance=run_provenance(
                dataset_name,
                yaml_text,
                prepare_kwargs,
                label_encoder,
                upstream_identity,
            ),
            extraction={"rows": manifest_rows(splits, folds)},
        )

    def finished_fold(self, hparams, overrides, fold, experiment_folder):
        """Check the fold's fingerprint; return its ``test_outcome.json`` when it finished.

        The fingerprint (:func:`ser_modules.recipe.fold_fingerprint`) is written before any
        work: a re-run with anything changed is refused, naming it.

        Returns
        -------
        dict or None
            The saved outcome, or None when the fold is still to run.
        """
        fingerprint = fold_fingerprint(
            hparams,
            overrides,
            self.splits[fold],
            self.replacements,
            None,
            self.provenance,
        )
        check_fingerprint(
            experiment_folder,
            fingerprint,
            f"{fold} of {hparams['output_folder']}",
            has_results=fold_has_results,
        )
        outcome_path = os.path.join(experiment_folder, "test_outcome.json")
        if not os.path.isfile(outcome_path):
            return None
        logger.info("%s already finished: reusing %s", fold, outcome_path)
        with open(outcome_path, encoding="utf-8") as handle:
            return json.load(handle)

    def functionals(self, feature_set, sample_rate, crop_seconds):
        """:func:`extract_functionals` of every utterance of the folds to run, extracted
        on the first call only (a re-run whose folds all finished reads no audio)."""
        key = (feature_set, sample_rate, crop_seconds)
        if self.extraction.get("key") != key:
            self.extraction["features"] = extract_functionals(
                self.extraction["rows"],
                self.replacements,
                feature_set,
                sample_rate,
                crop_seconds,
            )
            self.extraction["key"] = key
        return self.extraction["features"]


def write_results(results, output_folder):
    """``<output_folder>/results.json`` again, with the baseline's own entries added
    to what :func:`ser_modules.recipe.summarise` wrote."""
    atomic_write_text(
        os.path.join(output_folder, "results.json"),
        json.dumps(results, indent=2) + "\n",
    )


def run_fold(
    manifests,
    features,
    label_encoder,
    experiment_folder,
    c_grid,
    selection_metric="UA",
    selection_set="valid",
    class_weight=None,
    max_iter=-1,
):
    """One fold: choose C on the selection set, test; writes ``test_outcome.json``.

    Arguments
    ---------
    manifests : dict
        ``{"train": csv, "valid": csv, "test": csv}`` of the fold.
    features : dict
        ``{utt_id: (F,)}`` covering the fold's utterances (:func:`extract_functionals`).
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The run's label encoder (every fold shares it).
    experiment_folder : str
        The fold's folder.
    c_grid, selection_metric, class_weight, max_iter
        See :func:`select_and_test`.
    selection_set : str
        ``valid``, or ``test`` (the papers' protocol: C chosen on the test set).

    Returns
    -------
    dict
        The fold's outcome, as :func:`ser_modules.recipe.summarise` reads it, with the
        chosen ``selected_C`` and the ``valid_scores`` of every C.
    """
    sets = {}
    for name in ("train", "valid", "test"):
        rows = read_csv(manifests[name])
        ids = [row["ID"] for row in rows]
        X = np.stack([features[utt_id] for utt_id in ids])  # (N, F)
        y = np.array(
            [label_encoder.encode_label(row["emo"]) for row in rows]
        )  # (N,)
        sets[name] = (ids, X, y)
    labels = list(range(len(label_encoder)))
    chosen = select_and_test(
        sets["train"][1:],
        sets[selection_set][1:],
        sets["test"][1:],
        c_grid,
        labels,
        metric=selection_metric,
        class_weight=class_weight,
        max_iter=max_iter,
    )
    ids, _, targets = sets["test"]
    scores = classification_scores(
        targets.tolist(), chosen["predictions"], labels=labels
    )
    outcome = {
        "scores": scores,
        "ids": ids,
        "targets": targets.tolist(),
        "predictions": chosen["predictions"],
        "selected_epoch": None,
        "selected_C": chosen["C"],
        "selected_score": float(chosen["valid_scores"][chosen["C"]]),
        "valid_scores": {
            str(c): score for c, score in chosen["valid_scores"].items()
        },
        "selection": {"metric": selection_metric, "set": selection_set},
        "labels": [label_encoder.decode_ndim(i) for i in labels],
    }
    os.makedirs(experiment_folder, exist_ok=True)
    atomic_write_text(
        os.path.join(experiment_folder, "test_outcome.json"),
        json.dumps(outcome) + "\n",
    )
    logger.info(
        "%s: C=%g (%s %s %.4f), test UA %.4f",
        os.path.basename(experiment_folder),
        chosen["C"],
        selection_set,
        selection_metric,
        chosen["valid_scores"][chosen["C"]],
        scores["UA"],
    )
    return outcome


def model_record(c_grid, class_weight, max_iter):
    """The ``identity["model"]`` of a baseline run (see :mod:`ser_modules.run_identity`)."""
    return {
        "downstream_model": "linear_svm",
        "classifier": CLASSIFIER,
        "c_grid": [float(c) for c in c_grid],
        "class_weight": class_weight,
        "max_iter": max_iter,
        "search": False,
        "layer_selection": None,
    }


def upstream_record(features, sample_rate):
    """The ``identity["upstream"]`` of a baseline run: openSMILE functionals of a set.

    Arguments
    ---------
    features : str
        ``egemaps`` or ``compare``.
    sample_rate : int or None
        The rate the audio is read at (None: each file's own).
    """
    identity = {
        "kind": "opensmile",
        "feature_set": feature_set_name(features),
        "feature_level": "functionals",
        "opensmile_version": opensmile_version(),
        "sample_rate": sample_rate,
    }
    return {
        "kind": "opensmile",
        "feature_set": identity["feature_set"],
        "feature_level": "functionals",
        "layers_used": [0],
        "num_representations": 1,
        "width": OPENSMILE_FEATURE_SETS[features][2],
        "source": None,
        "content_sha256": json_sha256(identity),
        "identity": identity,
    }


def baseline_summary(features, outcomes):
    """``results["classic_baseline"]``: the feature set and each fold's choice of C."""
    return {
        "feature_set": features,
        "classifier": CLASSIFIER,
        "selected_C": {name: o["selected_C"] for name, o in outcomes.items()},
        "valid_scores": {
            name: o["valid_scores"] for name, o in outcomes.items()
        },
    }
