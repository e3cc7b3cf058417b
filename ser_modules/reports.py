"""Reports of finished runs: Markdown tables and figures a person can read.

Two uses:

* at the end of every recipe, one run: :func:`results_markdown` (``results.md``) and
  :func:`plot_confusion_matrix` (``confusion_matrix.png``);
* afterwards, many finished runs collected into the papers' tables::

    python -m ser_modules.reports RUN_DIR_OR_RESULTS_JSON... [--out report.md] [--figures DIR] [--allow_mixed]

  The report holds the BAS Table 1 layout (rows = upstream x downstream model, WA / UA on
  the fold datasets, WF1 on MELD), the Vesper Table III layout (rows = upstream, SUPERB
  classifier, WA / UA / WF1 per dataset) and, when last-layer runs are given, its Table VIII
  variant (weighted sum of layers vs one layer); the paper's number stands next to ours
  wherever the row and column match. Then every run with its protocol, the architectures
  found by the BAS searches, and links to the figures (confusion matrices re-plotted into
  ``--figures``, the searches' theta heatmaps copied there). The t-SNE of utterance
  representations (Vesper Fig. 6) comes from ``python -m ser_modules.tsne``.

A run is described by its ``results.json`` and, when its run folder is still there, by the
resolved ``hyperparams.yaml`` and ``prepare_options.json`` next to it. Runs of different
protocols (checkpoint selected on valid vs test, another preparation split, another crop)
are not comparable: the command refuses to put them in one table unless ``--allow_mixed``
is given, and then marks them.
"""

import argparse
import collections
import dataclasses
import json
import os
import re
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from ser_modules.metrics import METRIC_NAMES  # noqa: E402


def results_markdown(results):
    """Per-fold WA / UA / WF1, their mean +/- std, and the pooled scores, as Markdown."""
    title = f"### {results['dataset']} - {results['hparams_file']}"
    selection = results.get("selection", {})
    lines = [
        title,
        "",
        f"Checkpoint selected on the {selection.get('set', 'valid')} set by {selection.get('metric', '?')}.",
        "",
        "| split | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for name, scores in results["folds"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{scores[m]:.4f}" for m in METRIC_NAMES)
            + " |"
        )
    if len(results["folds"]) > 1:
        lines.append(
            "| mean +/- std | "
            + " | ".join(
                f"{results['mean'][m]:.4f} +/- {results['std'][m]:.4f}"
                for m in METRIC_NAMES
            )
            + " |"
        )
        lines.append(
            "| pooled | "
            + " | ".join(f"{results['pooled'][m]:.4f}" for m in METRIC_NAMES)
            + " |"
        )
    search = results.get("search")
    if search:
        lines += [
            "",
            "Architectures found by the BAS search (first layer first):",
            "",
        ]
        lines += [
            f"- {name}: {' -> '.join(arch)}"
            for name, arch in search["architectures"].items()
        ]
        candidates = search["candidates"]
        lines += [
            "",
            "How often each block won each layer:",
            "",
            "| layer | " + " | ".join(candidates) + " |",
            "|---|" + "---|" * len(candidates),
        ]
        for index, row in enumerate(search["block_wins"]):
            lines.append(
                f"| {index + 1} | " + " | ".join(str(v) for v in row) + " |"
            )
        tied = {name: t for name, t in search["ties"].items() if t}
        if tied:
            lines += [
                "",
                "Ties in theta (broken towards the first candidate): "
                + ", ".join(
                    f"{name} layers {[t + 1 for t in layers]}"
                    for name, layers in tied.items()
                ),
            ]
        lines += theta_decision_lines(search)
    return "\n".join(lines)


def theta_decision_lines(search):
    """Markdown lines: the largest softmax(theta) per layer and split, and, when the run was
    given an exhaustive ranking, where each derived architecture ranks in it."""
    from ser_modules.architecture_ranking import ranks_markdown

    lines = []
    probabilities = search.get("probabilities") or {}
    if probabilities:
        num_layers = len(next(iter(probabilities.values())))
        lines += [
            "",
            "Largest softmax(theta) per layer at the end of the search (a decided search: >= 0.6):",
            "",
            "| split | "
            + " | ".join(f"layer {i + 1}" for i in range(num_layers))
            + " |",
            "|---|" + "---|" * num_layers,
        ]
        for name, table in probabilities.items():
            lines.append(
                f"| {name} | "
                + " | ".join(f"{max(row):.3f}" for row in table)
                + " |"
            )
    return lines + ranks_markdown(search)


def plot_confusion_matrix(confusion, labels, path, title="", normalize=True):
    """Save a confusion matrix (rows = reference) as a PNG with counts and row shares.

    Arguments
    ---------
    confusion : list of list of int
        ``(C, C)`` counts, rows = reference class.
    labels : list of str
        Class names.
    path : str
        PNG to write.
    title : str
        Figure title.
    normalize : bool
        Colour by the share of each reference class (recall) rather than by count.
    """
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        counts, totals, out=np.zeros_like(counts), where=totals > 0
    )
    size = max(4.0, 0.9 * len(labels) + 2.0)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(
        shares if normalize else counts,
        cmap="Blues",
        vmin=0.0,
        vmax=1.0 if normalize else None,
    )
    axis.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels=labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("reference")
    for row in range(len(labels)):
        for column in range(len(labels)):
            dark = shares[row, column] > 0.5
            axis.text(
                column,
                row,
                f"{int(counts[row, column])}\n{shares[row, column]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    figure.colorbar(
        image,
        ax=axis,
        fraction=0.046,
        pad=0.04,
        label="share of reference class" if normalize else "count",
    )
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------
# The papers' numbers (as printed: BAS in %, Vesper as fractions)
# ---------------------------------------------------------------------------------------

