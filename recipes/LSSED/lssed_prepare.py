"""Prepare unlabeled speech for Vesper pretraining: LSSED, any folder of audio, or a CSV list.

Vesper is pretrained on the audio of LSSED (Fan et al., ICASSP 2021: 147,025 English
utterances, about 206 h) without its labels. LSSED is distributed on request only, so this
preparation accepts any of

* a folder tree of audio files (nested folders, mixed formats): every file below
  ``data_folder`` whose extension is in ``extensions`` (case-insensitive); files and
  folders whose name starts with ``.`` (e.g. macOS ``._*`` files) and other extensions are
  ignored;
* a CSV list (``file_list``) with one of these columns, looked up in this order:
  ``path`` or ``wav`` (a path relative to ``data_folder``, or ``$data_root/...``, or an
  absolute path inside ``data_folder``), or ``name`` (a path without extension, completed
  with the first extension of ``extensions`` that exists). The ``name`` column is the
  layout of the LSSED metadata used by the Vesper reference code
  (``metadata_english_all.csv``: ``name`` -> ``<wav folder>/<name>.wav``); its other
  columns (labels) are ignored. The official release's own metadata format is not public,
  so any other format must first be turned into such a list.

Outputs ``<save_folder>/train.csv`` and a small seeded random ``<save_folder>/valid.csv``
(``min(valid_count, max(1, round(valid_fraction * N)))`` files) with the columns
``ID,duration,wav``: ``ID`` is the path relative to ``data_folder`` without its extension,
folders joined by ``__`` (unique when stems repeat in different folders; a clash, such as
``a.wav`` next to ``a.flac``, is an error naming both files), ``duration`` comes from the
file header and ``wav`` is ``$data_root/<relative path>``.

Durations are read from the headers with libsndfile (``soundfile.info``, in a thread pool),
the same library that reads the audio during training, so every listed file is readable
there. Files that cannot be opened, hold no samples, are shorter than ``min_duration`` or
longer than ``max_duration`` (when > 0) are listed with the reason in
``<save_folder>/skipped_files.txt``, counted in the log and left out. Non-finite samples
are only detected when training reads the file (``ser_modules.audio.load_audio``).

The preparation is redone when an option, the set of files found or the content of the
file list changes.

Usage::

    python recipes/LSSED/lssed_prepare.py --data_folder=/data/LSSED --save_folder=prepared/LSSED
    python recipes/LSSED/lssed_prepare.py --data_folder=/data/speech --save_folder=prepared/speech \\
        --file_list=/data/speech/list.csv
"""

import concurrent.futures
import csv
import hashlib
import logging
import os

import numpy as np
import soundfile
from tqdm import tqdm

from ser_modules.audio import AudioError, audio_info
from ser_modules.manifest import (
    DATA_ROOT,
    atomic_write_text,
    invalidate_preparation,
    mark_preparation_done,
    preparation_cli,
    skip_preparation,
    to_data_root_path,
    write_csv,
)

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["ID", "duration", "wav"]
PATH_COLUMNS = ("path", "wav")
NAME_COLUMN = "name"
SKIPPED_FILE = "skipped_files.txt"


