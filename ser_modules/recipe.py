"""Library functions of the emotion-classification recipes.

Each ``recipes/<DATASET>/train.py`` is a SpeechBrain script that reads top to bottom as the
flow of the recipe (parse the command line, prepare the manifests, build the frozen
upstream and its feature cache, then per fold: [BAS search ->] train -> select -> test ->
export, and aggregate the folds); the functions here are the steps of that flow that all
datasets share, with explicit arguments (the script reads the hparams and passes them).

Every phase leaves its result on disk and is skipped when re-run, so a crashed run resumes
where it stopped (inside a phase, SpeechBrain's checkpoints resume the epoch). A fold's
folder holds a fingerprint of what produces it (:mod:`ser_modules.fingerprint`): a re-run
with other options, another corpus or other code is refused with the differing keys, never
answered with the old results. The output folder is locked while a run uses it
(:func:`locked_output_folder`).
"""

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import re

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
)
from ser_modules.training import build_datasets, build_label_encoder
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


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does.

    HyperPyYAML parses with ruamel.yaml (YAML 1.2), where ``1e-3`` and ``5e-05`` are
    numbers; PyYAML's YAML 1.1 reads them as strings, so ``--lr=1e-3`` was refused as
    "not a number" (and a default written ``5e-05`` escaped the type check).
    """


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def parse_overrides(overrides):
    """SpeechBrain's override string as a dict (so dataset defaults can sit under it)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    try:
        parsed = yaml.load(overrides, Loader=Yaml12Loader)
    except yaml.YAMLError as error:
        raise ValueError(
            f"Cannot read the command-line overrides {overrides!r}: use plain values "
            "(numbers, strings, lists) on the command line."
        ) from error
    return parsed or {}


def load_hparams(yaml_text, overrides):
    """Load the recipe's HyperPyYAML with overrides (objects are created fresh each call)."""
    return load_hyperpyyaml(yaml_text, overrides)


def speechbrain_option_names():
    """SpeechBrain's run options as command-line names (``--device``, ...)."""
    from speechbrain.utils.run_opts import RunOptions

    names = {
        field.name
        for field in dataclasses.fields(RunOptions)
        if field.name not in ("param_file", "overridden_args")
    }
    return {f"--{name}" for name in names | {"help"}}


def parse_arguments(argv):
    """``sb.parse_arguments`` without argparse's prefix matching of SpeechBrain's options.

    SpeechBrain parses its run options with :mod:`argparse`, which takes any unambiguous
    prefix of an option for the option: ``--optimizer=sgd`` would silently become
    ``--optimizer_step_limit=sgd`` and never reach the hparams (``--dev=cpu`` would set
    the device). Every argument that is only a prefix of a run option is therefore taken
    out before SpeechBrain parses and passed on as an hparams override, where an unknown
    key gets its usual clear error; exact run options go to SpeechBrain as before.

    Arguments
    ---------
    argv : list of str
        The command line after the program name.

    Returns
    -------
    (str, RunOptions, str)
        As ``sb.parse_arguments``: the hparams file, the run options and the overrides
        (YAML text).
    """
    options = speechbrain_option_names()
    kept, moved = [], []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        prefix_only = (
            token.startswith("--")
            and len(name) > 2
            and name not in options
            and any(option.startswith(name) for option in options)
        )
        if not prefix_only:
            kept.append(token)
        elif has_value:
            moved.append((name[2:], value))
        elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            moved.append((name[2:], argv[index + 1]))
            index += 1
        else:
            moved.append((name[2:], ""))
        index += 1
    hparams_file, run_opts, overrides = sb.parse_arguments(kept)
    lines = [overrides] if overrides else []
    lines += [f"{key}: {value}".rstrip() for key, value in moved]
    return hparams_file, run_opts, "\n".join(lines)