# BAS paper, Table 1: IEMOCAP WA / UA (mean of the 5 folds) and MELD WF1, in %.
# The WavLM 3L-baseline MELD WF1 is not legible in the paper.
BAS_TABLE1 = {
    ("HuBERT Large", "3L-baseline"): {
        ("IEMOCAP", "WA"): 68.95,
        ("IEMOCAP", "UA"): 70.61,
        ("MELD", "WF1"): 39.12,
    },
    ("HuBERT Large", "4L-baseline"): {
        ("IEMOCAP", "WA"): 68.16,
        ("IEMOCAP", "UA"): 69.61,
        ("MELD", "WF1"): 44.96,
    },
    ("HuBERT Large", "simple-FFN"): {
        ("IEMOCAP", "WA"): 71.57,
        ("IEMOCAP", "UA"): 72.73,
        ("MELD", "WF1"): 44.80,
    },
    ("HuBERT Large", "3L-BAS"): {
        ("IEMOCAP", "WA"): 72.24,
        ("IEMOCAP", "UA"): 73.19,
        ("MELD", "WF1"): 45.08,
    },
    ("HuBERT Large", "4L-BAS"): {
        ("IEMOCAP", "WA"): 72.35,
        ("IEMOCAP", "UA"): 73.35,
        ("MELD", "WF1"): 45.24,
    },
    ("WavLM Large", "3L-baseline"): {
        ("IEMOCAP", "WA"): 70.74,
        ("IEMOCAP", "UA"): 72.09,
    },
    ("WavLM Large", "4L-baseline"): {
        ("IEMOCAP", "WA"): 70.08,
        ("IEMOCAP", "UA"): 71.65,
        ("MELD", "WF1"): 45.75,
    },
    ("WavLM Large", "simple-FFN"): {
        ("IEMOCAP", "WA"): 72.53,
        ("IEMOCAP", "UA"): 73.70,
        ("MELD", "WF1"): 46.25,
    },
    ("WavLM Large", "3L-BAS"): {
        ("IEMOCAP", "WA"): 73.92,
        ("IEMOCAP", "UA"): 74.22,
        ("MELD", "WF1"): 46.18,
    },
    ("WavLM Large", "4L-BAS"): {
        ("IEMOCAP", "WA"): 74.03,
        ("IEMOCAP", "UA"): 74.95,
        ("MELD", "WF1"): 47.18,
    },
}


def _vesper_scores(iemocap, meld, cremad):
    """``{(dataset, metric): value}`` from three (WA, UA, WF1) triples (None = not reported)."""
    scores = {}
    for dataset, triple in (
        ("IEMOCAP", iemocap),
        ("MELD", meld),
        ("CREMA-D", cremad),
    ):
        for metric, value in zip(METRIC_NAMES, triple):
            if value is not None:
                scores[(dataset, metric)] = value
    return scores


# Vesper paper, Table VIII (its "Weighted" rows are Table III): SUPERB classifier on the
# weighted sum of all layers or on the last layer only. WavLM's weighted IEMOCAP WA comes
# from the WavLM paper; UA and WF1 are not reported there.
VESPER_TABLE8 = {
    ("WavLM Base", "weighted"): _vesper_scores(
        (0.659, None, None), (0.499, 0.201, 0.400), (0.599, 0.599, 0.600)
    ),
    ("WavLM Base", "last"): _vesper_scores(
        (0.557, 0.558, 0.546), (0.481, 0.143, 0.313), (0.563, 0.564, 0.565)
    ),
    ("WavLM Large", "weighted"): _vesper_scores(
        (0.706, None, None), (0.542, 0.253, 0.476), (0.757, 0.762, 0.755)
    ),
    ("WavLM Large", "last"): _vesper_scores(
        (0.686, 0.701, 0.683), (0.522, 0.263, 0.454), (0.694, 0.700, 0.689)
    ),
    ("Vesper-4", "weighted"): _vesper_scores(
        (0.684, 0.693, 0.683), (0.501, 0.250, 0.457), (0.734, 0.737, 0.733)
    ),
    ("Vesper-4", "last"): _vesper_scores(
        (0.681, 0.699, 0.679), (0.504, 0.260, 0.468), (0.719, 0.723, 0.714)
    ),
    ("Vesper-12", "weighted"): _vesper_scores(
        (0.707, 0.708, 0.706), (0.535, 0.268, 0.480), (0.772, 0.776, 0.768)
    ),
    ("Vesper-12", "last"): _vesper_scores(
        (0.705, 0.712, 0.705), (0.526, 0.266, 0.476), (0.774, 0.778, 0.772)
    ),
}
VESPER_TABLE3 = {
    upstream: scores
    for (upstream, source), scores in VESPER_TABLE8.items()
    if source == "weighted"
}

