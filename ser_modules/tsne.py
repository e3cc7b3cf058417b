"""t-SNE of utterance representations coloured by emotion (Vesper paper, Fig. 6).

Every utterance of a manifest goes through a frozen upstream (its first ``crop_seconds``, as
in training), one layer is mean-pooled over the valid frames, and scikit-learn's t-SNE maps
the pooled vectors to two dimensions::

    python -m ser_modules.tsne --csv MANIFEST.csv --data_root DIR \
        (--ssl_source MODEL_DIR | --fbank) [--layer last|INDEX] [--crop_seconds 6.5] --out tsne.png

Writes the scatter plot (one colour per class of the ``emo`` column, with a legend) and the
2-D coordinates as ``ID,label,x,y`` (``--coordinates``, by default the PNG's name with
``.csv``). The paper plots the last layer of each model on IEMOCAP.
"""

import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ser_modules.audio import (  # noqa: E402  # noqa: E402
    AudioError,
    WaveformDataset,
    collate_waveforms,
    seconds_to_samples,
)
from ser_modules.downstream.models import masked_mean_pool  # noqa: E402
from ser_modules.manifest import (  # noqa: E402
    atomic_write_text,
    read_csv,
    resolve_path,
)
from ser_modules.upstreams import build_upstream  # noqa: E402

# The filterbanks of the Fbank recipes (hparams/*_fbank.yaml): no per-utterance
# normalisation (it would erase the loudness cue), 20 ms hop.
FBANK_OPTIONS = {"normalize": False, "hop_length": 20}


def parse_layer(text):
    """``"last"`` or a hidden-state index (0 = CNN/projection output, k = layer k)."""
    if isinstance(text, int) or text == "last":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"--layer must be 'last' or a hidden-state index (0, 1, ...), got {text!r}."
        ) from None


def tsne_upstream(ssl_source=None, layer="last"):
    """The frozen upstream of a t-SNE: :func:`ser_modules.upstreams.build_upstream` with
    only the chosen layer.

    Arguments
    ---------
    ssl_source : str, optional
        A local Hugging Face model folder (WavLM, HuBERT, Vesper export; its kind is read
        from its ``config.json``); ``None`` for log-Mel filterbanks as in the Fbank recipes
        (:data:`FBANK_OPTIONS`).
    layer : str or int
        ``"last"`` or a hidden-state index; Fbank has the single layer 0.

    Returns
    -------
    ser_modules.upstreams.Upstream
        With ``num_layers == 1``.
    """
    layers = "last" if layer == "last" else [layer]
    if ssl_source is None:
        return build_upstream("fbank", layers=layers, **FBANK_OPTIONS)
    return build_upstream("auto", ssl_source, layers=layers)


def read_labelled_manifest(csv_path, data_root, label_column="emo"):
    """``(ids, wav paths, labels)`` of a SpeechBrain manifest, ``$data_root`` resolved.

    Raises
    ------
    ValueError
        Naming the manifest: missing columns, no rows, or an unresolvable path.
    """
    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"The manifest {csv_path} has no utterances.")
    missing = [
        column
        for column in ("ID", "wav", label_column)
        if column not in rows[0]
    ]
    if missing:
        raise ValueError(
            f"The manifest {csv_path} lacks the columns {missing} (it has {sorted(rows[0])}): "
            "give a manifest written by a recipe's preparation, or --label_column."
        )
    replacements = {"data_root": data_root}
    ids = [row["ID"] for row in rows]
    paths = [resolve_path(row["wav"], replacements, row["ID"]) for row in rows]
    labels = [row[label_column] for row in rows]
    return ids, paths, labels


@torch.no_grad()
def pooled_representations(
    upstream, wav_paths, crop_seconds=6.5, batch_size=8, device="cpu"
):
    """Mean over the valid frames of the upstream's (single selected) layer, per utterance.

    Arguments
    ---------
    upstream : ser_modules.upstreams.Upstream
        Returns one layer (``num_layers == 1``).
    wav_paths : list of str
        Audio files.
    crop_seconds : float or None
        Keep the first seconds of each utterance (``None`` or ``<= 0``: all of it).
    batch_size : int
        Utterances per upstream call (padding never reaches the result).
    device : str
        Where the upstream runs.

    Returns
    -------
    numpy.ndarray
        ``(N, D)`` float32, in the order of ``wav_paths``.
    """
    if upstream.num_layers != 1:
        raise ValueError(
            f"The upstream returns {upstream.num_layers} layers: select one."
        )
    upstream = upstream.to(device)
    dataset = WaveformDataset(
        [(str(index), path) for index, path in enumerate(wav_paths)],
        seconds_to_samples(crop_seconds, upstream.sample_rate),
        "first",
        upstream.sample_rate,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_waveforms
    )
    pooled = []
    for _, wavs, wav_lens in loader:
        feats, feat_lens = upstream(
            wavs.to(device), wav_lens.to(device)
        )  # (B, 1, T', D)
        pooled.append(
            masked_mean_pool(feats[:, 0].float(), feat_lens).cpu()
        )  # (B, D)
    return torch.cat(pooled).numpy()