def prepare_lssed(
    data_folder,
    save_folder,
    file_list="",
    extensions="wav,flac,mp3,ogg",
    valid_count=200,
    valid_fraction=0.01,
    min_duration=0.5,
    max_duration=0.0,
    seed=1234,
    num_workers=8,
    skip_prep=False,
):
    """Write the unlabeled pretraining manifests of the audio below ``data_folder``.

    Arguments
    ---------
    data_folder : str
        Root of the audio files (``$data_root`` in the manifests).
    save_folder : str
        Where ``train.csv``, ``valid.csv`` and ``skipped_files.txt`` are written.
    file_list : str
        Optional CSV listing the files (see the module docstring); a relative path is
        looked up in the current folder, then in ``data_folder``. Empty: scan the folder.
    extensions : str
        Comma-separated audio extensions scanned (and tried for a ``name`` column).
    valid_count : int
        Maximum size of the validation set (at least 1).
    valid_fraction : float
        Fraction of the usable files for validation, capped by ``valid_count``.
    min_duration : float
        Files shorter than this (seconds) are skipped.
    max_duration : float
        Files longer than this (seconds) are skipped; ``<= 0`` keeps every length.
    seed : int
        Seed of the validation sample.
    num_workers : int
        Threads reading the headers (the result does not depend on it).
    skip_prep : bool
        Return the manifest paths without preparing anything.

    Returns
    -------
    dict
        ``{"main": {"train": csv, "valid": csv}}``.
    """
    manifests = {
        name: os.path.join(save_folder, f"{name}.csv")
        for name in ("train", "valid")
    }
    result = {"main": manifests}
    if skip_prep:
        return result
    if valid_count < 1:
        raise ValueError(f"valid_count must be at least 1, got {valid_count}.")
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"The data folder {data_folder} does not exist: check --data_folder."
        )
    suffixes = parse_extensions(extensions)
    skipped = {}  # relative path (or list line) -> reason
    if file_list:
        list_path = (
            file_list
            if os.path.isfile(file_list)
            else os.path.join(data_folder, file_list)
        )
        if not os.path.isfile(list_path):
            raise FileNotFoundError(
                f"The file list {file_list} exists neither as given nor in {data_folder}."
            )
        paths, skipped = read_file_list(list_path, data_folder, suffixes)
        with open(list_path, "rb") as handle:
            listing_digest = hashlib.sha256(handle.read()).hexdigest()
        listing = {
            "file_list": os.path.abspath(list_path),
            "file_list_sha256": listing_digest,
        }
    else:
        paths = find_audio_files(data_folder, suffixes)
        digest = hashlib.sha256(
            "\n".join(
                os.path.relpath(path, data_folder) for path in paths
            ).encode()
        )
        listing = {"files_sha256": digest.hexdigest()}
    check_mp3_support(paths)

    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    outputs = list(manifests.values()) + [skipped_path]
    options = {
        "data_folder": os.path.abspath(data_folder),
        **listing,
        "extensions": list(suffixes),
        "valid_count": valid_count,
        "valid_fraction": valid_fraction,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "seed": seed,
    }
    if skip_preparation(save_folder, options, outputs):
        logger.info(
            "Pretraining data already prepared in %s with the same files and options: skipping.",
            save_folder,
        )
        return result
    invalidate_preparation(save_folder)

    ids = utterance_ids(paths, data_folder)
    durations = read_durations(paths, num_workers)
    rows = []
    for path, utterance_id in zip(paths, ids):
        duration, reason = durations[path]
        if reason is None and duration < min_duration:
            reason = f"shorter than min_duration ({duration:.3f} s < {min_duration} s)"
        if reason is None and 0 < max_duration < duration:
            reason = f"longer than max_duration ({duration:.3f} s > {max_duration} s)"
        if reason is not None:
            skipped[os.path.relpath(path, data_folder).replace(os.sep, "/")] = (
                reason
            )
            continue
        wav = to_data_root_path(path, data_folder)
        rows.append(
            {"ID": utterance_id, "duration": round(duration, 5), "wav": wav}
        )
    rows.sort(key=lambda row: row["ID"])
    logger.info(
        "%d usable audio files (%.2f h), %d skipped.",
        len(rows),
        sum(row["duration"] for row in rows) / 3600,
        len(skipped),
    )

    atomic_write_text(
        skipped_path,
        "".join(
            f"{name}\t{reason}\n" for name, reason in sorted(skipped.items())
        ),
    )
    if skipped:
        logger.warning(
            "%d files were skipped (listed with the reason in %s).",
            len(skipped),
            skipped_path,
        )
    if len(rows) < 2:
        raise RuntimeError(
            f"Only {len(rows)} usable audio file(s) in {data_folder}: at least 2 are needed (train + valid). "
            f"See {skipped_path} for the skipped ones and check --extensions / --file_list."
        )
    train_rows, valid_rows = sample_validation(
        rows, valid_count, valid_fraction, seed
    )
    write_csv(manifests["train"], train_rows, MANIFEST_COLUMNS)
    write_csv(manifests["valid"], valid_rows, MANIFEST_COLUMNS)
    mark_preparation_done(save_folder, options, outputs)
    return result


def parse_extensions(extensions):
    """``"wav, .FLAC"`` -> ``(".wav", ".flac")`` (lower case, with the dot, in the given order)."""
    suffixes = []
    for extension in extensions.split(","):
        extension = extension.strip().lower().lstrip(".")
        if extension and "." + extension not in suffixes:
            suffixes.append("." + extension)
    if not suffixes:
        raise ValueError(
            f"No audio extension in extensions={extensions!r}: give e.g. 'wav,flac'."
        )
    return tuple(suffixes)


def find_audio_files(data_folder, suffixes):
    """Every file below ``data_folder`` with one of ``suffixes``, hidden entries excluded.

    Returns
    -------
    list of str
        Sorted paths (``data_folder`` joined with the relative path).
    """
    found = []
    for folder, subfolders, names in os.walk(data_folder):
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".")
        )
        found.extend(
            os.path.join(folder, name)
            for name in names
            if not name.startswith(".")
            and os.path.splitext(name)[1].lower() in suffixes
        )
    return sorted(found)


