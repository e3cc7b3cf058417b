"""The flow every emotion-classification recipe runs, top to bottom.

``recipes/<DATASET>/train.py`` is a thin script: it hands its preparation function and its
dataset defaults to :func:`run_recipe`, which

1. parses the command line (a HyperPyYAML file, SpeechBrain run options, hparam overrides,
   and the options of the dataset's preparation function such as ``--split=speaker``),
2. prepares the manifests (once, on the main process),
3. builds the frozen upstream and, by default, the feature cache of every utterance,
4. for every fold (or the single split): optionally searches an architecture (BAS), trains
   the downstream model, selects the checkpoint on the validation set, tests it, and
   exports it as a model folder ``<split>/model`` (see :mod:`ser_modules.inference`),
5. aggregates the folds into ``results.json``, ``results.md`` and a confusion-matrix PNG.

Every phase leaves its result on disk and is skipped when re-run, so a crashed run resumes
where it stopped (inside a phase, SpeechBrain's checkpoints resume the epoch). A fold's
folder holds a fingerprint of what produces it (:mod:`ser_modules.fingerprint`): a re-run
with other options, another corpus or other code is refused with the differing keys, never
answered with the old results. The output folder is locked while a run uses it.
"""

import contextlib
import inspect
import json
import logging
import os
import sys

import speechbrain as sb
import yaml
from hyperpyyaml import load_hyperpyyaml

from ser_modules.fingerprint import (
    FolderLock,
    audio_digest,
    check_fingerprint,
    code_version,
    file_sha256,
    plain_hparams,
    text_sha256,
)
from ser_modules.manifest import atomic_write_text, read_csv, resolve_path
from ser_modules.metrics import aggregate_folds
from ser_modules.model_export import export_model_folder
from ser_modules.model_folder import check_upstream_files
from ser_modules.run_identity import (
    RESULTS_FORMAT,
    preparation_options,
    recipe_identity,
)
from ser_modules.training import (
    EmotionBrain,
    build_datasets,
    build_label_encoder,
)
from ser_modules.upstreams.base import minimum_samples

logger = logging.getLogger(__name__)

# Keys train.py fills in from the data and the upstream (the YAML holds defaults).
DERIVED_KEYS = ("split_name", "input_dim", "num_upstream_layers", "num_classes")


# Preparation options that share a name with an hparam, as a recipe's command line spells them.
RENAMED_PREPARATION_OPTIONS = {"seed": "split_seed"}


def split_preparation_arguments(argv, prepare_function):
    """Separate ``--name=value`` options of the preparation function from the rest.

    ``data_folder`` and ``save_folder`` stay with the hparams (they are YAML keys). A
    preparation option whose name is also an hparam is renamed on a recipe's command line
    (:data:`RENAMED_PREPARATION_OPTIONS`): ``--seed`` is the training seed, the split seed of
    a preparation is ``--split_seed``.

    Returns
    -------
    (dict, list)
        Preparation keyword arguments (typed like the function's defaults) and the
        remaining command-line arguments for SpeechBrain.
    """
    from ser_modules.manifest import parse_value

    parameters = inspect.signature(prepare_function).parameters
    own = {
        RENAMED_PREPARATION_OPTIONS.get(name, name): name
        for name in parameters
        if name not in ("data_folder", "save_folder", "skip_prep")
    }
    prepare_kwargs, rest = {}, []
    index = 0
    while index < len(argv):
        argument = argv[index]
        name = (
            argument[2:].split("=", 1)[0] if argument.startswith("--") else None
        )
        if name in own:
            if "=" in argument:
                value = argument.split("=", 1)[1]
            else:
                index += 1
                value = argv[index]
            prepare_kwargs[own[name]] = parse_value(
                value, parameters[own[name]].default, name
            )
        else:
            rest.append(argument)
        index += 1
    return prepare_kwargs, rest


def parse_overrides(overrides):
    """SpeechBrain's override string as a dict (so dataset defaults can sit under it)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    try:
        parsed = yaml.safe_load(overrides)
    except yaml.YAMLError as error:
        raise ValueError(
            f"Cannot read the command-line overrides {overrides!r}: use plain values "
            "(numbers, strings, lists) on the command line."
        ) from error
    return parsed or {}


def load_hparams(yaml_text, overrides):
    """Load the recipe's HyperPyYAML with overrides (objects are created fresh each call)."""
    return load_hyperpyyaml(yaml_text, overrides)


