#!/usr/bin/env python3
"""The classic baseline on IEMOCAP: openSMILE eGeMAPS functionals + a linear SVM.

    python recipes/IEMOCAP/baseline.py hparams/svm_egemaps.yaml \
        --data_folder=/path/to/IEMOCAP_full_release

Same preparation, folds and dataset defaults (crop, selection metric) as ``train.py``, so
its ``results.json`` sits next to theirs in the reports.

Flow: prepare the manifests (or take ``--train_csv/--valid_csv/--test_csv`` as given, or
with ``--skip_prep=True`` the folds already in ``prepare_folder``) -> the functionals of
every utterance (once, when a fold still needs them) -> per fold: choose ``C`` on the
selection set, test the SVM trained with it -> ``<output_folder>/results.{json,md}``. A
finished fold is reused when its fingerprint matches; ``--fold=k`` runs one fold. See
:mod:`ser_modules.classic_baseline`.
"""

import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from iemocap_prepare import prepare_iemocap
from train import DATASET_DEFAULTS

from ser_modules import classic_baseline, recipe
from ser_modules.run_identity import (
    preparation_options,
    protocol_record,
    run_identity,
)


def run_fold(hparams, overrides, fold, run):
    """Choose C on the selection set, test the SVM trained with it; returns the outcome."""
    experiment_folder = os.path.join(hparams["output_folder"], fold)
    finished = run.finished_fold(hparams, overrides, fold, experiment_folder)
    if finished is not None:
        return finished
    return classic_baseline.run_fold(
        run.splits[fold],
        run.functionals(
            hparams["features"], hparams["sample_rate"], hparams["crop_seconds"]
        ),
        run.label_encoder,
        experiment_folder,
        hparams["c_grid"],
        selection_metric=hparams["selection_metric"],
        selection_set=recipe.checked_selection_set(hparams["selection_set"]),
        class_weight=hparams["class_weight"],
        max_iter=hparams["max_iter"],
    )


def main(argv):
    """Run the baseline on the command line ``argv``; returns the aggregated results."""
    prepare_kwargs, argv = recipe.split_preparation_arguments(
        argv, prepare_iemocap
    )
    hparams_file, _, overrides = recipe.parse_arguments(argv)
    yaml_text, overrides = recipe.recipe_overrides(
        hparams_file, overrides, "IEMOCAP", DATASET_DEFAULTS
    )
    hparams = load_hyperpyyaml(yaml_text, overrides)
    classic_baseline.check_feature_level(hparams["feature_level"])
    with recipe.locked_output_folder(hparams["output_folder"]):
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        splits = recipe.fold_manifests(
            prepare_iemocap,
            prepare_kwargs,
            data_folder=hparams["data_folder"],
            prepare_folder=hparams["prepare_folder"],
            skip_prep=hparams["skip_prep"],
            given={
                "train": hparams["train_csv"],
                "valid": hparams["valid_csv"],
                "test": hparams["test_csv"],
            },
        )
        folds = recipe.selected_splits(splits, hparams["fold"])
        upstream = classic_baseline.upstream_record(
            hparams["features"], hparams["sample_rate"]
        )
        run = classic_baseline.BaselineRun.start(
            "IEMOCAP",
            yaml_text,
            prepare_kwargs,
            splits,
            folds,
            upstream["identity"],
            output_folder=hparams["output_folder"],
            data_folder=hparams["data_folder"],
            prepare_folder=hparams["prepare_folder"],
        )
        outcomes = {
            fold: run_fold(hparams, overrides, fold, run) for fold in folds
        }
        # What the run is, for results.json (ser_modules.run_identity).
        identity = run_identity(
            "IEMOCAP",
            hparams,
            hparams_file,
            yaml_text,
            overrides,
            protocol_record(
                hparams,
                preparation_options(prepare_iemocap, prepare_kwargs),
                {fold: splits[fold] for fold in folds},
            ),
            classic_baseline.model_record(
                hparams["c_grid"], hparams["class_weight"], hparams["max_iter"]
            ),
            upstream,
        )
        results = recipe.summarise(
            outcomes,
            "IEMOCAP",
            hparams_file,
            overrides,
            prepare_kwargs,
            hparams["output_folder"],
            identity=identity,
        )
        results["classic_baseline"] = classic_baseline.baseline_summary(
            hparams["features"], outcomes
        )
        classic_baseline.write_results(results, hparams["output_folder"])
        return results


if __name__ == "__main__":
    main(sys.argv[1:])
