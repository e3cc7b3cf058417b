"""The field's classic baseline as a recipe: openSMILE functionals + a linear SVM.

    python recipes/custom/baseline.py hparams/svm_egemaps.yaml \
        --data_folder=/path/to/corpus --labels_csv=labels.csv

On the same manifests as the neural recipes (the dataset's preparation function writes
them), for every fold: the eGeMAPSv02 functionals (88 per utterance; ``--features=compare``
for the 6,373 ComParE_2016 ones) of the first ``crop_seconds`` of each utterance, a
``StandardScaler`` fitted on the fold's training set, and a linear SVM (scikit-learn
``SVC(kernel="linear")``) whose ``C`` is chosen on the fold's validation set by the
selection metric; the SVM trained on the training set with that ``C`` is tested. The folds are
aggregated by :func:`ser_modules.recipe.summarise` into the same ``results.json`` /
``results.md`` / confusion matrix as a learned model, so ``python -m ser_modules.reports``
shows it as a row next to them. A finished fold is not redone when the command is run again.
"""

import json
import logging
import os
import sys

import numpy as np
import speechbrain as sb
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ser_modules.audio import (
    audio_info,
    crop_or_pad,
    load_audio,
    seconds_to_samples,
)
from ser_modules.fingerprint import json_sha256
from ser_modules.manifest import DATA_ROOT, atomic_write_text, read_csv
from ser_modules.metrics import classification_scores
from ser_modules.recipe import (
    load_hparams,
    parse_overrides,
    selected_splits,
    split_preparation_arguments,
    summarise,
)
from ser_modules.run_identity import (
    preparation_options,
    protocol_record,
    run_identity,
)
from ser_modules.training import build_label_encoder
from ser_modules.upstreams.opensmile import (
    FEATURE_SETS as OPENSMILE_FEATURE_SETS,
)
from ser_modules.upstreams.opensmile import (
    LLD_WINDOW_SECONDS,
    build_smile,
    feature_set_name,
    opensmile_functionals,
)

logger = logging.getLogger(__name__)


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
        path = row["wav"]
        for key, value in replacements.items():
            path = path.replace(f"${key}", str(value))
        if DATA_ROOT in path or "$prep_root" in path:
            raise ValueError(
                f"Unresolved placeholder in manifest path {path} (utterance {row['ID']})."
            )
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


def run_fold(hparams, csv_paths, features, label_encoder, experiment_folder):
    """One fold: choose C on valid, test; reuse ``test_outcome.json`` when it exists."""
    outcome_path = os.path.join(experiment_folder, "test_outcome.json")
    if os.path.isfile(outcome_path):
        logger.info(
            "%s already finished: reusing %s",
            os.path.basename(experiment_folder),
            outcome_path,
        )
        with open(outcome_path, encoding="utf-8") as handle:
            return json.load(handle)
    sets = {}
    for name in ("train", "valid", "test"):
        rows = read_csv(csv_paths[name])
        ids = [row["ID"] for row in rows]
        X = np.stack([features[utt_id] for utt_id in ids])  # (N, F)
        y = np.array(
            [label_encoder.encode_label(row["emo"]) for row in rows]
        )  # (N,)
        sets[name] = (ids, X, y)
    labels = list(range(len(label_encoder)))
    metric = hparams["selection_metric"]
    chosen = select_and_test(
        sets["train"][1:],
        sets["valid"][1:],
        sets["test"][1:],
        hparams["c_grid"],
        labels,
        metric=metric,
        class_weight=hparams["class_weight"],
        max_iter=hparams["max_iter"],
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
        "valid_scores": {
            str(c): score for c, score in chosen["valid_scores"].items()
        },
        "selection": {"metric": metric, "set": "valid"},
        "labels": [label_encoder.decode_ndim(i) for i in labels],
    }
    os.makedirs(experiment_folder, exist_ok=True)
    atomic_write_text(outcome_path, json.dumps(outcome) + "\n")
    logger.info(
        "%s: C=%g (valid %s %.4f), test UA %.4f",
        os.path.basename(experiment_folder),
        chosen["C"],
        metric,
        chosen["valid_scores"][chosen["C"]],
        scores["UA"],
    )
    return outcome


def baseline_model_record(hparams):
    """The ``identity["model"]`` of a baseline run (see :mod:`ser_modules.run_identity`)."""
    return {
        "downstream_model": "linear_svm",
        "classifier": "StandardScaler + SVC(kernel='linear')",
        "c_grid": [float(c) for c in hparams["c_grid"]],
        "class_weight": hparams["class_weight"],
        "max_iter": hparams["max_iter"],
        "search": False,
        "layer_selection": None,
    }


