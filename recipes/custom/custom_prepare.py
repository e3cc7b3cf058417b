"""Prepare any labelled emotion corpus (your own data, RAVDESS, EmoDB, URDU ...) for SER.

Two ways to describe the corpus:

* a labels CSV (``--labels_csv``) with at least the columns ``path`` (relative to
  ``data_folder``), ``emotion`` and ``speaker``; every other column is kept in the manifests;
* a folder tree ``<data_folder>/<emotion>/**/<file>.wav|flac|ogg|...``: the top folder is
  the emotion; the speaker is the first group of ``--speaker_regex`` searched in the file
  name, by default the parent folder when the file sits in a sub-folder of the emotion
  folder (``angry/spk03/001.wav``), else the file-name prefix before the first ``_``
  (``angry/spk03_001.wav``).

Labels are lower-cased. Protocols (``--split``):

* ``speaker_kfold`` (default): K speaker-disjoint, label-stratified folds written to
  ``foldK/{train,valid,test}.csv``; by default (``--valid_split=speaker``) validation is a
  group of whole training speakers (about ``valid_fraction`` = 20 % of the training clips,
  label-stratified as far as the speakers allow), so that it ranks models and checkpoints
  by how they do on unseen speakers, as the test fold does; ``--valid_split=utterance``
  (the former default) draws a label-stratified 10 % of the training speakers' own clips.
  Either way the test folds are the same (they depend only on the corpus, K and the seed);
* ``stratified``: label-stratified random split of the utterances (speakers shared);
  validation is a label-stratified share of the training utterances;
* ``speaker_holdout``: a share of the speakers held out for test and another share of the
  training speakers for validation.

Unreadable audio files (and tree files without an emotion folder or speaker) are listed in
``skipped_files.txt``, counted and skipped. IDs are the relative paths without extension,
with ``/`` replaced by ``-``.

Usage::

    python recipes/custom/custom_prepare.py --data_folder=/path/to/urdu \\
        --save_folder=results/urdu/prepared --labels_csv=labels.csv
"""

import collections
import csv
import hashlib
import logging
import os
import re

from ser_modules.audio import AudioError, audio_info
from ser_modules.manifest import (
    atomic_write_text,
    check_utf8,
    invalidate_preparation,
    mark_preparation_done,
    preparation_cli,
    skip_preparation,
    to_data_root_path,
    write_csv,
)
from ser_modules.splits import (
    draw_speaker_validation,
    draw_validation,
    speaker_holdout_split,
    speaker_kfold,
    stratified_split,
)

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")
PROTOCOLS = ("speaker_kfold", "stratified", "speaker_holdout")
REQUIRED_COLUMNS = ("path", "emotion", "speaker")
MANIFEST_COLUMNS = ["ID", "duration", "wav", "emo", "spk_id"]
SPLITS = ("train", "valid", "test")
SKIPPED_FILE = "skipped_files.txt"