# Vesper paper, Table IV: the SER-specific downstream models Shiftformer [42] and
# SpeechFormer-S [65] on each upstream, (WA, UA, WF1) per dataset. The paper does not say
# which upstream layers feed them: its numbers are shown beside runs of any classifier input.
SHIFTFORMER = "Shiftformer"
SPEECHFORMER_S = "SpeechFormer-S"
TABLE4_MODELS = (SHIFTFORMER, SPEECHFORMER_S)
_TABLE4_PRINTED = {  # (dataset, upstream): (Shiftformer WA, UA, WF1, SpeechFormer-S WA, UA, WF1)
    ("IEMOCAP", "WavLM Base"): (0.615, 0.624, 0.609, 0.608, 0.613, 0.602),
    ("IEMOCAP", "Vesper-4"): (0.730, 0.739, 0.730, 0.711, 0.725, 0.711),
    ("IEMOCAP", "WavLM Large"): (0.727, 0.736, 0.727, 0.721, 0.729, 0.719),
    ("IEMOCAP", "Vesper-12"): (0.737, 0.743, 0.735, 0.729, 0.731, 0.725),
    ("MELD", "WavLM Base"): (0.480, 0.212, 0.424, 0.481, 0.208, 0.414),
    ("MELD", "Vesper-4"): (0.479, 0.240, 0.445, 0.489, 0.260, 0.441),
    ("MELD", "WavLM Large"): (0.527, 0.265, 0.476, 0.493, 0.281, 0.474),
    ("MELD", "Vesper-12"): (0.530, 0.262, 0.479, 0.507, 0.276, 0.477),
    ("CREMA-D", "WavLM Base"): (0.709, 0.712, 0.708, 0.696, 0.698, 0.691),
    ("CREMA-D", "Vesper-4"): (0.780, 0.783, 0.778, 0.761, 0.764, 0.760),
    ("CREMA-D", "WavLM Large"): (0.751, 0.754, 0.751, 0.770, 0.772, 0.769),
    ("CREMA-D", "Vesper-12"): (0.806, 0.809, 0.804, 0.794, 0.797, 0.795),
}
VESPER_TABLE4 = {
    (dataset, upstream, model): dict(
        zip(METRIC_NAMES, values[3 * index : 3 * index + 3])
    )
    for (dataset, upstream), values in _TABLE4_PRINTED.items()
    for index, model in enumerate(TABLE4_MODELS)
}

# Display orders: the papers' datasets first, the BAS Table 1 models in its order.
DATASET_ORDER = ("IEMOCAP", "MELD", "CREMA-D")
MODEL_ORDER = (
    "3L-baseline",
    "4L-baseline",
    "simple-FFN",
    "3L-BAS",
    "4L-BAS",
    "SUPERB classifier",
)
UPSTREAM_FAMILIES = {
    "fbank": "Fbank",
    "hubert": "HuBERT",
    "wavlm": "WavLM",
    "vesper": "Vesper",
}
SUPERB = "SUPERB classifier"

# Keys a results.json of ser_modules.recipe always holds.
REQUIRED_KEYS = ("dataset", "hparams_file", "folds", "mean", "std", "selection")
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


# ---------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------


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
        Naming the file: unreadable, not JSON, or not written by a recipe of this project.
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
    return results


