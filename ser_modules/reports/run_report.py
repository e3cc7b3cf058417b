"""The report of one run, written at its end: ``results.md`` and ``confusion_matrix.png``.

:func:`results_markdown` turns the ``results.json`` of a run into Markdown: what the run
was (from its ``identity``, see :mod:`ser_modules.run_identity`), the per-fold and pooled
WA / UA / WF1, and for a BAS run the architectures its searches found.
:func:`plot_confusion_matrix` draws the pooled confusion matrix.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from ser_modules.metrics import METRIC_NAMES  # noqa: E402


def identity_lines(identity):
    """Markdown lines naming a run's model, upstream, hparams file and code version."""
    model = identity["model"]
    upstream = identity["upstream"]
    settings = ", ".join(
        f"{key}={value}"
        for key, value in model.items()
        if key != "downstream_model"
    )
    shape = (
        f", {upstream['num_hidden_layers']} layers of {upstream['hidden_size']} dims"
        if upstream.get("num_hidden_layers")
        else ""
    )
    source = f", from {upstream['source']}" if upstream.get("source") else ""
    hparams_file = identity["hparams_file"]
    code = identity["code"]
    return [
        f"Model: `{model['downstream_model']}` ({settings}).",
        "",
        f"Upstream: `{upstream['kind']}`{shape}; {upstream['num_representations']} "
        f"representation(s) of {upstream['width']} dims (hidden states "
        f"{upstream['layers_used']}){source}; content sha256 "
        f"{upstream['content_sha256'][:12]}.",
        "",
        f"Hparams file: {hparams_file['name']} (sha256 {hparams_file['sha256'][:12]}); "
        f"seed {identity['seed']}; code {code['package']} "
        f"(sources sha256 {code['sources_sha256'][:12]}, git {code.get('git')}).",
    ]


def results_markdown(results):
    """What the run was, per-fold WA / UA / WF1, their mean +/- std, and the pooled
    scores, as Markdown (``results.md``)."""
    title = f"### {results['dataset']} - {results['hparams_file']}"
    selection = results.get("selection", {})
    lines = [title, ""]
    if "identity" in results:
        lines += identity_lines(results["identity"]) + [""]
    lines += [
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
        lines += restart_lines(
            search, (results.get("selection") or {}).get("metric", "UA")
        )
        lines += theta_decision_lines(search)
    return "\n".join(lines)


def restart_lines(search, metric="UA"):
    """Markdown lines: per split, every search restart, its validation ``metric`` (the
    selection metric that chose among them) and which one was kept."""
    restarts = search.get("restarts") or {}
    if not restarts:
        return []
    lines = [
        "",
        "Search restarts (kept: the best validation score of the last search epoch):",
        "",
        f"| split | restart | seed | architecture | valid {metric} | kept |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in restarts.items():
        for restart in entry["restarts"]:
            kept = "yes" if restart["restart"] == entry["chosen"] else ""
            lines.append(
                f"| {name} | {restart['restart']} | {restart['seed']} | "
                f"{' -> '.join(restart['architecture'])} | "
                f"{restart['valid'].get(metric, float('nan')):.3f} | {kept} |"
            )
    return lines


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