def functionals_upstream_record(hparams):
    """The ``identity["upstream"]`` of a baseline run: openSMILE functionals of a set."""
    import opensmile

    features = hparams["features"]
    identity = {
        "kind": "opensmile",
        "feature_set": feature_set_name(features),
        "feature_level": "functionals",
        "opensmile_version": opensmile.__version__,
        "sample_rate": hparams["sample_rate"],
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


def run_baseline(argv, prepare_function, dataset_defaults, dataset_name):
    """Run the classic baseline from the command line (see the module docstring).

    Arguments
    ---------
    argv : list of str
        ``sys.argv[1:]``: the hparams file, overrides and the preparation's options.
    prepare_function : callable
        The dataset's ``prepare_<dataset>`` (the same manifests as the neural recipes).
    dataset_defaults : dict
        The dataset's defaults (``crop_seconds``, ``selection_metric``) the command line
        can override; keys the baseline's hparams do not have are ignored.
    dataset_name : str
        Name written in the results.

    Returns
    -------
    dict
        The aggregated results (also in ``<output_folder>/results.json``).
    """
    prepare_kwargs, argv = split_preparation_arguments(argv, prepare_function)
    hparams_file, _, cli_overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as handle:
        yaml_text = handle.read()
    # Top-level keys of the YAML (a dataset default for a key it lacks would be an error).
    own_keys = {
        line.split(":", 1)[0]
        for line in yaml_text.splitlines()
        if line[:1].isalpha() and ":" in line
    }
    defaults = {
        key: value for key, value in dataset_defaults.items() if key in own_keys
    }
    overrides = {**defaults, **parse_overrides(cli_overrides)}
    hparams = load_hparams(yaml_text, overrides)
    if hparams["feature_level"] != "functionals":
        raise ValueError(
            f"feature_level={hparams['feature_level']!r}: the classic baseline classifies utterance-level "
            "functionals; frame-level LLDs are the upstream of the neural recipes (--features=egemaps)."
        )
    output_folder = hparams["output_folder"]
    sb.create_experiment_directory(
        experiment_directory=output_folder,
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    splits = prepare_function(
        data_folder=hparams["data_folder"],
        save_folder=hparams["prepare_folder"],
        skip_prep=hparams["skip_prep"],
        **prepare_kwargs,
    )
    if not splits:
        raise RuntimeError(
            f"The preparation wrote no manifests in {hparams['prepare_folder']}."
        )
    replacements = {
        "data_root": hparams["data_folder"],
        "prep_root": hparams["prepare_folder"],
    }
    split_names = selected_splits(splits, hparams["fold"])
    all_csvs = [path for name in splits for path in splits[name].values()]
    label_encoder = build_label_encoder(
        all_csvs, os.path.join(output_folder, "label_encoder.txt")
    )
    outcomes, features = {}, None
    for split_name in split_names:
        experiment_folder = os.path.join(output_folder, split_name)
        if features is None and not os.path.isfile(
            os.path.join(experiment_folder, "test_outcome.json")
        ):
            rows = {
                row["ID"]: row
                for name in split_names
                for path in splits[name].values()
                for row in read_csv(path)
            }
            features = extract_functionals(
                list(rows.values()),
                replacements,
                hparams["features"],
                hparams["sample_rate"],
                hparams["crop_seconds"],
            )
        outcomes[split_name] = run_fold(
            hparams,
            splits[split_name],
            features,
            label_encoder,
            experiment_folder,
        )
    identity = run_identity(
        dataset_name,
        hparams,
        hparams_file,
        yaml_text,
        overrides,
        protocol_record(
            hparams,
            preparation_options(prepare_function, prepare_kwargs),
            {name: splits[name] for name in split_names},
        ),
        baseline_model_record(hparams),
        functionals_upstream_record(hparams),
    )
    results = summarise(
        outcomes,
        dataset_name,
        hparams_file,
        overrides,
        prepare_kwargs,
        output_folder,
        identity=identity,
    )
    results["classic_baseline"] = {
        "feature_set": hparams["features"],
        "classifier": "StandardScaler + SVC(kernel='linear')",
        "selected_C": {name: o["selected_C"] for name, o in outcomes.items()},
        "valid_scores": {
            name: o["valid_scores"] for name, o in outcomes.items()
        },
    }
    atomic_write_text(
        os.path.join(output_folder, "results.json"),
        json.dumps(results, indent=2) + "\n",
    )
    return results


def main(prepare_function, dataset_defaults, dataset_name):
    """Entry point of ``recipes/<DATASET>/baseline.py``."""
    run_baseline(sys.argv[1:], prepare_function, dataset_defaults, dataset_name)