class _IgnoreTagsLoader(yaml.SafeLoader):
    """Reads a resolved HyperPyYAML file as plain YAML: tagged objects become None."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_run_hparams(folder):
    """The plain top-level values of ``<folder>/hyperparams.yaml`` (resolved by SpeechBrain).

    Returns an empty dict when the file is absent or unreadable: results.json alone is
    enough to report a run, this file only fills in YAML defaults such as ``num_layers``.
    """
    path = os.path.join(folder, "hyperparams.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.load(handle, Loader=_IgnoreTagsLoader)
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {
        key: value
        for key, value in values.items()
        if value is not None and not key.startswith("__")
    }


def read_preparation_options(folder, settings, results):
    """Options of the preparation that wrote the run's manifests (split, folds, seed ...).

    ``prepare_options.json`` holds every option, defaults included; ``results.json`` only
    those given on the command line, so it is the fallback when the manifests are gone.
    """
    candidates = [os.path.join(folder, "prepared", "prepare_options.json")]
    if isinstance(settings.get("prepare_folder"), str):
        candidates.insert(
            0, os.path.join(settings["prepare_folder"], "prepare_options.json")
        )
    options = dict(results.get("preparation") or {})
    for candidate in candidates:
        try:
            with open(candidate, encoding="utf-8") as handle:
                options = json.load(handle)["options"]
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {
        key: value
        for key, value in options.items()
        if key not in NON_PROTOCOL_PREPARATION
    }


# ---------------------------------------------------------------------------------------
# Naming a run: downstream model, upstream, classifier input
# ---------------------------------------------------------------------------------------


def _family(hparams_file):
    """``("bas", "wavlm")`` from ``bas_wavlm.yaml``; ``(stem, "")`` for other names."""
    stem = os.path.splitext(os.path.basename(hparams_file))[0]
    model, _, upstream = stem.partition("_")
    return model, upstream


# What the hparams files of each family set, for runs whose hyperparams.yaml is gone.
FAMILY_DEFAULTS = {
    "superb": {"downstream_model": "superb"},
    "transformer": {"downstream_model": "transformer", "num_layers": 3},
    "ffn": {"downstream_model": "ffn"},
    "bas": {"downstream_model": "blocks", "search": True, "search_layers": 3},
    "shiftformer": {"downstream_model": "shiftformer"},
    "speechformer": {"downstream_model": "speechformer"},
    "svm": {
        "downstream_model": "linear SVM",
        "feature_level": "functionals",
    },  # classic baseline
}
# openSMILE feature sets (``features`` of the feature-upstream files, or svm_<set>.yaml).
OPENSMILE_NAMES = {"egemaps": "eGeMAPS", "compare": "ComParE"}


def model_name(hparams_file, settings):
    """The BAS Table 1 name of a run's downstream model.

    ``transformer_*.yaml`` with ``num_layers=4`` is ``4L-baseline``, ``bas_*.yaml`` with
    ``search_layers=4`` is ``4L-BAS``, ``ffn_*`` is ``simple-FFN`` and ``superb_*`` the
    ``SUPERB classifier``; a ``downstream_model`` override wins over the file name.

    Arguments
    ---------
    hparams_file : str
        The recipe's YAML file name (``results["hparams_file"]``).
    settings : dict
        The run's hparams: resolved ``hyperparams.yaml`` values under its overrides.
    """
    family, _ = _family(hparams_file)
    settings = {**FAMILY_DEFAULTS.get(family, {}), **settings}
    model = settings.get("downstream_model", family)
    if model == "blocks":
        if settings.get("search", False):
            return f"{settings.get('search_layers', 3)}L-BAS"
        architecture = settings.get("architecture") or []
        return (
            "blocks " + "-".join(map(str, architecture))
            if architecture
            else "blocks"
        )
    if model == "transformer":
        return f"{settings.get('num_layers', 3)}L-baseline"
    if model == "ffn":
        return "simple-FFN"
    if model == "superb":
        return SUPERB
    if model == "shiftformer":
        return SHIFTFORMER
    if model == "speechformer":
        expand = list(settings.get("speechformer_expand") or [1, 1, 1])
        layers = list(settings.get("speechformer_layers") or [2, 2, 4, 4])
        if layers == [2, 2, 4, 4] and expand in ([1, 1, 1], [1, 1, 2]):
            return SPEECHFORMER_S if expand == [1, 1, 1] else "SpeechFormer-B"
        return f"SpeechFormer (layers {layers}, expand {expand})"
    return str(model)


def _read_model_config(source):
    try:
        with open(
            os.path.join(source, "config.json"), encoding="utf-8"
        ) as handle:
            return json.load(handle)
    except (OSError, ValueError, TypeError):
        return {}


def upstream_name(hparams_file, settings):
    """The papers' name of a run's upstream: ``WavLM Large``, ``Vesper-12``, ``Fbank`` ...

    The family comes from the hparams file name (``*_fbank``, ``*_wavlm``, ``*_hubert``,
    ``*_vesper``); the size from the ``config.json`` of ``ssl_source`` when it is still
    on disk (1024 dims x 24 layers = Large, 768 x 12 = Base; Vesper-N has 1024 dims and N
    layers), else from the folder's name (``wavlm-large``, ``vesper12`` ...). A model of
    another size is named by its shape, so that it never matches a paper's row.
    """
    model_family, family_key = _family(hparams_file)
    if not family_key and settings.get("upstream_kind"):
        # One hparams file for every upstream (shiftformer.yaml ...): the kind hparam, or
        # for "auto" the folder's config.json, names the family. Vesper exports are WavLM
        # models of 4 or 12 layers at 1024 dims (or have "vesper" in their name).
        family_key = str(settings["upstream_kind"])
        source = str(settings.get("ssl_source") or "")
        if family_key != "fbank" and source:
            config = _read_model_config(source)
            family_key = (
                config.get("model_type", family_key)
                if family_key == "auto"
                else family_key
            )
            shape = (config.get("num_hidden_layers"), config.get("hidden_size"))
            if "vesper" in os.path.basename(
                os.path.normpath(source)
            ).lower() or (
                family_key == "wavlm" and shape in ((4, 1024), (12, 1024))
            ):
                family_key = "vesper"
    family = UPSTREAM_FAMILIES.get(family_key)
    settings = {**FAMILY_DEFAULTS.get(model_family, {}), **settings}
    features = settings.get("features", family_key)
    if features in OPENSMILE_NAMES and (
        family == "Fbank" or family_key in OPENSMILE_NAMES
    ):
        level = (
            "functionals"
            if settings.get("feature_level") == "functionals"
            else "LLDs"
        )
        return f"{OPENSMILE_NAMES[features]} {level}"
    if family is None:
        return family_key or "?"
    if family == "Fbank":
        return family
    source = str(settings.get("ssl_source") or "")
    folder_name = (
        os.path.basename(os.path.normpath(source)).lower() if source else ""
    )
    config = _read_model_config(source) if source else {}
    layers, width = config.get("num_hidden_layers"), config.get("hidden_size")
    if family == "Vesper":
        if layers and width:
            return (
                f"Vesper-{layers}"
                if width == 1024
                else f"Vesper ({layers} layers, {width} dims)"
            )
        match = re.search(r"vesper[-_ ]?(\d+)", folder_name)
        return f"Vesper-{match.group(1)}" if match else family
    plus = "+" if re.search(r"plus|\+", folder_name) else ""
    if layers and width:
        sizes = {(24, 1024): "Large", (12, 768): "Base"}
        size = sizes.get((layers, width))
        if size is None:
            return f"{family} ({layers} layers, {width} dims)"
        return f"{family} {size}{plus if size == 'Base' else ''}"
    if "large" in folder_name:
        return f"{family} Large"
    if "base" in folder_name:
        return f"{family} Base{plus}"
    return family


def classifier_input_name(layer_selection):
    """``weighted`` (SUPERB weighted sum), ``last`` or ``layer k``, as in Vesper Table VIII."""
    if layer_selection in (None, "weighted_sum"):
        return "weighted"
    if layer_selection == "last":
        return "last"
    return f"layer {layer_selection}"


# ---------------------------------------------------------------------------------------
# Runs and their protocol
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One finished run, named for the tables.

    ``variant`` tells apart runs that would share a table cell (another seed, learning
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
        if self.classifier_input != "weighted" and self.upstream != "Fbank":
            suffix = " layer" if self.classifier_input == "last" else ""
            label += f" ({self.classifier_input}{suffix})"
        return label + (f" [{self.variant}]" if self.variant else "")


def describe_run(path):
    """Load a run (folder or results.json) and name its model, upstream and protocol."""
    results = load_results(path)
    path = results_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    overrides = results.get("overrides") or {}
    settings = {**read_run_hparams(folder), **overrides}
    crop = settings.get("crop_seconds")
    selection = (
        results["selection"] if isinstance(results["selection"], dict) else {}
    )
    protocol = {
        "selection set": selection.get("set"),
        "selection metric": selection.get("metric"),
        "crop_seconds": crop,
        "eval_crop_seconds": settings.get("eval_crop_seconds", crop),
    }
    preparation = read_preparation_options(folder, settings, results)
    protocol.update(
        {
            f"preparation {key}": value
            for key, value in sorted(preparation.items())
        }
    )
    return Run(
        path=path,
        results=results,
        settings=settings,
        dataset=str(results["dataset"]),
        model=model_name(results["hparams_file"], settings),
        upstream=upstream_name(results["hparams_file"], settings),
        classifier_input=classifier_input_name(settings.get("layer_selection")),
        protocol=protocol,
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
        *PATH_SETTINGS,
        "selection_set",
        "selection_metric",
        "crop_seconds",
        "eval_crop_seconds",
    }
    settings = {
        key: value for key, value in run.settings.items() if key not in ignored
    }
    if "ssl_source" in settings:
        settings["ssl_source"] = os.path.basename(
            os.path.normpath(str(settings["ssl_source"]))
        )
    return settings


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


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def _dataset_order(datasets):
    known = [name for name in DATASET_ORDER if name in datasets]
    return known + sorted(set(datasets) - set(DATASET_ORDER))


def _upstream_order(name):
    families = list(UPSTREAM_FAMILIES.values())
    family = next(
        (
            index
            for index, prefix in enumerate(families)
            if name.startswith(prefix)
        ),
        len(families),
    )
    size = {"Base": 0, "Base+": 1, "Large": 2}.get(name.split(" ")[-1], 3)
    digits = re.findall(r"\d+", name)
    return (family, size, int(digits[0]) if digits else 0, name)


def _model_order(name):
    return (
        MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER),
        name,
    )


def score_cell(run, metric, scale):
    """``(mean, std)`` over the run's folds of ``metric``, times ``scale``."""
    return scale * float(run.results["mean"][metric]), scale * float(
        run.results["std"][metric]
    )