def tsne_coordinates(vectors, perplexity=30.0, seed=0):
    """2-D t-SNE embedding ``(N, 2)`` of ``(N, D)`` vectors.

    The perplexity (an effective number of neighbours) is clipped to ``(N - 1) / 3`` (at
    least 1), so a handful of utterances still gives a map: scikit-learn requires it to be
    below N, and a perplexity near N makes every point a neighbour of every other.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.shape[0] < 2:
        raise ValueError(
            f"t-SNE needs at least 2 utterances, got {vectors.shape[0]}."
        )
    from sklearn.manifold import TSNE

    perplexity = max(1.0, min(float(perplexity), (vectors.shape[0] - 1) / 3.0))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(vectors)


def plot_tsne(coordinates, labels, path, title=""):
    """Scatter plot of the 2-D points, one colour per class, legend with class counts."""
    coordinates = np.asarray(coordinates)
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    figure, axis = plt.subplots(figsize=(6.5, 6.0))
    for index, name in enumerate(classes):
        chosen = labels == name
        axis.scatter(
            coordinates[chosen, 0],
            coordinates[chosen, 1],
            s=14,
            alpha=0.8,
            color=colours(index % colours.N),
            label=f"{name} ({int(chosen.sum())})",
        )
    axis.set_xlabel("t-SNE 1")
    axis.set_ylabel("t-SNE 2")
    # t-SNE axes have no units: the ticks would only suggest a scale that does not exist.
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(
        title="emotion",
        loc="best",
        fontsize=9,
        markerscale=1.5,
        framealpha=0.85,
    )
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_coordinates(path, ids, labels, coordinates):
    """Save ``ID,label,x,y`` rows (atomically)."""
    lines = ["ID,label,x,y"]
    for utt_id, label, (x, y) in zip(
        ids, labels, np.asarray(coordinates).tolist()
    ):
        lines.append(
            ",".join(
                _csv_field(value)
                for value in (utt_id, label, f"{x:.6f}", f"{y:.6f}")
            )
        )
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _csv_field(value):
    if any(character in value for character in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def read_coordinates(path):
    """Rows of :func:`write_coordinates`: ``[{"ID", "label", "x", "y"}]`` (x, y as floats)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {**row, "x": float(row["x"]), "y": float(row["y"])}
            for row in csv.DictReader(handle)
        ]


def run_tsne(
    csv_path,
    data_root,
    out,
    ssl_source=None,
    layer="last",
    crop_seconds=6.5,
    label_column="emo",
    perplexity=30.0,
    seed=0,
    max_utterances=None,
    batch_size=8,
    device="cpu",
    coordinates_path=None,
    title=None,
):
    """Pool, embed and plot the utterances of a manifest (see the module docstring).

    Arguments
    ---------
    csv_path : str
        SpeechBrain manifest with ``ID``, ``wav`` and the label column.
    data_root : str
        Replaces ``$data_root`` in the ``wav`` column.
    out : str
        PNG to write.
    ssl_source : str, optional
        Local Hugging Face model folder; ``None`` for log-Mel filterbanks.
    layer : str or int
        ``"last"`` or a hidden-state index.
    crop_seconds : float
        First seconds of each utterance (6.5 s: the IEMOCAP crop of both papers).
    max_utterances : int, optional
        Plot a random subset of this size (drawn with ``seed``), in manifest order.
    coordinates_path : str, optional
        CSV of the coordinates; default: ``out`` with ``.csv``.

    Returns
    -------
    dict
        ``ids``, ``labels``, ``coordinates`` ``(N, 2)``, ``png`` and ``csv`` paths.
    """
    layer = parse_layer(layer)
    ids, paths, labels = read_labelled_manifest(
        csv_path, data_root, label_column
    )
    if max_utterances and len(ids) > max_utterances:
        keep = np.sort(
            np.random.default_rng(seed).choice(
                len(ids), size=max_utterances, replace=False
            )
        )
        ids, paths, labels = (
            [values[i] for i in keep] for values in (ids, paths, labels)
        )
    upstream = tsne_upstream(ssl_source, layer)
    vectors = pooled_representations(
        upstream, paths, crop_seconds, batch_size, device
    )
    coordinates = tsne_coordinates(vectors, perplexity, seed)
    if title is None:
        name = (
            "log-Mel filterbanks"
            if ssl_source is None
            else os.path.basename(os.path.normpath(ssl_source))
        )
        layer_name = (
            ""
            if ssl_source is None
            else (" last layer" if layer == "last" else f" layer {layer}")
        )
        title = (
            f"t-SNE of {name}{layer_name}, mean-pooled over the first {crop_seconds:g} s\n"
            f"{len(ids)} utterances of {os.path.basename(csv_path)}"
        )
    plot_tsne(coordinates, labels, out, title)
    coordinates_path = coordinates_path or os.path.splitext(out)[0] + ".csv"
    write_coordinates(coordinates_path, ids, labels, coordinates)
    return {
        "ids": ids,
        "labels": labels,
        "coordinates": coordinates,
        "png": out,
        "csv": coordinates_path,
    }


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m ser_modules.tsne", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--csv", required=True, help="SpeechBrain manifest (ID, wav, emo, ...)"
    )
    parser.add_argument(
        "--data_root",
        required=True,
        help="replaces $data_root in the wav column",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ssl_source",
        help="local Hugging Face model folder (WavLM, HuBERT, Vesper export)",
    )
    source.add_argument(
        "--fbank",
        action="store_true",
        help="log-Mel filterbanks instead of a model",
    )
    parser.add_argument(
        "--layer",
        default="last",
        help="'last' or a hidden-state index (default: last)",
    )
    parser.add_argument("--crop_seconds", type=float, default=6.5)
    parser.add_argument("--label_column", default="emo")
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--coordinates",
        default=None,
        help="CSV of the coordinates (default: OUT with .csv)",
    )
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        result = run_tsne(
            args.csv,
            args.data_root,
            args.out,
            ssl_source=args.ssl_source,
            layer=args.layer,
            crop_seconds=args.crop_seconds,
            label_column=args.label_column,
            perplexity=args.perplexity,
            seed=args.seed,
            max_utterances=args.max_utterances,
            batch_size=args.batch_size,
            device=args.device,
            coordinates_path=args.coordinates,
            title=args.title,
        )
    except (AudioError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"t-SNE of {len(result['ids'])} utterances: {result['png']} (coordinates: {result['csv']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