def read_labels_csv(data_folder, labels_csv):
    """Read ``path,emotion,speaker[,...]`` rows of a labels CSV.

    Arguments
    ---------
    data_folder : str
        Corpus root; the ``path`` column is relative to it.
    labels_csv : str
        The CSV file.

    Returns
    -------
    entries : list of dict
        ``{"path": absolute path, "emo": lower-cased label, "spk_id": speaker, <extras>}``.
    extra_columns : list of str
        The CSV's other columns, in file order.
    """
    check_utf8(
        labels_csv
    )  # a latin-1 file: an error naming it, not a bare UnicodeDecodeError
    with open(labels_csv, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [
            column for column in REQUIRED_COLUMNS if column not in columns
        ]
        if missing:
            raise ValueError(
                f"{labels_csv} lacks the column(s) {missing} (found {columns}): a labels CSV needs "
                "path (relative to --data_folder), emotion and speaker."
            )
        extra_columns = [
            column for column in columns if column not in REQUIRED_COLUMNS
        ]
        clashing = [
            column for column in extra_columns if column in MANIFEST_COLUMNS
        ]
        if clashing:
            raise ValueError(
                f"{labels_csv} has column(s) {clashing} that the manifest computes itself: "
                "rename or remove them."
            )
        entries, first_line = [], {}
        for line, row in enumerate(reader, start=2):
            values = {
                column: (row[column] or "").strip()
                for column in REQUIRED_COLUMNS
            }
            empty = [column for column, value in values.items() if not value]
            if empty:
                raise ValueError(
                    f"{labels_csv}, line {line}: empty {empty}; fill or remove the line."
                )
            path = os.path.normpath(os.path.join(data_folder, values["path"]))
            if path in first_line:
                raise ValueError(
                    f"{labels_csv}, line {line}: {values['path']} is already listed on line "
                    f"{first_line[path]}; keep one line per file."
                )
            first_line[path] = line
            entry = {
                "path": path,
                "emo": values["emotion"].lower(),
                "spk_id": values["speaker"],
            }
            entry.update({column: row[column] for column in extra_columns})
            entries.append(entry)
    return entries, extra_columns


def default_speaker(relative_to_emotion):
    """Speaker of a tree file: its parent folder when nested, else the name before ``_``."""
    parts = relative_to_emotion.split("/")
    if len(parts) > 1:
        return parts[-2]
    stem = os.path.splitext(parts[-1])[0]
    return stem.split("_")[0] if "_" in stem else None


def scan_tree(data_folder, speaker_regex=""):
    """Find ``<data_folder>/<emotion>/**/<audio file>`` with emotion and speaker.

    Hidden files and folders (``.name``) are ignored.

    Returns
    -------
    entries : list of dict
        ``{"path": absolute path, "emo": lower-cased folder name, "spk_id": speaker}``.
    skipped : list of (str, str)
        ``($data_root path, reason)`` of audio files without an emotion folder or speaker.
    """
    pattern = None
    if speaker_regex:
        pattern = re.compile(speaker_regex)
        if pattern.groups < 1:
            raise ValueError(
                f"--speaker_regex {speaker_regex!r} needs a group, e.g. '^(spk\\d+)_'."
            )
    entries, skipped = [], []
    for root, folders, files in os.walk(data_folder):
        folders[:] = sorted(
            folder for folder in folders if not folder.startswith(".")
        )
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(
                AUDIO_EXTENSIONS
            ):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, data_folder).replace(os.sep, "/")
            emotion, _, within_emotion = relative.partition("/")
            if not within_emotion:
                skipped.append(
                    (
                        to_data_root_path(path, data_folder),
                        "not inside an <emotion>/ folder",
                    )
                )
                continue
            if pattern is not None:
                match = pattern.search(name)
                speaker = match.group(1) if match else None
                reason = (
                    f"--speaker_regex {speaker_regex!r} does not match the name"
                )
            else:
                speaker = default_speaker(within_emotion)
                reason = "no speaker: the name has no '_' prefix (use --speaker_regex)"
            if not speaker:
                skipped.append((to_data_root_path(path, data_folder), reason))
                continue
            entries.append(
                {"path": path, "emo": emotion.lower(), "spk_id": speaker}
            )
    return entries, skipped


def to_manifest_rows(entries, data_folder):
    """Add ID, duration and ``$data_root`` path to each entry; skip unreadable audio.

    Returns
    -------
    rows : list of dict
        Manifest rows sorted by ID.
    skipped : list of (str, str)
        ``($data_root path, reason)`` of unreadable files.
    """
    rows, skipped, ids = [], [], {}
    for entry in entries:
        wav = to_data_root_path(entry["path"], data_folder)
        try:
            duration = audio_info(entry["path"])[0]
        except AudioError as error:
            logger.warning("Skipping an unreadable file: %s", error)
            reason = (
                "missing file"
                if not os.path.exists(entry["path"])
                else "unreadable or empty audio"
            )
            skipped.append((wav, reason))
            continue
        identifier = os.path.splitext(wav[len("$data_root/") :])[0].replace(
            "/", "-"
        )
        if identifier in ids:
            raise ValueError(
                f"{ids[identifier]} and {wav} both give the utterance ID {identifier}: "
                "rename one of them."
            )
        ids[identifier] = wav
        row = {key: value for key, value in entry.items() if key != "path"}
        rows.append({"ID": identifier, "duration": duration, "wav": wav, **row})
    rows.sort(key=lambda row: row["ID"])
    return rows, skipped


