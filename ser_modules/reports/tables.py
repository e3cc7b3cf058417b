"""Tables over many finished runs, in the papers' layouts, and the command that writes them::

    python -m ser_modules.reports RUN_DIR_OR_RESULTS_JSON... [--out report.md] [--figures DIR] [--allow_mixed]

The report holds the BAS Table 1 layout (rows = upstream x downstream model, WA / UA on
the fold datasets, WF1 on MELD), the Vesper Table III layout (rows = upstream, SUPERB
classifier, WA / UA / WF1 per dataset) and, when last-layer runs are given, its Table VIII
variant (weighted sum of layers vs one layer), and the Table IV layout of the SER-specific
downstream models; the paper's number (:mod:`ser_modules.reports.papers`) stands next to
ours wherever the row and column match. Then every run with its protocol, the
architectures found by the BAS searches, and links to the figures (confusion matrices
re-plotted into ``--figures``, the searches' theta heatmaps copied there). The t-SNE of
utterance representations (Vesper Fig. 6) comes from ``python -m ser_modules.tsne``.

Runs are read by :mod:`ser_modules.reports.runs`: from what their ``results.json`` records.
"""

import argparse
import collections
import os
import re
import shutil
import sys

import numpy as np

from ser_modules.metrics import METRIC_NAMES
from ser_modules.reports.papers import (
    BAS_TABLE1,
    SUPERB,
    TABLE4_MODELS,
    VESPER_TABLE4,
    VESPER_TABLE8,
    dataset_order,
    model_order,
    upstream_order,
)
from ser_modules.reports.run_report import (
    plot_confusion_matrix,
    theta_decision_lines,
)
from ser_modules.reports.runs import ReportError, collect_runs


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
    datasets = dataset_order({run.dataset for run in runs})
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
            upstream_order(r.upstream),
            model_order(r.model),
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
    datasets = dataset_order({run.dataset for run in chosen})
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
            upstream_order(r.upstream),
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
            dataset_order({run.dataset for run in chosen})
        )
    }
    ordered = sorted(
        chosen,
        key=lambda r: (
            dataset_rank[r.dataset],
            upstream_order(r.upstream),
            r.variant,
            r.classifier_input,
        ),
    )
    rows = {}
    for run in ordered:
        upstream = run.upstream
        if run.classifier_input != "weighted" and not run.feature_upstream:
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
