"""The classic baseline recipe (eGeMAPS functionals + linear SVM) against a direct fit.

The reference re-does every step by hand with the libraries alone: the opensmile package
on each wav file, scikit-learn's ``StandardScaler`` + ``SVC(kernel="linear")`` for every
C of the grid, C chosen by the validation UA (``balanced_accuracy_score``; the smallest C on
a tie), and the test predictions of that model. The recipe's per-fold choices and
predictions and its results.json must agree with it.
"""

import json
import os
import warnings

import numpy as np
import opensmile
import pytest
import soundfile
from recipe_helpers import run_in_process
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ser_modules.classic_baseline import select_and_test
from ser_modules.manifest import read_csv
from ser_modules.mini_corpus import generate_mini_corpus

BASELINE = "recipes/custom/baseline.py"
C_GRID = [0.001, 0.01, 0.1, 1.0]


@pytest.fixture(scope="module")
def mini_corpus(tmp_path_factory):
    """4 emotions x 4 speakers x 3 utterances of about 1 s."""
    folder = tmp_path_factory.mktemp("mini") / "corpus"
    generate_mini_corpus(
        str(folder),
        num_speakers=4,
        utterances_per_class=3,
        duration_range=(0.8, 1.2),
    )
    return str(folder)


@pytest.fixture(scope="module")
def baseline_run(mini_corpus, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("baseline"))
    run_in_process(
        BASELINE,
        "hparams/svm_egemaps.yaml",
        f"--data_folder={mini_corpus}",
        "--labels_csv=labels.csv",
        "--n_folds=2",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        f"--c_grid={C_GRID}",
    )
    return output


def direct_fit(corpus, fold_folder):
    """C, validation UA per C and test predictions (label strings) of a hand-made fit."""
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.Functionals,
    )
    sets = {}
    for name in ("train", "valid", "test"):
        rows = read_csv(os.path.join(fold_folder, f"{name}.csv"))
        features = []
        for row in rows:
            signal, rate = soundfile.read(
                row["wav"].replace("$data_root", corpus), dtype="float32"
            )
            assert rate == 16000
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                features.append(
                    smile.process_signal(signal, rate).to_numpy()[0]
                )
        sets[name] = (
            np.stack(features),
            np.array([row["emo"] for row in rows]),
        )
    scores, best = {}, None
    for c in C_GRID:
        model = make_pipeline(
            StandardScaler(), SVC(kernel="linear", C=c, class_weight="balanced")
        ).fit(*sets["train"])
        scores[c] = balanced_accuracy_score(
            sets["valid"][1], model.predict(sets["valid"][0])
        )
        if best is None or scores[c] > scores[best[0]]:
            best = (c, model)
    return best[0], scores, best[1].predict(sets["test"][0]), sets["test"][1]


def test_baseline_recipe_equals_a_direct_scikit_learn_fit(
    mini_corpus, baseline_run
):
    with open(
        os.path.join(baseline_run, "results.json"), encoding="utf-8"
    ) as handle:
        results = json.load(handle)
    assert results["hparams_file"] == "svm_egemaps.yaml"
    assert results["selection"] == {"metric": "UA", "set": "valid"}
    test_uas = []
    for fold in ("fold1", "fold2"):
        c, valid_scores, predictions, targets = direct_fit(
            mini_corpus, os.path.join(baseline_run, "prepared", fold)
        )
        with open(
            os.path.join(baseline_run, fold, "test_outcome.json"),
            encoding="utf-8",
        ) as handle:
            outcome = json.load(handle)
        assert (
            outcome["selected_C"]
            == c
            == results["classic_baseline"]["selected_C"][fold]
        )
        for grid_c, score in valid_scores.items():
            assert outcome["valid_scores"][str(grid_c)] == pytest.approx(score)
        labels = outcome["labels"]
        assert [labels[index] for index in outcome["predictions"]] == list(
            predictions
        )
        assert [labels[index] for index in outcome["targets"]] == list(targets)
        test_uas.append(balanced_accuracy_score(targets, predictions))
        assert results["folds"][fold]["UA"] == pytest.approx(test_uas[-1])
    assert results["mean"]["UA"] == pytest.approx(np.mean(test_uas))
    assert os.path.isfile(os.path.join(baseline_run, "results.md"))