def table_rows(runs, columns, row_key, reference=None, scale=1.0):
    """Arrange runs as rows of score cells.

    Arguments
    ---------
    runs : list of Run
    columns : list of (str, str)
        ``(dataset, metric)`` of each column.
    row_key : callable
        ``Run -> tuple of str``: the row label cells; runs with the same key share a row.
    reference : callable, optional
        ``(Run, dataset, metric) -> float or None``: the paper's number for that cell.
    scale : float
        100 for tables in %, 1 for fractions.

    Returns
    -------
    list of dict
        ``{"label": tuple, "cells": {(dataset, metric): {"mean", "std", "folds", "paper", "run"}}}``.
    """
    rows = {}
    for run in runs:
        row = rows.setdefault(
            row_key(run), {"label": row_key(run), "cells": {}}
        )
        for dataset, metric in columns:
            if dataset != run.dataset:
                continue
            mean, std = score_cell(run, metric, scale)
            row["cells"][(dataset, metric)] = {
                "mean": mean,
                "std": std,
                "folds": len(run.results["folds"]),
                "paper": reference(run, dataset, metric) if reference else None,
                "run": run,
            }
    return list(rows.values())


def _format_cell(cell, digits):
    if cell is None:
        return "-"
    text = f"{cell['mean']:.{digits}f}"
    if cell["folds"] > 1:
        text += f" ± {cell['std']:.{digits}f}"
    if cell["paper"] is not None:
        text += f" (paper {cell['paper']:.{digits}f})"
    return text