def read_file_list(list_path, data_folder, suffixes):
    """Resolve the files of a CSV list (column ``path``, ``wav`` or ``name``).

    Returns
    -------
    paths : list of str
        Existing listed files, sorted, each once.
    skipped : dict
        ``{listed entry: reason}`` for missing files and repeated entries.

    Raises
    ------
    ValueError
        No usable column, an empty entry, or a path outside ``data_folder``, naming the line.
    """
    with open(list_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        column = next(
            (name for name in PATH_COLUMNS + (NAME_COLUMN,) if name in columns),
            None,
        )
        if column is None:
            raise ValueError(
                f"{list_path} has no column named path, wav or name (found {columns}): add a header "
                "line naming the column that holds the audio paths."
            )
        entries = [
            (reader.line_num, (row[column] or "").strip()) for row in reader
        ]
    paths, skipped, first_line = [], {}, {}
    for line, entry in entries:
        if not entry:
            raise ValueError(
                f"{list_path}, line {line}: empty {column!r} entry; remove the line or fill it."
            )
        if column == NAME_COLUMN:
            candidates = [
                os.path.join(data_folder, entry + suffix) for suffix in suffixes
            ]
        else:
            relative = (
                entry[len(DATA_ROOT) :].lstrip("/")
                if entry.startswith(DATA_ROOT)
                else entry
            )
            candidates = [
                os.path.join(data_folder, relative)
            ]  # join keeps absolute paths as they are
        path = next(
            (
                candidate
                for candidate in candidates
                if os.path.isfile(candidate)
            ),
            None,
        )
        if path is None:
            tried = ", ".join(
                os.path.relpath(candidate, data_folder)
                for candidate in candidates
            )
            skipped[entry] = f"missing (line {line}; looked for {tried})"
            continue
        try:
            to_data_root_path(path, data_folder)
        except ValueError as error:
            raise ValueError(f"{list_path}, line {line}: {error}") from error
        key = os.path.normpath(os.path.abspath(path))
        if key in first_line:
            skipped[f"{entry} (line {line})"] = (
                f"listed twice (first on line {first_line[key]})"
            )
            continue
        first_line[key] = line
        paths.append(path)
    return sorted(paths), skipped


def utterance_ids(paths, data_folder):
    """IDs of ``paths``: relative path without extension, folders joined by ``__``.

    Raises
    ------
    ValueError
        When two files give the same ID (e.g. ``a.wav`` and ``a.flac`` in one folder).
    """
    owners = {}
    ids = []
    for path in paths:
        relative = os.path.relpath(path, data_folder)
        utterance_id = os.path.splitext(relative)[0].replace(os.sep, "__")
        if utterance_id in owners:
            raise ValueError(
                f"{owners[utterance_id]} and {relative} both give the utterance ID {utterance_id!r}: keep one "
                "of them (e.g. restrict --extensions) or rename one."
            )
        owners[utterance_id] = relative
        ids.append(utterance_id)
    return ids


def check_mp3_support(paths):
    """Fail early when mp3 files are listed but this libsndfile cannot read mp3 (< 1.1)."""
    if "MP3" in soundfile.available_formats():
        return
    mp3_files = [path for path in paths if path.lower().endswith(".mp3")]
    if mp3_files:
        raise RuntimeError(
            f"{len(mp3_files)} mp3 files (e.g. {mp3_files[0]}) are listed, but libsndfile "
            f"{soundfile.__libsndfile_version__} cannot read mp3, so training could not load them: install "
            "soundfile >= 0.12 (bundles libsndfile >= 1.1) or leave mp3 out of --extensions."
        )


def read_durations(paths, num_workers=8):
    """Durations (s) from the headers, read in a thread pool (the cost is file-system latency).

    Returns
    -------
    dict
        ``{path: (duration_s, None)}`` or ``{path: (None, reason)}`` for unusable files.
    """

    def probe(path):
        try:
            return audio_info(path)[0], None
        except AudioError as error:
            return None, str(error)

    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, num_workers)
    ) as executor:
        results = list(
            tqdm(
                executor.map(probe, paths),
                total=len(paths),
                desc="audio headers",
                disable=None,
            )
        )
    return dict(zip(paths, results))


def sample_validation(rows, valid_count, valid_fraction, seed):
    """Split ``rows`` (sorted by ID) into train and a seeded random validation sample.

    Returns
    -------
    train_rows, valid_rows : list of dict
        Disjoint, each sorted by ID; the validation set has
        ``min(valid_count, max(1, round(valid_fraction * len(rows))))`` rows (and train at least one).
    """
    size = min(
        valid_count, max(1, round(valid_fraction * len(rows))), len(rows) - 1
    )
    chosen = set(
        np.random.default_rng(seed)
        .choice(len(rows), size=size, replace=False)
        .tolist()
    )
    train_rows = [row for index, row in enumerate(rows) if index not in chosen]
    valid_rows = [row for index, row in enumerate(rows) if index in chosen]
    return train_rows, valid_rows


if __name__ == "__main__":
    preparation_cli(prepare_lssed)