def test_finished_folds_are_reused(mini_corpus, baseline_run):
    outcome_path = os.path.join(baseline_run, "fold1", "test_outcome.json")
    before = os.stat(outcome_path).st_mtime_ns
    run_in_process(
        BASELINE,
        "hparams/svm_egemaps.yaml",
        f"--data_folder={mini_corpus}",
        "--labels_csv=labels.csv",
        "--n_folds=2",
        "--valid_fraction=0.25",
        f"--output_folder={baseline_run}",
        f"--c_grid={C_GRID}",
    )
    assert os.stat(outcome_path).st_mtime_ns == before


def test_ties_of_the_validation_score_go_to_the_smallest_c():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(
        int
    )  # separable along one axis: every C is perfect on valid
    chosen = select_and_test(
        (X, y), (X, y), (X, y), [10.0, 1.0, 0.1], labels=[0, 1]
    )
    assert set(chosen["valid_scores"]) == {0.1, 1.0, 10.0}
    best = max(chosen["valid_scores"].values())
    assert chosen["C"] == min(
        c for c, score in chosen["valid_scores"].items() if score == best
    )


def test_results_json_records_the_baseline_identity(baseline_run):
    with open(
        os.path.join(baseline_run, "results.json"), encoding="utf-8"
    ) as handle:
        identity = json.load(handle)["identity"]
    assert identity["model"]["downstream_model"] == "linear_svm"
    assert identity["model"]["c_grid"] == C_GRID
    upstream = identity["upstream"]
    assert (
        upstream["kind"],
        upstream["feature_set"],
        upstream["feature_level"],
    ) == (
        "opensmile",
        "eGeMAPSv02",
        "functionals",
    )
    assert upstream["width"] == 88 and upstream["source"] is None
    assert identity["protocol"]["preparation"]["n_folds"] == 2
    assert identity["protocol"]["splits"] == ["fold1", "fold2"]
    assert identity["hparams_file"]["name"] == "svm_egemaps.yaml"


def test_reports_name_the_baseline_from_its_identity(baseline_run):
    from ser_modules.reports.runs import describe_run
    from ser_modules.reports.tables import build_report

    run = describe_run(baseline_run)
    assert (run.model, run.upstream) == ("linear SVM", "eGeMAPS functionals")
    assert "| eGeMAPS functionals | linear SVM |" in build_report(
        [baseline_run]
    )


def test_a_rerun_with_other_settings_is_refused(mini_corpus, baseline_run):
    """A finished fold is reused only for the configuration that produced it."""
    from ser_modules.fingerprint import FingerprintMismatch

    with pytest.raises(FingerprintMismatch, match="crop_seconds"):
        run_in_process(
            BASELINE,
            "hparams/svm_egemaps.yaml",
            f"--data_folder={mini_corpus}",
            "--labels_csv=labels.csv",
            "--n_folds=2",
            "--valid_fraction=0.25",
            f"--output_folder={baseline_run}",
            f"--c_grid={C_GRID}",
            "--crop_seconds=0.5",
        )


def test_skip_prep_runs_on_the_folds_already_prepared(
    mini_corpus, baseline_run, tmp_path
):
    """``--skip_prep=True`` takes the folds in ``prepare_folder`` (no corpus options,
    no preparation) and gives the same choices and scores."""
    output = str(tmp_path / "skip_prep")
    run_in_process(
        BASELINE,
        "hparams/svm_egemaps.yaml",
        f"--data_folder={mini_corpus}",
        f"--prepare_folder={baseline_run}/prepared",
        "--skip_prep=True",
        f"--output_folder={output}",
        f"--c_grid={C_GRID}",
    )
    results = {}
    for folder in (baseline_run, output):
        with open(
            os.path.join(folder, "results.json"), encoding="utf-8"
        ) as handle:
            results[folder] = json.load(handle)
    first, second = results[baseline_run], results[output]
    assert not os.path.exists(os.path.join(output, "prepared"))
    assert (
        second["classic_baseline"]["selected_C"]
        == first["classic_baseline"]["selected_C"]
    )
    assert second["folds"] == first["folds"]