def markdown_table(header, rows, columns, digits):
    """Render :func:`table_rows` as a Markdown table."""
    lines = [
        "| "
        + " | ".join(header)
        + " | "
        + " | ".join(f"{d} {m}" for d, m in columns)
        + " |",
        "|" + "---|" * (len(header) + len(columns)),
    ]
    for row in rows:
        cells = [
            _format_cell(row["cells"].get(column), digits) for column in columns
        ]
        lines.append(
            "| " + " | ".join(row["label"]) + " | " + " | ".join(cells) + " |"
        )
    return lines


def bas_table(runs):
    """BAS Table 1 layout: rows = upstream x model; WA / UA per fold dataset, WF1 on MELD (in %).

    Returns
    -------
    (list of (str, str), list of dict)
        The columns and :func:`table_rows`.
    """
    datasets = _dataset_order({run.dataset for run in runs})
    columns = [
        (d, m)
        for d in datasets
        for m in (("WF1",) if d == "MELD" else ("WA", "UA"))
    ]

    def reference(run, dataset, metric):
        if run.variant or run.classifier_input != "weighted":
            return None
        return BAS_TABLE1.get((run.upstream, run.model), {}).get(
            (dataset, metric)
        )

    ordered = sorted(
        runs,
        key=lambda r: (
            _upstream_order(r.upstream),
            _model_order(r.model),
            r.model_label,
        ),
    )
    return columns, table_rows(
        ordered,
        columns,
        lambda r: (r.upstream, r.model_label),
        reference,
        scale=100.0,
    )


def vesper_table(runs, by_input=False):
    """Vesper Table III layout (rows = upstream, SUPERB classifier on the weighted sum of layers),
    or with ``by_input`` its Table VIII variant (rows = upstream x classifier input).

    Returns
    -------
    (list of (str, str), list of dict)
        The columns (WA / UA / WF1 of every dataset) and :func:`table_rows`.
    """
    chosen = [
        run
        for run in runs
        if run.model == SUPERB
        and (by_input or run.classifier_input == "weighted")
    ]
    datasets = _dataset_order({run.dataset for run in chosen})
    columns = [(d, m) for d in datasets for m in METRIC_NAMES]

    def reference(run, dataset, metric):
        if run.variant:
            return None
        return VESPER_TABLE8.get((run.upstream, run.classifier_input), {}).get(
            (dataset, metric)
        )

    def row_key(run):
        upstream = (
            run.upstream
            + (f" [{run.variant}]" if run.variant else "")
            + run.mark
        )
        return (upstream, run.classifier_input) if by_input else (upstream,)

    ordered = sorted(
        chosen,
        key=lambda r: (
            _upstream_order(r.upstream),
            r.variant,
            r.classifier_input != "weighted",
            r.classifier_input,
        ),
    )
    return columns, table_rows(ordered, columns, row_key, reference, scale=1.0)


def vesper_table4(runs):
    """Vesper Table IV layout: rows = dataset x upstream, columns = {Shiftformer,
    SpeechFormer-S} x {WA, UA, WF1} (fractions), the paper's number beside ours.

    Returns
    -------
    (list of (str, str), list of dict)
        The columns ``(model, metric)`` and rows like :func:`table_rows`'s.
    """
    chosen = [run for run in runs if run.model in TABLE4_MODELS]
    columns = [
        (model, metric) for model in TABLE4_MODELS for metric in METRIC_NAMES
    ]
    dataset_rank = {
        name: index
        for index, name in enumerate(
            _dataset_order({run.dataset for run in chosen})
        )
    }
    ordered = sorted(
        chosen,
        key=lambda r: (
            dataset_rank[r.dataset],
            _upstream_order(r.upstream),
            r.variant,
            r.classifier_input,
        ),
    )
    rows = {}
    for run in ordered:
        upstream = run.upstream
        if run.classifier_input != "weighted" and run.upstream != "Fbank":
            upstream += f" ({run.classifier_input})"
        label = (
            run.dataset,
            upstream + (f" [{run.variant}]" if run.variant else "") + run.mark,
        )
        row = rows.setdefault(label, {"label": label, "cells": {}})
        for metric in METRIC_NAMES:
            mean, std = score_cell(run, metric, 1.0)
            paper = (
                None
                if run.variant
                else VESPER_TABLE4.get(
                    (run.dataset, run.upstream, run.model), {}
                ).get(metric)
            )
            row["cells"][(run.model, metric)] = {
                "mean": mean,
                "std": std,
                "folds": len(run.results["folds"]),
                "paper": paper,
                "run": run,
            }
    return columns, list(rows.values())


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def _slug(text):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_slugs(runs):
    """A distinct file-name stem per run: ``<dataset>_<upstream>_<model>[_<variant>]``."""
    slugs, used = [], collections.Counter()
    for run in runs:
        input_name = (
            "" if run.classifier_input == "weighted" else run.classifier_input
        )
        mark = run.mark.replace("†", "mixed")
        slug = _slug(
            f"{run.dataset}_{run.upstream}_{run.model}_{input_name}_{run.variant}_{mark}"
        )[:80].strip("_")
        used[slug] += 1
        slugs.append(slug if used[slug] == 1 else f"{slug}_{used[slug]}")
    return slugs