def recipe_overrides(hparams_file, overrides, dataset_name, *default_groups):
    """The run's overrides: dataset defaults under the command line's, checked.

    Arguments
    ---------
    hparams_file : str
        The recipe's HyperPyYAML file.
    overrides : str or dict
        The command line's overrides (as ``sb.parse_arguments`` returns them).
    dataset_name : str
        Put in the default output folder, ``results/<dataset>/<hparams stem>[_<ssl
        folder name>]/<seed>``, so the runs of two corpora (or two SSL models) never meet in
        one folder.
    *default_groups : dict
        Defaults of the dataset. A group applies when the hparams file declares every key
        of it (top-level keys, read with a YAML parser) and is skipped as a whole
        otherwise, so a training setup is never half applied; the command line wins per
        key.

    Returns
    -------
    (str, dict)
        The text of the hparams file and the overrides to load it with.
    """
    with open(hparams_file, encoding="utf-8") as handle:
        yaml_text = handle.read()
    declared = declared_values(yaml_text)
    command_line = parse_overrides(overrides)
    merged = {}
    for group in default_groups:
        if set(group) <= set(declared):
            merged.update(group)
            logger.info("%s defaults applied: %s", dataset_name, group)
    merged.update(command_line)
    check_override_types(yaml_text, merged, hparams_file)
    if "output_folder" not in merged:
        seed = merged.get("seed", declared.get("seed", 0))
        name = os.path.splitext(os.path.basename(hparams_file))[0]
        if merged.get("ssl_source"):
            folder = os.path.basename(os.path.normpath(merged["ssl_source"]))
            name = f"{name}_{folder}"
        merged["output_folder"] = os.path.join(
            "results", dataset_name, name, str(seed)
        )
    return yaml_text, merged


@contextlib.contextmanager
def locked_output_folder(output_folder):
    """One run per output folder: a second one fails here instead of deleting the first
    one's checkpoints (the lock dies with the process; other DDP ranks do not lock)."""
    if sb.utils.distributed.if_main_process():
        with FolderLock(output_folder, what="this output folder"):
            yield
    else:
        yield


MANIFEST_SPLITS = ("train", "valid", "test")


def existing_folds(prepare_folder, splits=MANIFEST_SPLITS):
    """The manifests an earlier preparation left in ``prepare_folder`` (corpus not read).

    ``<prepare_folder>/<fold>/{train,valid,test}.csv`` for every fold folder, or
    ``<prepare_folder>/{train,valid,test}.csv`` as the one split ``main``.

    Raises
    ------
    FileNotFoundError
        Naming the folder, when it holds neither.
    """
    found = {}
    if os.path.isdir(prepare_folder):
        for name in sorted(os.listdir(prepare_folder)):
            paths = {
                split: os.path.join(prepare_folder, name, f"{split}.csv")
                for split in splits
            }
            if all(os.path.isfile(path) for path in paths.values()):
                found[name] = paths
        top = {
            split: os.path.join(prepare_folder, f"{split}.csv")
            for split in splits
        }
        if not found and all(os.path.isfile(path) for path in top.values()):
            found["main"] = top
    if not found:
        raise FileNotFoundError(
            f"skip_prep=True but {prepare_folder} holds no manifests ({', '.join(splits)}.csv, "
            "directly or in fold folders): run once without --skip_prep, point "
            "--prepare_folder to an earlier run's folder, or give --train_csv, --valid_csv "
            "and --test_csv."
        )
    return found


