"""What a BAS search found: derive, store, load, plot and tally block architectures.

After the search, every layer takes the candidate with the largest theta (paper 2.2);
the full ``softmax(theta)`` table is kept next to it as JSON and as a heatmap, and the
architectures found over folds or seeds are tallied per layer (the paper's finding to
reproduce: the first layer is always ``ffn``).
"""

import json
import os
import tempfile

import torch

from ser_modules.downstream.blocks import CANDIDATES


def _theta_and_candidates(source, candidates):
    """``(L, K)`` theta and the candidate names from a super net or a theta tensor."""
    if isinstance(source, torch.Tensor):
        theta = source.detach()
        candidates = tuple(CANDIDATES if candidates is None else candidates)
    else:
        theta = source.architecture_logits()
        candidates = tuple(source.candidates)
    if theta.dim() != 2 or theta.shape[1] != len(candidates):
        raise ValueError(
            f"Theta must have shape (layers, {len(candidates)}) for candidates "
            f"{candidates}, got {tuple(theta.shape)}."
        )
    return theta, candidates


def derive_architecture(source, candidates=None):
    """The architecture with the largest theta in every layer.

    Ties (equal largest thetas, e.g. a layer whose thetas never moved from zero) go to the
    first of the tied candidates in the candidate order, and the layer is reported.

    Arguments
    ---------
    source : BASSuperNet or torch.Tensor
        A super net, or its ``(L, K)`` thetas.
    candidates : sequence of str, optional
        Candidate names of the columns when ``source`` is a tensor
        (default ``("msa_ffn", "msa", "ffn")``); ignored for a super net.

    Returns
    -------
    architecture : list of str
        One block name per layer.
    ties : list of int
        0-based indices of the layers whose choice was a tie.
    """
    theta, candidates = _theta_and_candidates(source, candidates)
    # torch.argmax returns the first maximal index, which is the documented tie-break.
    chosen = torch.argmax(theta, dim=1)  # (L,)
    is_max = theta == theta.max(dim=1, keepdim=True).values  # (L, K)
    ties = [
        layer for layer in range(theta.shape[0]) if int(is_max[layer].sum()) > 1
    ]
    return [candidates[int(index)] for index in chosen], ties


def architecture_probabilities(source, candidates=None):
    """``softmax(theta)`` per layer: the architecture distribution learnt by the search.

    Arguments
    ---------
    source : BASSuperNet or torch.Tensor
        A super net, or its ``(L, K)`` thetas.
    candidates : sequence of str, optional
        Candidate names when ``source`` is a tensor (only checked against its width).

    Returns
    -------
    torch.Tensor
        ``(L, K)``, each row summing to 1.
    """
    theta, _ = _theta_and_candidates(source, candidates)
    return torch.softmax(theta.float(), dim=1)