VALID_SPLITS = ("speaker", "utterance")
# Validation share of the training clips when --valid_fraction is not given: a speaker-
# disjoint validation set needs more clips to hold every label (on Urdu, whose speakers
# each act one or two emotions, 10 % of the training speakers leaves labels with 0-2
# clips; 20 % holds 4-6 speakers and every label in every fold).
DEFAULT_VALID_FRACTION = {"speaker": 0.2, "utterance": 0.1}


def split_positions(
    rows,
    split,
    n_folds,
    test_fraction,
    valid_fraction,
    seed,
    valid_split="utterance",
):
    """``{name: {"train", "valid", "test": positions}}`` for the chosen protocol.

    ``valid_split`` (``"speaker"`` or ``"utterance"``) applies to ``speaker_kfold``: whole
    training speakers or a share of their clips for validation. The test positions do not
    depend on it.
    """
    labels = [row["emo"] for row in rows]
    speakers = [row["spk_id"] for row in rows]
    if split == "speaker_kfold":
        folds = {}
        for number, (train, test) in enumerate(
            speaker_kfold(labels, speakers, n_folds, seed), start=1
        ):
            if valid_split == "speaker":
                train, valid = draw_speaker_validation(
                    train, labels, speakers, valid_fraction, seed
                )
            else:
                train, valid = draw_validation(
                    train, labels, valid_fraction, seed
                )
            folds[f"fold{number}"] = {
                "train": train,
                "valid": valid,
                "test": test,
            }
        return folds
    if split == "stratified":
        train, test = stratified_split(labels, test_fraction, seed)
        train, valid = draw_validation(train, labels, valid_fraction, seed)
    else:
        train, test = speaker_holdout_split(speakers, test_fraction, seed)
        train, valid = draw_validation(
            train, labels, valid_fraction, seed, speakers=speakers
        )
    return {"main": {"train": train, "valid": valid, "test": test}}


def manifest_paths(save_folder, split, n_folds):
    """``{fold or "main": {split: csv path}}``: ``foldK/`` sub-folders for k-fold only."""
    if split == "speaker_kfold":
        folders = {
            f"fold{number}": f"fold{number}" for number in range(1, n_folds + 1)
        }
    else:
        folders = {"main": ""}
    return {
        name: {
            part: os.path.join(save_folder, folder, f"{part}.csv")
            for part in SPLITS
        }
        for name, folder in folders.items()
    }


