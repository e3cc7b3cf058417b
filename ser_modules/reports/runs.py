"""Finished runs read for comparison: their ``results.json``, what they were, their protocol.

:func:`collect_runs` loads run folders (or their ``results.json`` files), names each run
for the papers' tables from the ``identity`` it records (:mod:`ser_modules.run_identity`;
nothing else on disk is read, so moving or deleting an upstream folder or an hparams file
changes nothing), refuses runs of different protocols in one table (checkpoint selected on
valid vs test, another preparation split, another crop) unless ``allow_mixed`` is given,
and tells apart runs that would share a table cell by the settings that differ.

A ``results.json`` written before run identities were recorded (no ``results_format`` 2)
is refused with the file named and what to do: re-run the recipe.
"""

import collections
import dataclasses
import json
import os

from ser_modules.metrics import METRIC_NAMES
from ser_modules.reports.papers import (
    FEATURE_KINDS,
    paper_model_name,
    paper_upstream_name,
)
from ser_modules.run_identity import RESULTS_FORMAT

# Keys a results.json of ser_modules.recipe always holds.
REQUIRED_KEYS = (
    "results_format",
    "identity",
    "dataset",
    "folds",
    "mean",
    "std",
    "selection",
)
IDENTITY_KEYS = ("dataset", "protocol", "model", "upstream", "hparams")
# Where a run wrote or read files: they never make two runs different experiments.
PATH_SETTINGS = (
    "output_folder",
    "data_folder",
    "prepare_folder",
    "cache_folder",
    "save_folder",
    "experiment_folder",
    "train_log",
    "search_folder",
    "labels_csv",
    "ssl_source",
    "architecture_ranking",
)
# Preparation options that change how the manifests are made, not which split they hold.
NON_PROTOCOL_PREPARATION = (
    "data_folder",
    "save_folder",
    "labels_csv",
    "num_workers",
    "skip_prep",
)


class ReportError(ValueError):
    """A run that cannot be reported, with the file it concerns and what to do about it."""