def _existing_heatmap(run, fold, recorded):
    """The theta heatmap of a fold: where results.json says, or in the (moved) run folder."""
    for candidate in (
        recorded,
        os.path.join(run.folder, fold, "search", "theta_heatmap.png"),
    ):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def write_figures(runs, figures_folder):
    """Re-plot every run's pooled confusion matrix and copy its BAS theta heatmaps.

    A heatmap missing on disk is re-plotted from the probabilities in results.json.

    Returns
    -------
    list of dict
        Per run: ``{"confusion": path or None, "heatmaps": {fold: path}}``.
    """
    from ser_modules.downstream.architecture import plot_theta_heatmap

    if figures_folder:
        os.makedirs(figures_folder, exist_ok=True)
    figures = []
    for run, slug in zip(runs, run_slugs(runs)):
        entry = {"confusion": None, "heatmaps": {}}
        pooled = run.results.get("pooled") or {}
        if figures_folder and "confusion" in pooled and "labels" in pooled:
            folds = len(run.results["folds"])
            entry["confusion"] = plot_confusion_matrix(
                pooled["confusion"],
                pooled["labels"],
                os.path.join(figures_folder, f"{slug}_confusion.png"),
                title=f"{run.title}\ntest predictions of {folds} fold{'s' if folds > 1 else ''} pooled",
            )
        elif os.path.isfile(os.path.join(run.folder, "confusion_matrix.png")):
            entry["confusion"] = os.path.join(
                run.folder, "confusion_matrix.png"
            )
        search = run.results.get("search") or {}
        for fold, recorded in (search.get("heatmaps") or {}).items():
            existing = _existing_heatmap(run, fold, recorded)
            if not figures_folder:
                if existing:
                    entry["heatmaps"][fold] = existing
                continue
            target = os.path.join(
                figures_folder, f"{slug}_theta_{_slug(fold)}.png"
            )
            if existing:
                shutil.copyfile(existing, target)
            elif fold in (search.get("probabilities") or {}):
                plot_theta_heatmap(
                    search["probabilities"][fold],
                    search["candidates"],
                    target,
                    f"{run.title}, {fold}: softmax(theta)",
                )
            else:
                continue
            entry["heatmaps"][fold] = target
        figures.append(entry)
    return figures


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _link(path, base):
    target = os.path.relpath(path, base) if base else path
    return target.replace(os.sep, "/")


def search_summary(run, heatmaps, base):
    """Markdown of one BAS run's searches: architecture per fold, overall, block wins."""
    search = run.results["search"]
    candidates = search["candidates"]
    architectures = search["architectures"]
    lines = [
        f"#### {run.title}",
        "",
        "| fold | architecture (first layer first) | heatmap |",
        "|---|---|---|",
    ]
    for fold, architecture in architectures.items():
        figure = (
            f"[theta]({_link(heatmaps[fold], base)})"
            if fold in heatmaps
            else "-"
        )
        lines.append(f"| {fold} | {' -> '.join(architecture)} | {figure} |")
    wins = search.get("block_wins") or []
    if wins:
        overall = [candidates[int(np.argmax(row))] for row in wins]
        lines.append(
            f"| overall (most wins per layer) | {' -> '.join(overall)} | |"
        )
        lines += [
            "",
            "| layer | " + " | ".join(candidates) + " |",
            "|---|" + "---|" * len(candidates),
        ]
        lines += [
            f"| {index + 1} | " + " | ".join(str(v) for v in row) + " |"
            for index, row in enumerate(wins)
        ]
        first_ffn = sum(
            1
            for architecture in architectures.values()
            if architecture and architecture[0] == "ffn"
        )
        lines += [
            "",
            f"First layer `ffn` in {first_ffn} of {len(architectures)} searches "
            "(the BAS paper finds `ffn` first every time).",
        ]
    tied = {
        fold: layers
        for fold, layers in (search.get("ties") or {}).items()
        if layers
    }
    if tied:
        lines += [
            "",
            "Ties in theta (broken towards the first candidate): "
            + ", ".join(
                f"{fold} layers {[layer + 1 for layer in layers]}"
                for fold, layers in tied.items()
            ),
        ]
    return lines + theta_decision_lines(search)


