#!/usr/bin/env python3
"""Speech emotion recognition on MELD (7 classes, official train / dev / test split).

    python recipes/MELD/train.py hparams/superb_ssl.yaml \
        --data_folder=/path/to/MELD.Raw --ssl_source=/path/to/wavlm-large

The audio is decoded from the mp4 files once, during preparation. The checkpoint is
selected on dev by weighted F1, the paper's primary MELD metric.

Flow: prepare the manifests (or take ``--train_csv/--valid_csv/--test_csv`` as given, or
with ``--skip_prep=True`` the folds already in ``prepare_folder``) -> build the frozen
upstream and the feature cache -> per fold: [BAS search ->] train the downstream model,
select its checkpoint on the validation set, test it, export it as ``<fold>/model`` ->
``<output_folder>/results.{json,md}``. Every phase is skipped when it already finished, so
a killed run resumes where it stopped; ``--fold=k`` runs one fold.
Multi-GPU: ``torchrun --standalone --nproc_per_node=N recipes/MELD/train.py ...`` (``batch_size`` is
per process; on CPU add ``--device=cpu --distributed_backend=gloo``).
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from meld_prepare import prepare_meld

from ser_modules import recipe
from ser_modules.run_identity import preparation_options, recipe_identity
from ser_modules.training import EmotionBrain

DATASET_DEFAULTS = {"crop_seconds": 4.5, "selection_metric": "WF1"}


def run_fold(yaml_text, overrides, run_opts, manifests, run):
    """[BAS search ->] train -> select -> test -> export one fold; returns its outcome."""
    hparams = load_hyperpyyaml(yaml_text, overrides)
    finished = recipe.begin_fold(hparams, overrides, manifests, run)
    if finished is not None:
        return finished
    datasets = hparams["fold_datasets"](manifests, run)
    frozen = run.frozen_modules()
    search = None
    if hparams.get("search", False):
        search = hparams["block_search"](datasets, run_opts, frozen)
        # Retrain the derived network from scratch: fresh objects from the YAML.
        hparams = load_hyperpyyaml(
            yaml_text, {**overrides, **recipe.derived_network(search)}
        )
    brain = EmotionBrain(
        modules={**hparams["modules"], **frozen},
        opt_class=hparams["opt_class"],
        lr_scheduler=hparams["lr_scheduler"],
        train_logger=hparams["train_logger"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    selection_set = recipe.checked_selection_set(hparams["selection_set"])
    brain.fit(
        hparams["epoch_counter"],
        train_set=datasets["train"],
        valid_set=datasets[selection_set],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"],
        max_key=hparams["selection_metric"],
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    return recipe.finish_fold(brain, hparams, selection_set, run, search)


def main(argv):
    """Run the recipe on the command line ``argv``; returns the aggregated results."""
    prepare_kwargs, argv = recipe.split_preparation_arguments(
        argv, prepare_meld
    )
    hparams_file, run_opts, overrides = recipe.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    yaml_text, overrides = recipe.recipe_overrides(
        hparams_file, overrides, "MELD", DATASET_DEFAULTS
    )
    hparams = load_hyperpyyaml(yaml_text, {**overrides, "split_name": "setup"})
    with recipe.locked_output_folder(hparams["output_folder"]):
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        splits = recipe.fold_manifests(
            prepare_meld,
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
        upstream = recipe.frozen_upstream(
            hparams["upstream"], hparams.get("ssl_source")
        )
        run = recipe.RunContext.start(
            "MELD",
            yaml_text,
            prepare_kwargs,
            splits,
            upstream,
            output_folder=hparams["output_folder"],
            data_folder=hparams["data_folder"],
            prepare_folder=hparams["prepare_folder"],
        )
        if hparams["use_cache"]:
            run.caches = hparams["feature_cache"](
                upstream,
                [splits[fold] for fold in folds],
                run.replacements,
                device=run_opts.get("device"),
            )
        ranking = hparams.get("architecture_ranking")
        # What the run is, for results.json (ser_modules.run_identity).
        identity = recipe_identity(
            "MELD",
            hparams,
            hparams_file,
            yaml_text,
            overrides,
            preparation_options(prepare_meld, prepare_kwargs),
            {fold: splits[fold] for fold in folds},
            upstream,
        )
        del hparams  # each fold loads its own objects
        outcomes = {
            fold: run_fold(
                yaml_text,
                run.fold_overrides(overrides, fold),
                run_opts,
                splits[fold],
                run,
            )
            for fold in folds
        }
        return recipe.summarise(
            outcomes,
            "MELD",
            hparams_file,
            overrides,
            prepare_kwargs,
            run.output_folder,
            identity=identity,
            architecture_ranking=ranking,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