def results_path(path):
    """The ``results.json`` of a run folder, or ``path`` itself when it is a file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, "results.json")
        if not os.path.isfile(candidate):
            raise ReportError(
                f"{path} holds no results.json: the run has not finished (results.json is written "
                "after its last fold) or this is not an output folder of a recipe."
            )
        return candidate
    if not os.path.exists(path):
        raise ReportError(
            f"{path} does not exist: give run output folders or their results.json files."
        )
    return path


def load_results(path):
    """Read and check a ``results.json`` written by :func:`ser_modules.recipe.summarise`.

    Raises
    ------
    ReportError
        Naming the file: unreadable, not JSON, not written by a recipe of this project, or
        written before run identities were recorded.
    """
    path = results_path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): give the "
            "results.json of a recipe run; if it is one, it is truncated or damaged and rerunning the recipe "
            "rewrites it from the finished folds."
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"Cannot read {path} ({error}).") from error
    if not isinstance(results, dict):
        raise ReportError(
            f"{path} holds a JSON {type(results).__name__}, not the results of a ser_modules recipe."
        )
    missing = [key for key in REQUIRED_KEYS if key not in results]
    version = results.get("results_format")
    if version != RESULTS_FORMAT and {"dataset", "folds"} <= set(results):
        raise ReportError(
            f"{path} is a results.json of format {version or 1}, written before runs recorded "
            f"what they were (this version reads format {RESULTS_FORMAT}, whose 'identity' "
            "names the model, the upstream and the protocol; reports no longer guess them "
            "from file or folder names). Re-run the recipe into a new --output_folder to "
            "get a results.json with its identity."
        )
    if missing:
        raise ReportError(
            f"{path} lacks {missing}: it was not written by a ser_modules recipe "
            "(recipes/<DATASET>/train.py writes results.json with these keys)."
        )
    folds = results["folds"]
    if not isinstance(folds, dict) or not folds:
        raise ReportError(f"{path} has no folds: the run wrote no test scores.")
    for name, scores in folds.items():
        absent = [
            metric
            for metric in METRIC_NAMES
            if not isinstance(scores, dict) or metric not in scores
        ]
        if absent:
            raise ReportError(
                f"{path}: fold {name!r} lacks the scores {absent}; rerun the recipe to rewrite it."
            )
    for summary in ("mean", "std"):
        absent = [
            metric
            for metric in METRIC_NAMES
            if not isinstance(results[summary], dict)
            or metric not in results[summary]
        ]
        if absent:
            raise ReportError(
                f"{path}: {summary!r} lacks {absent}; rerun the recipe to rewrite it."
            )
    search = results.get("search")
    if search is not None:
        if not isinstance(search, dict) or not {
            "architectures",
            "candidates",
        } <= set(search):
            raise ReportError(
                f"{path}: its 'search' entry lacks the architectures or candidates of the BAS search; "
                "rerun the recipe to rewrite it (the searches are reused from the run folder)."
            )
    identity = results["identity"]
    absent = [
        key
        for key in IDENTITY_KEYS
        if not isinstance(identity, dict) or key not in identity
    ]
    if absent:
        raise ReportError(
            f"{path}: its 'identity' lacks {absent}; the file is damaged or edited by hand, "
            "re-run the recipe into a new --output_folder to rewrite it."
        )
    return results


def classifier_input_name(layer_selection):
    """``weighted`` (SUPERB weighted sum), ``last`` or ``layer k``, as in Vesper Table VIII."""
    if layer_selection in (None, "weighted_sum"):
        return "weighted"
    if layer_selection == "last":
        return "last"
    return f"layer {layer_selection}"


@dataclasses.dataclass
class Run:
    """One finished run, named for the tables.

    ``feature_upstream``: hand-crafted features (one representation, no classifier-input
    choice). ``variant`` tells apart runs that would share a table cell (another seed, learning
    rate ...); ``mark`` flags a run whose protocol differs from the others (``--allow_mixed``).
    """

    path: str
    results: dict
    settings: dict
    dataset: str
    model: str
    upstream: str
    classifier_input: str
    protocol: dict
    feature_upstream: bool = False
    variant: str = ""
    mark: str = ""

    @property
    def folder(self):
        return os.path.dirname(os.path.abspath(self.path))

    @property
    def model_label(self):
        """Model name with its classifier input (when not the weighted sum), variant and mark."""
        return self._model_name_and_variant() + self.mark

    @property
    def title(self):
        """``<dataset>: <upstream> <model>`` (for figure titles and headings)."""
        return (
            f"{self.dataset}: {self.upstream} {self._model_name_and_variant()}"
        )

    def _model_name_and_variant(self):
        label = self.model
        if self.classifier_input != "weighted" and not self.feature_upstream:
            suffix = " layer" if self.classifier_input == "last" else ""
            label += f" ({self.classifier_input}{suffix})"
        return label + (f" [{self.variant}]" if self.variant else "")


def describe_run(path):
    """Load a run (folder or results.json) and name its model, upstream and protocol,
    from the identity its results.json records."""
    results = load_results(path)
    path = results_path(path)
    identity = results["identity"]
    recorded = identity["protocol"]
    crop = recorded.get("crop_seconds")
    selection = (
        results["selection"] if isinstance(results["selection"], dict) else {}
    )
    protocol = {
        "selection set": selection.get("set"),
        "selection metric": selection.get("metric"),
        "crop_seconds": crop,
        "eval_crop_seconds": recorded.get("eval_crop_seconds", crop),
    }
    preparation = recorded.get("preparation") or {}
    protocol.update(
        {
            f"preparation {key}": value
            for key, value in sorted(preparation.items())
            if key not in NON_PROTOCOL_PREPARATION
        }
    )
    upstream = identity["upstream"]
    settings = {
        key: value
        for key, value in identity["hparams"].items()
        if key not in PATH_SETTINGS
    }
    # Two upstreams of one name (two Vesper-12 pretrainings ...) differ in content.
    settings["upstream_sha256"] = upstream["content_sha256"][:12]
    return Run(
        path=path,
        results=results,
        settings=settings,
        dataset=str(identity["dataset"]),
        model=paper_model_name(identity["model"]),
        upstream=paper_upstream_name(upstream),
        classifier_input=classifier_input_name(
            identity["model"].get("layer_selection")
        ),
        protocol=protocol,
        feature_upstream=upstream["kind"] in FEATURE_KINDS,
    )


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=str)


def protocol_differences(runs):
    """Which runs follow another protocol than the majority, and how.

    The checkpoint-selection set must agree over all runs; the selection metric, the crop
    lengths and the preparation options over the runs of each dataset. The most common
    value is the reference (the first run's value on a tie).

    Returns
    -------
    dict
        ``{run index: ["selection set: test (the others: valid)", ...]}`` for differing runs.
    """
    groups = collections.defaultdict(list)
    for index, run in enumerate(runs):
        keys = dict.fromkeys(
            key
            for other in runs
            if other.dataset == run.dataset
            for key in other.protocol
        )
        for key in keys:
            scope = None if key == "selection set" else run.dataset
            groups[(scope, key)].append((index, run.protocol.get(key)))
    differences = collections.defaultdict(list)
    for (scope, key), members in groups.items():  # in the order of Run.protocol
        counts = collections.Counter(_canonical(value) for _, value in members)
        if len(counts) < 2:
            continue
        # Counter keeps first-seen order, so a tie goes to the first run's value.
        reference = counts.most_common(1)[0][0]
        for index, value in members:
            if _canonical(value) != reference:
                where = "" if scope is None else f" of the {scope} runs"
                differences[index].append(
                    f"{key}: {_canonical(value)} (the others{where}: {reference})"
                )
    return dict(differences)


def _settings_for_variant(run):
    # The protocol settings (selection, crop) are told apart by the run's mark instead.
    ignored = {
        "selection_set",
        "selection_metric",
        "crop_seconds",
        "eval_crop_seconds",
    }
    return {
        key: value for key, value in run.settings.items() if key not in ignored
    }


def name_variants(runs):
    """Tell apart runs that would fill the same table cell, by the settings that differ.

    Runs of another protocol are already told apart by their mark (``--allow_mixed``).

    Raises
    ------
    ReportError
        When two runs of one cell differ in no setting (the same run given twice, or a
        rerun in another folder): report one of them.
    """
    cells = collections.defaultdict(list)
    for run in runs:
        cells[
            (
                run.dataset,
                run.upstream,
                run.model,
                run.classifier_input,
                run.mark,
            )
        ].append(run)
    for members in cells.values():
        if len(members) < 2:
            continue
        settings = [_settings_for_variant(run) for run in members]
        keys = sorted({key for s in settings for key in s})
        differing = [
            key
            for key in keys
            if len({_canonical(s.get(key)) for s in settings}) > 1
        ]
        if not differing:
            raise ReportError(
                "These runs have the same dataset, upstream, model and settings, so they would fill "
                "the same table cell: "
                + ", ".join(run.path for run in members)
                + ". Give only one of them (or rerun one with another seed)."
            )
        for run, run_settings in zip(members, settings):
            run.variant = ", ".join(
                f"{key}={run_settings.get(key)}" for key in differing
            )


def collect_runs(paths, allow_mixed=False):
    """Load runs, check that their protocols agree, and name them for the tables.

    Arguments
    ---------
    paths : list of str
        Run output folders or their ``results.json`` files (a path given twice counts once).
    allow_mixed : bool
        Report runs of different protocols, marked with a footnote, instead of refusing.

    Returns
    -------
    (list of Run, dict)
        The runs and :func:`protocol_differences`.

    Raises
    ------
    ReportError
        A run that cannot be read, or (without ``allow_mixed``) mixed protocols.
    """
    seen, runs = set(), []
    for path in paths:
        run = describe_run(path)
        real = os.path.realpath(run.path)
        if real not in seen:
            seen.add(real)
            runs.append(run)
    differences = protocol_differences(runs)
    if differences and not allow_mixed:
        lines = [
            f"- {runs[index].path}: " + "; ".join(items)
            for index, items in sorted(differences.items())
        ]
        raise ReportError(
            "These runs follow another protocol than the others, so their scores are not comparable "
            "in one table:\n"
            + "\n".join(lines)
            + "\nReport them separately, or pass --allow_mixed to put them in the tables marked with †."
        )
    for number, index in enumerate(sorted(differences), start=1):
        runs[index].mark = f" †{number}"
    name_variants(runs)
    return runs, differences