def fold_manifests(
    prepare_function,
    prepare_kwargs,
    data_folder,
    prepare_folder,
    skip_prep,
    given=None,
):
    """The manifests of every fold: given on the command line, found, or prepared now.

    Arguments
    ---------
    prepare_function : callable
        ``prepare_<dataset>(data_folder, save_folder, ..., skip_prep)``, run on the main
        process when neither ``given`` nor ``skip_prep`` says otherwise.
    prepare_kwargs : dict
        Options of the preparation (from the command line).
    data_folder, prepare_folder : str
        The corpus and the folder of its manifests.
    skip_prep : bool
        Use the manifests already in ``prepare_folder`` (:func:`existing_folds`).
    given : dict, optional
        ``{"train": csv or None, "valid": ..., "test": ...}`` (the ``*_csv`` hparams). When
        any is set, all must be, and they are the one split ``main``: nothing is prepared.

    Returns
    -------
    dict
        ``{fold: {split: csv path}}``.
    """
    given = dict(given or {})
    if prepare_kwargs and (
        skip_prep or any(path is not None for path in given.values())
    ):
        logger.warning(
            "Preparation options %s are ignored: the manifests are %s.",
            prepare_kwargs,
            "given" if any(given.values()) else f"those in {prepare_folder}",
        )
    if any(path is not None for path in given.values()):
        missing = [split for split, path in given.items() if path is None]
        if missing:
            raise ValueError(
                f"Manifests given for some splits but not for {missing}: pass "
                + " ".join(f"--{split}_csv=FILE" for split in missing)
                + " too (or none of them, to prepare the corpus)."
            )
        for split, path in given.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--{split}_csv={path} does not exist.")
        return {"main": given}
    if skip_prep:
        return existing_folds(
            prepare_folder, splits=tuple(given) or MANIFEST_SPLITS
        )
    splits = sb.utils.distributed.run_on_main(
        prepare_function,
        kwargs={
            "data_folder": data_folder,
            "save_folder": prepare_folder,
            **prepare_kwargs,
        },
    )
    if not splits:
        raise RuntimeError(
            f"The preparation wrote no manifests in {prepare_folder}."
        )
    return splits


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


def shared_label_encoder(splits, output_folder):
    """One label encoder for every fold (``<output_folder>/label_encoder.txt``)."""
    all_csvs = [path for name in splits for path in splits[name].values()]
    return sb.utils.distributed.run_on_main(
        build_label_encoder,
        args=[all_csvs, os.path.join(output_folder, "label_encoder.txt")],
    )


def build_feature_caches(
    upstream,
    manifests,
    replacements,
    cache_folder,
    crop_seconds,
    eval_crop_seconds,
    precision,
    batch_size,
    device=None,
):
    """Extract (once) the features every split needs: one cache per distinct crop.

    Arguments
    ---------
    upstream : ser_modules.upstreams.base.Upstream
        The frozen upstream.
    manifests : list of dict
        ``{split: csv}`` of every fold to run (an utterance in several folds is
        extracted once).
    replacements : dict
        ``$data_root`` / ``$prep_root`` of the manifests.
    cache_folder : str
        Where the caches live (keyed by content, so runs can share one).
    crop_seconds, eval_crop_seconds : float
        Crops of training and evaluation.
    precision : str
        ``fp32`` or ``bf16`` storage.
    batch_size : int
        Utterances per extraction batch.
    device : str, optional
        Extraction device (default: SpeechBrain's inferred device).

    Returns
    -------
    dict
        ``{"train": FeatureCache, "eval": FeatureCache}`` (the same object when the
        training and evaluation crops agree).
    """
    from ser_modules.feature_cache import FeatureCache

    rows = list(
        {
            row["ID"]: row
            for fold in manifests
            for path in fold.values()
            for row in read_csv(path)
        }.values()
    )

    def make(seconds):
        return FeatureCache(
            cache_folder,
            upstream,
            crop_seconds=seconds,
            crop_mode="first",
            precision=precision,
        )

    train_cache = make(crop_seconds)
    caches = {"train": train_cache, "eval": train_cache}
    if eval_crop_seconds != crop_seconds:
        caches["eval"] = make(eval_crop_seconds)
    device = device or sb.utils.distributed.infer_device()
    for cache in {id(c): c for c in caches.values()}.values():
        sb.utils.distributed.run_on_main(
            cache.build,
            kwargs={
                "rows": rows,
                "replacements": replacements,
                "batch_size": batch_size,
                "device": device,
            },
        )
        # The other DDP processes read the cache too: tell their copies which audio each
        # ID stands for (the cache is keyed by content; the main process already knows).
        cache.bind(rows, replacements)
    return caches


def frozen_upstream(upstream_factory, ssl_source=None):
    """Build the frozen upstream; a truncated model folder is named, not a bare error."""
    check_upstream_files(ssl_source)
    return upstream_factory()