def build_report(paths, out=None, figures_folder=None, allow_mixed=False):
    """Collect finished runs into the papers' tables, as Markdown.

    Arguments
    ---------
    paths : list of str
        Run output folders or ``results.json`` files.
    out : str, optional
        Where the report will be written: links are made relative to its folder.
    figures_folder : str, optional
        Where to re-plot the confusion matrices and copy the theta heatmaps; without it the
        report links the figures inside the run folders.
    allow_mixed : bool
        Put runs of different protocols in the tables, marked (see :func:`collect_runs`).

    Returns
    -------
    str
        The Markdown report.
    """
    runs, differences = collect_runs(paths, allow_mixed=allow_mixed)
    base = os.path.dirname(os.path.abspath(out)) if out else os.getcwd()
    figures = write_figures(runs, figures_folder)
    lines = [
        "# Speech emotion recognition: results",
        "",
        f"{len(runs)} run{'s' if len(runs) > 1 else ''}. Scores are the mean ± std over the test folds "
        "(one split: no std); the paper's number is in parentheses where the row and column match "
        "its tables. The papers' protocols may differ from ours (the Vesper reference code selects "
        "the checkpoint on the test set of IEMOCAP and CREMA-D), see each run's selection below.",
    ]

    columns, rows = bas_table(runs)
    lines += ["", "## BAS Table 1 layout (WA / UA in %, WF1 on MELD)", ""]
    lines += markdown_table(["features", "model"], rows, columns, digits=2)

    superb_runs = [run for run in runs if run.model == SUPERB]
    if superb_runs:
        columns, rows = vesper_table(runs)
        if rows:
            lines += [
                "",
                "## Vesper Table III layout (SUPERB classifier on the weighted sum of layers)",
                "",
            ]
            lines += markdown_table(["upstream"], rows, columns, digits=3)
        if any(run.classifier_input != "weighted" for run in superb_runs):
            columns, rows = vesper_table(runs, by_input=True)
            lines += [
                "",
                "## Vesper Table VIII layout (classifier input: weighted sum of layers or one layer)",
                "",
            ]
            lines += markdown_table(
                ["upstream", "input"], rows, columns, digits=3
            )

    if any(run.model in TABLE4_MODELS for run in runs):
        columns, rows = vesper_table4(runs)
        lines += [
            "",
            "## Vesper Table IV layout (SER-specific downstream models)",
            "",
        ]
        lines += markdown_table(
            ["dataset", "upstream"], rows, columns, digits=3
        )

    lines += [
        "",
        "## Runs",
        "",
        "| run | dataset | upstream | model | folds | selection | crop (s) | WA | UA | WF1 | confusion |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, entry in zip(runs, figures):
        selection = run.results["selection"]
        scores = [
            f"{run.results['mean'][m]:.4f} ± {run.results['std'][m]:.4f}"
            for m in METRIC_NAMES
        ]
        confusion = (
            f"[png]({_link(entry['confusion'], base)})"
            if entry["confusion"]
            else "-"
        )
        lines.append(
            f"| [{_link(run.folder, base)}]({_link(run.path, base)}) | {run.dataset} | {run.upstream} | "
            f"{run.model_label} | {len(run.results['folds'])} | {selection.get('set')} set, {selection.get('metric')} "
            f"| {run.protocol['crop_seconds']} | "
            + " | ".join(scores)
            + f" | {confusion} |"
        )
    if differences:
        lines += [
            "",
            "Runs of another protocol (kept with --allow_mixed, not comparable with the others):",
            "",
        ]
        lines += [
            f"- †{number} {runs[index].title}: " + "; ".join(differences[index])
            for number, index in enumerate(sorted(differences), start=1)
        ]

    searched = [
        (run, entry)
        for run, entry in zip(runs, figures)
        if run.results.get("search")
    ]
    if searched:
        lines += ["", "## Architectures found by the BAS searches", ""]
        for run, entry in searched:
            lines += search_summary(run, entry["heatmaps"], base) + [""]
        lines.pop()

    lines += [
        "",
        "## t-SNE of utterance representations (Vesper Fig. 6)",
        "",
        "    python -m ser_modules.tsne --csv MANIFEST.csv --data_root CORPUS "
        "--ssl_source MODEL_DIR --layer last --out tsne.png",
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    """Command line: ``python -m ser_modules.reports RUN... [--out] [--figures] [--allow_mixed]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ser_modules.reports",
        description="Collect finished runs (output folders or results.json files) into the papers' tables.",
    )
    parser.add_argument(
        "runs", nargs="+", help="run output folders or their results.json files"
    )
    parser.add_argument(
        "--out", help="Markdown file to write (default: print the report)"
    )
    parser.add_argument(
        "--figures", help="folder for the confusion matrices and theta heatmaps"
    )
    parser.add_argument(
        "--allow_mixed",
        action="store_true",
        help="keep runs of different protocols in the tables, marked with a dagger",
    )
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.runs,
            out=args.out,
            figures_folder=args.figures,
            allow_mixed=args.allow_mixed,
        )
        if args.out:
            from ser_modules.manifest import atomic_write_text

            atomic_write_text(args.out, report)
            print(f"Report: {args.out}")
        else:
            print(report, end="")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: cannot write the report or its figures: {error}",
            file=sys.stderr,
        )
        return 2
    except Exception as error:  # noqa: BLE001  (a report must end with a message, not a traceback)
        print(
            f"error: unexpected {type(error).__name__} while reporting {args.runs}: {error}. "
            "Check that every path is a run folder of a ser_modules recipe.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