def file_digest(path):
    """SHA-256 of a file, so that an edited labels CSV redoes the preparation."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def prepare_custom(
    data_folder,
    save_folder,
    labels_csv="",
    speaker_regex="",
    split="speaker_kfold",
    n_folds=5,
    test_fraction=0.2,
    valid_fraction=None,
    seed=1234,
    skip_prep=False,
    valid_split="speaker",
):
    """Write manifests of a labelled emotion corpus described by a CSV or a folder tree.

    Arguments
    ---------
    data_folder : str
        Corpus root.
    save_folder : str
        Where the manifests and ``skipped_files.txt`` are written.
    labels_csv : str
        CSV with columns path, emotion, speaker (+ extras kept); a relative name is taken
        inside ``data_folder``. Empty: read the ``<emotion>/**/<file>`` tree.
    speaker_regex : str
        Tree layout only: regex whose first group is the speaker in the file name.
    split : str
        ``"speaker_kfold"``, ``"stratified"`` or ``"speaker_holdout"``.
    n_folds : int
        Number of folds of ``speaker_kfold``.
    test_fraction : float
        Share of the utterances (``stratified``) or speakers (``speaker_holdout``) for test.
    valid_fraction : float, optional
        Share of the training utterances (speakers for ``speaker_holdout``) for validation;
        ``None``: 0.2 for a speaker-disjoint validation set of ``speaker_kfold``, else 0.1.
    seed : int
        Random state of every draw.
    skip_prep : bool
        Do nothing and return the manifest paths.
    valid_split : str
        ``speaker_kfold`` only: ``"speaker"`` (default) holds out whole training speakers
        for validation, ``"utterance"`` a label-stratified share of their clips (the
        earlier default). The test folds are the same either way.

    Returns
    -------
    dict
        ``{"fold1": {...}, ...}`` for k-fold, else ``{"main": {"train": csv, "valid": csv, "test": csv}}``.
    """
    if split not in PROTOCOLS:
        raise ValueError(f"Unknown split {split!r}: use one of {PROTOCOLS}.")
    if valid_split not in VALID_SPLITS:
        raise ValueError(
            f"Unknown valid_split {valid_split!r}: use one of {VALID_SPLITS}."
        )
    if split != "speaker_kfold":
        valid_split = (
            "utterance"  # the other protocols keep their own validation
        )
    if valid_fraction in (None, "None", "none", ""):
        valid_fraction = DEFAULT_VALID_FRACTION[valid_split]
    try:
        valid_fraction = float(valid_fraction)
    except ValueError as error:
        raise ValueError(
            f"--valid_fraction={valid_fraction!r} is not a number (default: 0.2 for "
            "--valid_split=speaker, else 0.1)"
        ) from error
    data_folder = os.path.abspath(data_folder)
    if labels_csv:
        labels_csv = os.path.join(
            data_folder, labels_csv
        )  # unchanged when already absolute
        if not os.path.isfile(labels_csv):
            raise FileNotFoundError(
                f"Labels CSV {labels_csv} not found: give a path relative to --data_folder or an "
                "absolute one."
            )
    manifests = manifest_paths(save_folder, split, n_folds)
    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    outputs = [
        path for parts in manifests.values() for path in parts.values()
    ] + [skipped_path]
    options = {
        "data_folder": data_folder,
        "labels_csv": labels_csv,
        "labels_csv_sha256": file_digest(labels_csv) if labels_csv else "",
        "speaker_regex": speaker_regex,
        "split": split,
        "n_folds": n_folds,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "valid_split": valid_split,
    }
    if skip_prep:
        return manifests
    if skip_preparation(save_folder, options, outputs):
        logger.info(
            "Manifests in %s are up to date: skipping preparation.", save_folder
        )
        return manifests
    invalidate_preparation(save_folder)

    if labels_csv:
        entries, extra_columns = read_labels_csv(data_folder, labels_csv)
        skipped = []
    else:
        entries, skipped = scan_tree(data_folder, speaker_regex)
        extra_columns = []
    rows, unreadable = to_manifest_rows(entries, data_folder)
    skipped = sorted(skipped + unreadable)
    if not rows:
        raise FileNotFoundError(
            f"No usable audio found in {data_folder} ({len(skipped)} files skipped, see {skipped_path})."
        )
    logger.info(
        "%d utterances, %d speakers, labels %s; %d files skipped.",
        len(rows),
        len({row["spk_id"] for row in rows}),
        dict(sorted(collections.Counter(row["emo"] for row in rows).items())),
        len(skipped),
    )
    atomic_write_text(
        skipped_path, "".join(f"{path}\t{reason}\n" for path, reason in skipped)
    )
    for name, positions in split_positions(
        rows,
        split,
        n_folds,
        test_fraction,
        valid_fraction,
        seed,
        valid_split,
    ).items():
        for part in SPLITS:
            write_csv(
                manifests[name][part],
                [rows[i] for i in positions[part]],
                MANIFEST_COLUMNS + extra_columns,
            )
    mark_preparation_done(save_folder, options, outputs)
    return manifests


if __name__ == "__main__":
    preparation_cli(prepare_custom)