def fold_datasets(
    manifests,
    run,
    crop_seconds,
    eval_crop_seconds,
    train_crop_mode,
    sample_rate,
):
    """A fold's train / valid / test datasets: cached features, or audio when the run has
    no cache (see :func:`ser_modules.training.build_datasets`).

    The hparams files wire the crops and the sample rate (``fold_datasets: !name:...``);
    a recipe calls ``hparams["fold_datasets"](manifests, run)``.

    Arguments
    ---------
    manifests : dict
        ``{split: csv}`` of the fold.
    run : RunContext
        The run's labels, upstream, caches and path replacements.
    crop_seconds, eval_crop_seconds : float
        Crops of training and evaluation (the first seconds of each utterance).
    train_crop_mode : str
        ``first`` or ``random`` (on-the-fly features only).
    sample_rate : int
        Rate the audio is resampled to.
    """
    return build_datasets(
        manifests,
        run.replacements,
        run.label_encoder,
        feature_caches=run.caches,
        crop_seconds=crop_seconds,
        train_crop_mode=train_crop_mode,
        sample_rate=sample_rate,
        eval_crop_seconds=eval_crop_seconds,
        min_samples=minimum_samples(run.upstream),
    )


def derived_hparams(upstream, label_encoder):
    """The hparams a run fills in from its upstream and its labels."""
    return {
        "input_dim": upstream.output_dim,
        "num_upstream_layers": upstream.num_layers,
        "num_classes": len(label_encoder),
    }


def run_provenance(
    dataset_name, yaml_text, prepare_kwargs, label_encoder, upstream_identity
):
    """What every fold of a run shares in its fingerprint (see :func:`begin_fold`).

    ``upstream_identity`` is the upstream's ``identity()`` (model files by sha256: a
    re-exported model is a change)."""
    return {
        "dataset": dataset_name,
        "hparams_file_sha256": text_sha256(yaml_text),
        "preparation": prepare_kwargs,
        "labels": [
            label_encoder.decode_ndim(i) for i in range(len(label_encoder))
        ],
        "upstream": upstream_identity,
        "code": code_version(),
    }


@dataclasses.dataclass
class RunContext:
    """What every fold of a run shares: built once, after the preparation."""

    dataset_name: str
    output_folder: str
    replacements: dict
    label_encoder: object
    upstream: object
    provenance: dict
    derived: dict
    caches: dict = None

    @classmethod
    def start(
        cls,
        dataset_name,
        yaml_text,
        prepare_kwargs,
        splits,
        upstream,
        output_folder,
        data_folder,
        prepare_folder,
    ):
        """The labels of every fold, the manifests' path replacements, the hparams the
        upstream and the labels fill in, and the run's shared fingerprint."""
        label_encoder = shared_label_encoder(splits, output_folder)
        return cls(
            dataset_name=dataset_name,
            output_folder=output_folder,
            replacements={
                "data_root": data_folder,
                "prep_root": prepare_folder,
            },
            label_encoder=label_encoder,
            upstream=upstream,
            provenance=run_provenance(
                dataset_name,
                yaml_text,
                prepare_kwargs,
                label_encoder,
                upstream.identity(),
            ),
            derived=derived_hparams(upstream, label_encoder),
        )

    def fold_overrides(self, overrides, fold):
        """The overrides a fold's hparams are loaded with."""
        return {**overrides, **self.derived, "split_name": fold}

    def frozen_modules(self):
        """Modules the Brain runs but does not train: the upstream when nothing is cached
        (it is not checkpointed; the cache makes it unnecessary)."""
        return {} if self.caches is not None else {"upstream": self.upstream}


def derived_network(search):
    """The overrides that retrain a BAS search's derived network from scratch."""
    return {
        "downstream_model": "blocks",
        "architecture": search["architecture"],
    }


def checked_selection_set(selection_set):
    """``valid`` (default) or ``test`` (the papers' protocol, warned about)."""
    if selection_set not in ("valid", "test"):
        raise ValueError(
            f"selection_set must be 'valid' or 'test' (paper protocol), got {selection_set!r}"
        )
    if selection_set == "test":
        logger.warning(
            "Paper protocol: selecting the checkpoint on the TEST set (selection_set=test)."
        )
    return selection_set


