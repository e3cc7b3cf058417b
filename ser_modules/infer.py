"""Classify audio files with a trained emotion model folder, from the command line.

    python -m ser_modules.infer MODEL_DIR AUDIO... [--output out.json|out.csv]
        [--window_seconds S] [--hop_seconds S] [--device cpu] [--batch_size N]

``MODEL_DIR`` is a model folder (``<output_folder>/<split>/model`` of a training run, see
:mod:`ser_modules.model_folder`). ``AUDIO`` may be files, folders (searched recursively for
wav/flac/mp3/ogg) or ``.txt`` / ``.csv`` lists of paths. A table (file, label,
probabilities) is printed; ``--output`` also writes JSON or CSV. Unreadable files are
reported, skipped and counted; the exit status is 1 when every file failed, 2 when the
model or the arguments are unusable, 0 otherwise.
"""

import argparse
import csv
import json
import logging
import os
import sys

from ser_modules.audio import AudioError

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".json", ".csv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


def parse_arguments(argv):
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m ser_modules.infer",
        description="Speech emotion recognition with a trained model folder.",
    )
    parser.add_argument(
        "model_dir",
        help="model folder (hyperparams.yaml, *.ckpt, label_encoder.txt)",
    )
    parser.add_argument(
        "audio",
        nargs="+",
        help="audio files, folders, or .txt/.csv lists of paths",
    )
    parser.add_argument(
        "--output", help="write the results to this .json or .csv file"
    )
    parser.add_argument(
        "--window_seconds",
        type=float,
        help="window length (default: the training crop)",
    )
    parser.add_argument(
        "--hop_seconds",
        type=float,
        help="step between windows (default: the window length)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--batch_size", type=int, default=8, help="windows per forward pass"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log what SpeechBrain does while loading",
    )
    args = parser.parse_args(argv)
    if args.output and not args.output.lower().endswith(OUTPUT_FORMATS):
        parser.error(
            f"--output must end with {' or '.join(OUTPUT_FORMATS)}, got {args.output}"
        )
    return args


def read_path_list(list_path):
    """Audio paths listed in a ``.txt`` (one per line, ``#`` comments) or ``.csv`` file.

    A CSV's paths are read from its ``path``, ``wav``, ``file`` or ``audio`` column (else
    the first column). Relative paths are taken relative to the list's folder.
    """
    try:
        return _read_path_list(list_path)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The path list {list_path} is not UTF-8 text ({error}): save it as UTF-8."
        ) from error


def _read_path_list(list_path):
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first path.
    with open(list_path, encoding="utf-8-sig", newline="") as handle:
        if list_path.lower().endswith(".csv"):
            rows = list(csv.reader(handle))
            if not rows:
                return []
            header = [name.strip().lower() for name in rows[0]]
            named = [
                header.index(name)
                for name in ("path", "wav", "file", "audio")
                if name in header
            ]
            column = named[0] if named else 0
            body = rows[1:] if named else rows
            paths = [
                row[column].strip()
                for row in body
                if len(row) > column and row[column].strip()
            ]
        else:
            paths = [
                line.strip()
                for line in handle
                if line.strip() and not line.lstrip().startswith("#")
            ]
    base = os.path.dirname(os.path.abspath(list_path))
    return [
        path if os.path.isabs(path) else os.path.join(base, path)
        for path in paths
    ]


def collect_audio_files(inputs):
    """Expand files, folders (recursively: wav/flac/mp3/ogg) and path lists into files.

    A path that does not exist is kept: classifying it reports it as unreadable.

    Raises
    ------
    FileNotFoundError
        When nothing at all was found.
    """
    files = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.lower().endswith(AUDIO_EXTENSIONS)
            )
            if not found:
                logger.warning(
                    "No audio files (%s) under %s",
                    ", ".join(AUDIO_EXTENSIONS),
                    item,
                )
            files.extend(found)
        elif item.lower().endswith((".txt", ".csv")) and os.path.isfile(item):
            files.extend(read_path_list(item))
        else:
            files.append(item)
    if not files:
        raise FileNotFoundError(
            f"No audio files found in {list(inputs)}: give files, folders holding "
            f"{'/'.join(AUDIO_EXTENSIONS)} files, or .txt/.csv lists of paths."
        )
    return files


def format_table(results, failures, labels):
    """A Markdown table: one row per file, failed files with their error."""
    header = ["file", "label", *labels, "windows"]
    rows = [
        [
            r["file"],
            r["label"],
            *(f"{r['probabilities'][label]:.3f}" for label in labels),
            str(len(r["windows"])),
        ]
        for r in results
    ]
    rows += [[f["file"], "FAILED", *([""] * len(labels)), ""] for f in failures]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path, model_dir, results, failures):
    """``{"model", "num_files", "num_failed", "results", "failed"}``."""
    document = {
        "model": os.path.abspath(model_dir),
        "num_files": len(results) + len(failures),
        "num_failed": len(failures),
        "results": results,
        "failed": failures,
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")


def write_csv(path, results, failures, labels):
    """One row per file: file, label, one probability column per class, windows, error."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", *labels, "num_windows", "error"])
        for result in results:
            probabilities = [
                f"{result['probabilities'][label]:.6f}" for label in labels
            ]
            writer.writerow(
                [
                    result["file"],
                    result["label"],
                    *probabilities,
                    len(result["windows"]),
                    "",
                ]
            )
        for failure in failures:
            writer.writerow(
                [
                    failure["file"],
                    "",
                    *([""] * len(labels)),
                    0,
                    failure["error"],
                ]
            )


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # SpeechBrain's loggers log every file fetch at INFO: shown with --verbose only.
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level or logging.WARNING, handler.level))
    try:
        return classify_command(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def classify_command(args):
    """Load the model, classify every file, print and write the results; the exit status."""
    from ser_modules.inference import EmotionClassifier, classify_files
    from ser_modules.model_folder import ModelFolderError

    try:
        files = collect_audio_files(args.audio)
        classifier = EmotionClassifier.from_hparams(
            source=args.model_dir,
            savedir=args.model_dir,
            run_opts={"device": args.device},
        )
        results, failures = classify_files(
            classifier,
            files,
            args.window_seconds,
            args.hop_seconds,
            batch_size=args.batch_size,
        )
    except (
        ModelFolderError,
        FileNotFoundError,
        AudioError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        format_table(results, failures, classifier.labels)
    )  # failures were logged as warnings
    print(
        f"{len(results)} of {len(files)} files classified, {len(failures)} failed."
    )
    if args.output:
        if args.output.lower().endswith(".json"):
            write_json(args.output, args.model_dir, results, failures)
        else:
            write_csv(args.output, results, failures, classifier.labels)
        print(f"Results: {args.output}")
    return 1 if not results else 0


if __name__ == "__main__":
    sys.exit(main())