def selected_splits(splits, fold):
    """The split names to run: every fold, or the one named by ``--fold=k``."""
    names = sorted(splits, key=lambda name: (len(name), name))
    if fold in (None, "all", "", "None"):
        return names
    wanted = f"fold{fold}" if str(fold).isdigit() else str(fold)
    if wanted not in splits:
        raise ValueError(
            f"--fold={fold} does not exist: the preparation wrote {names}."
        )
    return [wanted]


def build_feature_caches(hparams, upstream, rows, replacements, run_opts):
    """Extract (once) the features every split needs: one cache per distinct crop.

    Returns
    -------
    dict
        ``{"train": FeatureCache, "eval": FeatureCache}`` (the same object when the
        training and evaluation crops agree).
    """
    from ser_modules.feature_cache import FeatureCache

    def make(crop_seconds):
        return FeatureCache(
            hparams["cache_folder"],
            upstream,
            crop_seconds=crop_seconds,
            crop_mode="first",
            precision=hparams["cache_precision"],
        )

    train_cache = make(hparams["crop_seconds"])
    caches = {"train": train_cache, "eval": train_cache}
    if hparams["eval_crop_seconds"] != hparams["crop_seconds"]:
        caches["eval"] = make(hparams["eval_crop_seconds"])
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    for cache in {id(c): c for c in caches.values()}.values():
        sb.utils.distributed.run_on_main(
            cache.build,
            kwargs={
                "rows": rows,
                "replacements": replacements,
                "batch_size": hparams["cache_batch_size"],
                "device": device,
            },
        )
        # The other DDP processes read the cache too: tell their copies which audio each
        # ID stands for (the cache is keyed by content; the main process already knows).
        cache.bind(rows, replacements)
    return caches