def save_architecture(
    path, architecture, probabilities, candidates, ties, extra=None
):
    """Writes a search result as JSON, atomically (a crash never leaves half a file).

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.json`` file; its folder is created if needed.
    architecture : list of str
        One block name per layer.
    probabilities : torch.Tensor or list of lists
        ``(L, K)`` ``softmax(theta)`` table.
    candidates : sequence of str
        The K candidate names, in column order.
    ties : list of int
        Layers whose choice was a tie.
    extra : dict or None
        More JSON-serialisable entries (e.g. the search's seed and validation scores);
        they may not replace the four above.
    """
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    if probabilities.shape != (len(architecture), len(candidates)):
        raise ValueError(
            f"Probabilities of shape {tuple(probabilities.shape)} do not match "
            f"{len(architecture)} layers x {len(candidates)} candidates."
        )
    record = {
        "architecture": list(architecture),
        "candidates": list(candidates),
        "probabilities": probabilities.tolist(),
        "ties": [int(layer) for layer in ties],
    }
    clashes = set(extra or {}) & set(record)
    if clashes:
        raise ValueError(f"extra may not replace {sorted(clashes)}.")
    record.update(extra or {})
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # The temporary file sits in the destination folder so os.replace stays atomic.
    with tempfile.NamedTemporaryFile(
        "w", dir=folder, suffix=".tmp", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(record, handle, indent=2)
        temporary = handle.name
    os.replace(temporary, path)


def load_architecture(path):
    """Reads a search result written by ``save_architecture``.

    Arguments
    ---------
    path : str or os.PathLike
        The ``.json`` file.

    Returns
    -------
    dict
        ``architecture`` (list of str), ``candidates`` (list of str), ``probabilities``
        (``(L, K)`` float64 tensor) and ``ties`` (list of int).
    """
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    missing = {"architecture", "candidates", "probabilities", "ties"} - set(
        record
    )
    if missing:
        raise ValueError(
            f"{path} lacks the keys {sorted(missing)}: it was not written by "
            "save_architecture; rerun the search or rewrite the file."
        )
    record["probabilities"] = torch.tensor(
        record["probabilities"], dtype=torch.float64
    )
    return record


def plot_theta_heatmap(
    probabilities, candidates, path, title, dpi=100, trajectory=None
):
    """Saves the ``softmax(theta)`` table as an annotated heatmap PNG, with its trajectory.

    Layers run down the rows (layer 1 at the top), candidates across the columns; every
    cell shows its probability. The figure is ``2.5 + 1.5 K`` by ``1.5 + 0.5 L`` inches.
    With a ``trajectory`` the figure gets one more panel per layer to the right: the
    probability of every candidate per search epoch (lines), the temperature on a second
    axis (dashed), so the PNG shows how the search reached the final table.

    Arguments
    ---------
    probabilities : torch.Tensor
        ``(L, K)`` table, values in [0, 1].
    candidates : sequence of str
        The K column names.
    path : str or os.PathLike
        Destination ``.png`` file; its folder is created if needed.
    title : str
        Figure title (e.g. the upstream, dataset and fold).
    dpi : int
        Resolution: without a trajectory the PNG is ``(2.5 + 1.5 K) * dpi`` pixels wide.
    trajectory : dict, optional
        ``epochs`` (E epoch numbers), ``probabilities`` (``(E, L, K)``) and optionally
        ``temperatures`` (``(E,)``), e.g. from ``bas_search.trajectory_array``.

    Returns
    -------
    str or os.PathLike
        ``path``.
    """
    values = torch.as_tensor(probabilities, dtype=torch.float64).numpy()
    num_layers, num_candidates = values.shape
    if num_candidates != len(candidates):
        raise ValueError(
            f"{num_candidates} probability columns but {len(candidates)} candidates "
            f"{list(candidates)}."
        )
    table_width = 2.5 + 1.5 * num_candidates
    height = 1.5 + 0.5 * num_layers
    if trajectory is not None:
        history = torch.as_tensor(
            trajectory["probabilities"], dtype=torch.float64
        ).numpy()
        if history.ndim != 3 or history.shape[1:] != values.shape:
            raise ValueError(
                f"The trajectory has shape {history.shape}, expected (epochs, {num_layers}, {num_candidates})."
            )
        height = max(height, 2.2 * num_layers)
    # A bare Figure (no pyplot) renders PNGs with the Agg canvas, needs no display and
    # touches no global backend state. Imported here: only the search draws figures.
    from matplotlib.figure import Figure

    figure = Figure(
        figsize=(
            table_width + (6.0 if trajectory is not None else 0.0),
            height,
        ),
        dpi=dpi,
    )
    if trajectory is None:
        axes = figure.add_subplot()
    else:
        grid = figure.add_gridspec(
            num_layers, 2, width_ratios=[table_width, 6.0]
        )
        axes = figure.add_subplot(grid[:, 0])
    image = axes.imshow(
        values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto"
    )
    axes.set_xticks(range(num_candidates), labels=list(candidates))
    axes.set_yticks(
        range(num_layers), labels=[f"layer {l + 1}" for l in range(num_layers)]
    )
    axes.set_xlabel("candidate block")
    axes.set_title(title)
    for layer in range(num_layers):
        for column in range(num_candidates):
            value = values[layer, column]
            # Dark text on the bright end of viridis, light text elsewhere.
            colour = "black" if value > 0.6 else "white"
            axes.text(
                column,
                layer,
                f"{value:.2f}",
                ha="center",
                va="center",
                color=colour,
            )
    figure.colorbar(image, ax=axes, label="softmax(theta)")
    if trajectory is not None:
        epochs = list(trajectory["epochs"])
        temperatures = trajectory.get("temperatures")
        for layer in range(num_layers):
            panel = figure.add_subplot(grid[layer, 1])
            for column, name in enumerate(candidates):
                panel.plot(epochs, history[:, layer, column], label=name)
            panel.set_ylim(0.0, 1.0)
            panel.set_ylabel(f"layer {layer + 1}")
            if temperatures is not None:
                twin = panel.twinx()
                twin.plot(
                    epochs,
                    torch.as_tensor(temperatures).numpy(),
                    "k--",
                    linewidth=0.8,
                )
                twin.set_ylabel("tau (dashed)", fontsize=8)
            if layer == 0:
                panel.set_title("softmax(theta) per search epoch")
                panel.legend(fontsize=7, loc="upper left")
            if layer == num_layers - 1:
                panel.set_xlabel("search epoch")
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def block_win_counts(architectures, candidates=CANDIDATES):
    """How often each candidate won each layer over several searches (folds, seeds).

    Arguments
    ---------
    architectures : list of list of str
        The derived architectures, all with the same number of layers L.
    candidates : sequence of str
        Column order of the table.

    Returns
    -------
    torch.LongTensor
        ``(L, K)``: entry ``[l, k]`` counts the architectures whose layer ``l`` is
        ``candidates[k]``.
    """
    if not architectures:
        raise ValueError("No architectures to count.")
    num_layers = len(architectures[0])
    counts = torch.zeros(num_layers, len(candidates), dtype=torch.long)
    for number, architecture in enumerate(architectures):
        if len(architecture) != num_layers:
            raise ValueError(
                f"Architecture {number} {architecture} has {len(architecture)} layers, "
                f"the first has {num_layers}: count searches of one depth at a time."
            )
        for layer, name in enumerate(architecture):
            if name not in candidates:
                raise ValueError(
                    f"Architecture {number} uses {name!r}, not one of {list(candidates)}."
                )
            counts[layer, list(candidates).index(name)] += 1
    return counts


def format_block_table(table, candidates, value_format="{:.3f}"):
    """Renders a layers x candidates table (probabilities or win counts) as aligned text.

    Arguments
    ---------
    table : torch.Tensor
        ``(L, K)`` values.
    candidates : sequence of str
        The K column names.
    value_format : str
        Format of each value, e.g. ``"{:d}"`` for counts.

    Returns
    -------
    str
        A header line and one line per layer, for logs and reports.
    """
    rows = [["layer", *candidates]]
    for layer, values in enumerate(table.tolist()):
        rows.append(
            [str(layer + 1), *(value_format.format(value) for value in values)]
        )
    widths = [
        max(len(row[column]) for row in rows) for column in range(len(rows[0]))
    ]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths))
        for row in rows
    )