def fold_outcome(brain, selection_metric, selection_set, label_encoder):
    """The outcome of a fold whose model was trained and tested by ``brain``."""
    best = brain.checkpointer.find_checkpoint(max_key=selection_metric)
    outcome = dict(brain.test_outcome)
    outcome["selected_epoch"] = (
        int(best.meta["epoch"]) if best is not None else None
    )
    outcome["selection"] = {"metric": selection_metric, "set": selection_set}
    # The selection set's score at the selected checkpoint (what model choices can see).
    outcome["selected_score"] = (
        float(best.meta[selection_metric])
        if best is not None and selection_metric in best.meta
        else None
    )
    outcome["labels"] = [
        label_encoder.decode_ndim(i) for i in range(len(label_encoder))
    ]
    return outcome, best


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


def search_summary(search):
    """The part of a BAS search's result a fold's outcome keeps."""
    return {
        "architecture": list(search["architecture"]),
        "candidates": list(search["candidates"]),
        "probabilities": [
            list(map(float, row)) for row in search["probabilities"]
        ],
        "ties": list(search["ties"]),
        "architecture_file": search["architecture_file"],
        "heatmap": search["heatmap"],
        **{
            key: search[key]
            for key in ("chosen_restart", "restarts")
            if key in search
        },
    }


def check_override_types(yaml_text, overrides, hparams_file):
    """Refuse a command-line value of the wrong type for a numeric or boolean hparam.

    ``--number_of_epochs=abc`` would otherwise fail deep inside SpeechBrain with a
    traceback naming neither the option nor the file.

    Raises
    ------
    ValueError
        Naming the option, the value, the expected type and the hparams file.
    """
    defaults = declared_values(yaml_text)
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


def declared_values(yaml_text):
    """Top-level plain values of a HyperPyYAML text (tagged entries skipped)."""

    class TolerantLoader(Yaml12Loader):
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


def begin_fold(hparams, overrides, manifests, run):
    """Check a fold's fingerprint; return its outcome when it already finished.

    The fingerprint is written before any work, so checkpoints, search results and the
    outcome of the fold all belong to it: a re-run with anything changed is refused,
    naming it.

    Returns
    -------
    dict or None
        The saved ``test_outcome.json``, or None when the fold is still to run.
    """
    outcome_path = os.path.join(
        hparams["experiment_folder"], "test_outcome.json"
    )
    if sb.utils.distributed.if_main_process():
        fingerprint = fold_fingerprint(
            hparams,
            overrides,
            manifests,
            run.replacements,
            run.caches,
            run.provenance,
        )
        check_fingerprint(
            hparams["experiment_folder"],
            fingerprint,
            f"{overrides['split_name']} of {hparams['output_folder']}",
            has_results=fold_has_results,
        )
    sb.utils.distributed.ddp_barrier()
    if not os.path.isfile(outcome_path):
        return None
    logger.info(
        "%s already finished: reusing %s", overrides["split_name"], outcome_path
    )
    with open(outcome_path, encoding="utf-8") as handle:
        return json.load(handle)


def finish_fold(brain, hparams, selection_set, run, search=None):
    """After the test: export the selected model, write ``test_outcome.json`` (the fold is
    done) and return the fold's outcome."""
    outcome, best = fold_outcome(
        brain, hparams["selection_metric"], selection_set, run.label_encoder
    )
    outcome["model_folder"] = export_selected_model(hparams, best)
    if search is not None:
        outcome["search"] = search_summary(search)
    if sb.utils.distributed.if_main_process():
        atomic_write_text(
            os.path.join(hparams["experiment_folder"], "test_outcome.json"),
            json.dumps(outcome) + "\n",
        )
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

    ``identity`` (:meth:`RunContext.identity`, :mod:`ser_modules.run_identity`) says what
    the run was. With ``architecture_ranking`` (a ``ranking.json`` of ``rank_architectures.py``) the BAS
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
        restarts = {
            name: {"chosen": s["chosen_restart"], "restarts": s["restarts"]}
            for name, s in searches.items()
            if "restarts" in s
        }
        if restarts:
            results["search"]["restarts"] = restarts
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