def train_and_test(
    hparams,
    run_opts,
    datasets,
    modules,
    label_encoder,
    brain_class=EmotionBrain,
):
    """Train one split's downstream model, select on validation, test; return the outcome."""
    brain = brain_class(
        modules=modules,
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    selection_set = hparams["selection_set"]
    if selection_set not in ("valid", "test"):
        raise ValueError(
            f"selection_set must be 'valid' or 'test' (paper protocol), got {selection_set!r}"
        )
    if selection_set == "test":
        logger.warning(
            "Paper protocol: selecting the checkpoint on the TEST set (selection_set=test)."
        )
    brain.fit(
        hparams["epoch_counter"],
        train_set=datasets["train"],
        valid_set=datasets[selection_set],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )
    metric = hparams["selection_metric"]
    brain.evaluate(
        datasets["test"],
        max_key=metric,
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    best = brain.checkpointer.find_checkpoint(max_key=metric)
    outcome = dict(brain.test_outcome)
    outcome["selected_epoch"] = (
        int(best.meta["epoch"]) if best is not None else None
    )
    outcome["selection"] = {"metric": metric, "set": selection_set}
    outcome["labels"] = [
        label_encoder.decode_ndim(i) for i in range(len(label_encoder))
    ]
    outcome["model_folder"] = export_selected_model(hparams, best)
    return outcome


def export_selected_model(hparams, checkpoint):
    """Export the selected checkpoint as ``<experiment_folder>/model`` (main process);
    see :mod:`ser_modules.inference`. Returns the folder, or None without a checkpoint."""
    if checkpoint is None:
        return None
    model_folder = os.path.join(hparams["experiment_folder"], "model")
    if sb.utils.distributed.if_main_process():
        label_encoder_path = os.path.join(
            hparams["output_folder"], "label_encoder.txt"
        )
        export_model_folder(
            hparams, checkpoint, label_encoder_path, model_folder
        )
    sb.utils.distributed.ddp_barrier()
    return model_folder


def run_recipe(argv, prepare_function, dataset_defaults, dataset_name):
    """Run a whole recipe from the command line (see the module docstring).

    Arguments
    ---------
    argv : list of str
        ``sys.argv[1:]``.
    prepare_function : callable
        ``prepare_<dataset>(data_folder, save_folder, ..., skip_prep)``.
    dataset_defaults : dict
        Hparams this dataset changes unless the command line sets them (crop lengths,
        selection metric ...).
    dataset_name : str
        Name written in the results.

    Returns
    -------
    dict
        The aggregated results (also written to ``<output_folder>/results.json``).
    """
    prepare_kwargs, argv = split_preparation_arguments(argv, prepare_function)
    hparams_file, run_opts, cli_overrides = sb.parse_arguments(argv)
    overrides = {**dataset_defaults, **parse_overrides(cli_overrides)}
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as handle:
        yaml_text = handle.read()
    check_override_types(yaml_text, overrides, hparams_file)
    if "output_folder" not in overrides:
        # The YAML default (results/<hparams>/<seed>) is the same for every corpus: put the
        # dataset in it, so the recipes of two corpora never meet in one folder.
        seed = overrides.get(
            "seed", _plain_yaml_values(yaml_text).get("seed", 0)
        )
        stem = os.path.splitext(os.path.basename(hparams_file))[0]
        overrides["output_folder"] = os.path.join(
            "results", dataset_name, stem, str(seed)
        )
    setup = load_hparams(yaml_text, {**overrides, "split_name": "setup"})
    output_folder = setup["output_folder"]
    # One run per output folder: a second one fails here instead of deleting the first
    # one's checkpoints (the lock dies with the process).
    lock = (
        FolderLock(output_folder, what="this output folder")
        if sb.utils.distributed.if_main_process()
        else contextlib.nullcontext()
    )
    with lock:
        return _run_locked(
            setup,
            yaml_text,
            overrides,
            run_opts,
            hparams_file,
            prepare_function,
            prepare_kwargs,
            dataset_name,
        )


def _run_locked(
    setup,
    yaml_text,
    overrides,
    run_opts,
    hparams_file,
    prepare_function,
    prepare_kwargs,
    dataset_name,
):
    """The body of :func:`run_recipe`, run while the output folder is locked."""
    output_folder = setup["output_folder"]
    sb.create_experiment_directory(
        experiment_directory=output_folder,
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    splits = sb.utils.distributed.run_on_main(
        prepare_function,
        kwargs={
            "data_folder": setup["data_folder"],
            "save_folder": setup["prepare_folder"],
            "skip_prep": setup["skip_prep"],
            **prepare_kwargs,
        },
    )
    if not splits:
        raise RuntimeError(
            f"The preparation wrote no manifests in {setup['prepare_folder']}: with skip_prep=True, "
            "the manifests of an earlier run must already be there."
        )
    replacements = {
        "data_root": setup["data_folder"],
        "prep_root": setup["prepare_folder"],
    }
    split_names = selected_splits(splits, setup["fold"])
    all_csvs = [path for name in splits for path in splits[name].values()]
    label_encoder = sb.utils.distributed.run_on_main(
        build_label_encoder,
        args=[all_csvs, os.path.join(output_folder, "label_encoder.txt")],
    )

    check_upstream_files(
        setup.get("ssl_source")
    )  # a truncated download is named, not a bare error
    upstream = setup["upstream"]()
    caches = None
    if setup["use_cache"]:
        rows = {
            row["ID"]: row
            for name in split_names
            for path in splits[name].values()
            for row in read_csv(path)
        }
        caches = build_feature_caches(
            setup, upstream, list(rows.values()), replacements, run_opts
        )
    derived = {
        "input_dim": upstream.output_dim,
        "num_upstream_layers": upstream.num_layers,
        "num_classes": len(label_encoder),
    }
    provenance = {
        "dataset": dataset_name,
        "hparams_file_sha256": text_sha256(yaml_text),
        "preparation": prepare_kwargs,
        "labels": [
            label_encoder.decode_ndim(i) for i in range(len(label_encoder))
        ],
        "upstream": upstream.identity(),  # model files by sha256: a re-exported model is a change
        "code": code_version(),
    }

    outcomes = {}
    for split_name in split_names:
        outcomes[split_name] = run_split(
            yaml_text,
            {**overrides, **derived, "split_name": split_name},
            run_opts,
            splits[split_name],
            replacements,
            label_encoder,
            caches,
            upstream,
            provenance=provenance,
        )
    architecture_ranking = setup.get("architecture_ranking")
    identity = recipe_identity(
        dataset_name,
        setup,
        hparams_file,
        yaml_text,
        overrides,
        preparation_options(prepare_function, prepare_kwargs),
        {name: splits[name] for name in split_names},
        upstream,
    )
    del setup
    results = summarise(
        outcomes,
        dataset_name,
        hparams_file,
        overrides,
        prepare_kwargs,
        output_folder,
        identity=identity,
        architecture_ranking=architecture_ranking,
    )
    return results


def check_override_types(yaml_text, overrides, hparams_file):
    """Refuse a command-line value of the wrong type for a numeric or boolean hparam.

    ``--number_of_epochs=abc`` would otherwise fail deep inside SpeechBrain with a
    traceback naming neither the option nor the file.

    Raises
    ------
    ValueError
        Naming the option, the value, the expected type and the hparams file.
    """
    defaults = _plain_yaml_values(yaml_text)
    for name, value in overrides.items():
        default = defaults.get(name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            expected = "True or False"
        elif isinstance(
            default, (int, float)
        ):  # an int default may take a float (minutes ...)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = "a number"
        else:
            continue
        if value is not None and not ok:
            raise ValueError(
                f"--{name}={value!r} is not {expected} (the default in {hparams_file} is {default!r}): "
                f"fix the option on the command line."
            )


def _plain_yaml_values(yaml_text):
    """Top-level plain values of a HyperPyYAML text (tagged entries skipped)."""

    class TolerantLoader(yaml.SafeLoader):
        pass

    TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        document = yaml.load(yaml_text, Loader=TolerantLoader) or {}
    except yaml.YAMLError:
        return {}
    return document if isinstance(document, dict) else {}


def fold_has_results(folder):
    """Whether a fold folder holds any file a run wrote (beyond its lock and fingerprint)."""
    for _, _, names in os.walk(folder):
        if any(name not in ("fingerprint.json", ".lock") for name in names):
            return True
    return False


def fold_fingerprint(
    hparams, overrides, csv_paths, replacements, caches, provenance
):
    """What produces a fold's results (see :mod:`ser_modules.fingerprint`)."""
    output_folder = hparams["output_folder"]
    rows = [row for path in csv_paths.values() for row in read_csv(path)]
    return {
        **provenance,
        "hparams": plain_hparams(hparams, exclude_prefixes=[output_folder]),
        "overrides": plain_hparams(overrides, exclude_prefixes=[output_folder]),
        "manifests": {
            name: file_sha256(path) for name, path in sorted(csv_paths.items())
        },
        "audio": audio_digest(rows, replacements, resolve_path),
        "cache": None
        if caches is None
        else {name: cache.key for name, cache in sorted(caches.items())},
    }


def run_split(
    yaml_text,
    overrides,
    run_opts,
    csv_paths,
    replacements,
    label_encoder,
    caches,
    upstream,
    provenance=None,
):
    """Run (or reload, when already finished) one fold: [BAS search -> derive ->] train -> test.

    With ``search: True`` in the hparams (the BAS recipes) the super net is searched first;
    the derived architecture then replaces ``architecture`` and is trained from scratch
    with ``downstream_model: blocks``. Each phase's result is a file, so a re-run skips it.
    """
    hparams = load_hparams(yaml_text, overrides)
    outcome_path = os.path.join(
        hparams["experiment_folder"], "test_outcome.json"
    )
    if sb.utils.distributed.if_main_process():
        # Written before any work, so checkpoints, search results and the outcome of the
        # fold all belong to it: a re-run with anything changed is refused, naming it.
        fingerprint = fold_fingerprint(
            hparams,
            overrides,
            csv_paths,
            replacements,
            caches,
            provenance or {},
        )
        check_fingerprint(
            hparams["experiment_folder"],
            fingerprint,
            f"{overrides['split_name']} of {hparams['output_folder']}",
            has_results=fold_has_results,
        )
    sb.utils.distributed.ddp_barrier()
    if os.path.isfile(outcome_path):
        logger.info(
            "%s already finished: reusing %s",
            overrides["split_name"],
            outcome_path,
        )
        with open(outcome_path, encoding="utf-8") as handle:
            return json.load(handle)
    datasets = build_datasets(
        csv_paths,
        replacements,
        label_encoder,
        feature_caches=caches,
        crop_seconds=hparams["crop_seconds"],
        train_crop_mode=hparams["train_crop_mode"],
        sample_rate=hparams["sample_rate"],
        eval_crop_seconds=hparams["eval_crop_seconds"],
        min_samples=minimum_samples(upstream),
    )
    frozen = {} if caches is not None else {"upstream": upstream}
    search = None
    if hparams.get("search", False):
        from ser_modules.bas_search import run_search_phase

        search = run_search_phase(hparams, run_opts, datasets, frozen)
        # Retrain the derived network from scratch: fresh objects from the YAML.
        hparams = load_hparams(
            yaml_text,
            {
                **overrides,
                "downstream_model": "blocks",
                "architecture": search["architecture"],
            },
        )
    modules = {**hparams["modules"], **frozen}
    outcome = train_and_test(
        hparams, run_opts, datasets, modules, label_encoder
    )
    if search is not None:
        outcome["search"] = {
            "architecture": list(search["architecture"]),
            "candidates": list(search["candidates"]),
            "probabilities": [
                list(map(float, row)) for row in search["probabilities"]
            ],
            "ties": list(search["ties"]),
            "architecture_file": search["architecture_file"],
            "heatmap": search["heatmap"],
        }
    if sb.utils.distributed.if_main_process():
        atomic_write_text(outcome_path, json.dumps(outcome) + "\n")
    return outcome


def summarise(
    outcomes,
    dataset_name,
    hparams_file,
    overrides,
    prepare_kwargs,
    output_folder,
    identity,
    architecture_ranking=None,
):
    """Aggregate folds; write results.json, results.md and the confusion-matrix PNG.

    ``identity`` (:mod:`ser_modules.run_identity`) says what the run was. With
    ``architecture_ranking`` (a ``ranking.json`` of ``rank_architectures.py``) the BAS
    search results also say where each fold's derived architecture ranks in it."""
    from ser_modules.reports.run_report import (
        plot_confusion_matrix,
        results_markdown,
    )

    labels = next(iter(outcomes.values()))["labels"]
    aggregated = aggregate_folds(
        {
            name: (o["targets"], o["predictions"])
            for name, o in outcomes.items()
        },
        labels=list(range(len(labels))),
    )
    for scores in [*aggregated["folds"].values(), aggregated["pooled"]]:
        scores["labels"] = labels
        scores["per_class"] = dict(zip(labels, scores["per_class"].values()))
    results = {
        "results_format": RESULTS_FORMAT,
        "identity": identity,
        "dataset": dataset_name,
        "hparams_file": os.path.basename(hparams_file),
        "overrides": {
            k: v for k, v in overrides.items() if k not in DERIVED_KEYS
        },
        "preparation": prepare_kwargs,
        "selection": next(iter(outcomes.values()))["selection"],
        "selected_epochs": {
            name: o["selected_epoch"] for name, o in outcomes.items()
        },
        **aggregated,
    }
    searches = {
        name: o["search"] for name, o in outcomes.items() if "search" in o
    }
    if searches:
        from ser_modules.downstream import block_win_counts

        candidates = next(iter(searches.values()))["candidates"]
        results["search"] = {
            "architectures": {
                name: s["architecture"] for name, s in searches.items()
            },
            "probabilities": {
                name: s["probabilities"] for name, s in searches.items()
            },
            "ties": {name: s["ties"] for name, s in searches.items()},
            "heatmaps": {name: s["heatmap"] for name, s in searches.items()},
            "candidates": candidates,
            "block_wins": block_win_counts(
                [s["architecture"] for s in searches.values()], candidates
            ).tolist(),
        }
        if architecture_ranking:
            from ser_modules.architecture_ranking import search_ranks

            results["search"].update(
                search_ranks(
                    results["search"]["architectures"], architecture_ranking
                )
            )
    if sb.utils.distributed.if_main_process():
        atomic_write_text(
            os.path.join(output_folder, "results.json"),
            json.dumps(results, indent=2) + "\n",
        )
        table = results_markdown(results)
        atomic_write_text(
            os.path.join(output_folder, "results.md"), table + "\n"
        )
        plot_confusion_matrix(
            aggregated["pooled"]["confusion"],
            labels,
            os.path.join(output_folder, "confusion_matrix.png"),
            title=f"{dataset_name} ({results['hparams_file']}), all test folds pooled",
        )
        print(table)
        print(f"Results: {os.path.join(output_folder, 'results.json')}")
    return results


def main(prepare_function, dataset_defaults, dataset_name):
    """Entry point of ``recipes/<DATASET>/train.py``."""
    run_recipe(sys.argv[1:], prepare_function, dataset_defaults, dataset_name)
