"""Prepare IEMOCAP (``IEMOCAP_full_release/``) for 4-class speech emotion recognition.

Reads the final labels from ``SessionN/dialog/EmoEvaluation/<dialog>.txt`` (only the files
directly in that folder: its ``Categorical/``, ``Attribute/`` and ``Self-evaluation/``
sub-folders hold per-annotator files), keeps neu, hap + exc (merged into hap), sad and ang,
and writes SpeechBrain manifests for one of two protocols:

* ``session`` (default): leave-one-session-out, 5 folds. ``foldN`` tests on session N (both
  speakers); its validation set is a label-stratified, seeded ``valid_fraction`` share of
  the four training sessions, so no test-session utterance is ever used for selection.
* ``speaker``: leave-one-speaker-out, 10 folds, as SpeechBrain's IEMOCAP recipe and MP3S.
  The test set is one speaker, the validation set the other speaker of the same session,
  training the 8 remaining speakers. ``fold(2N-1)`` tests on ``Ses0NF``, ``fold(2N)`` on
  ``Ses0NM``.

A full release gives 5,531 utterances (per session 1085, 1023, 1151, 1031, 1241); any other
count, or a labelled utterance without its wav, is an error unless ``allow_partial=True``.

Usage::

    python recipes/IEMOCAP/iemocap_prepare.py --data_folder=/path/to/IEMOCAP_full_release \\
        --save_folder=results/IEMOCAP/prepared [--protocol=speaker] [--allow_partial=True]
"""

import collections
import glob
import logging
import os
import re

import numpy as np

from ser_modules.audio import AudioError, audio_info
from ser_modules.manifest import (
    atomic_write_text,
    invalidate_preparation,
    mark_preparation_done,
    preparation_cli,
    skip_preparation,
    to_data_root_path,
    write_csv,
)
from ser_modules.splits import draw_validation, leave_one_group_out

logger = logging.getLogger(__name__)

# Utterances of the standard 4-class set in each session of the full release.
EXPECTED_SESSION_COUNTS = {
    "Ses01": 1085,
    "Ses02": 1023,
    "Ses03": 1151,
    "Ses04": 1031,
    "Ses05": 1241,
}
# Evaluation label -> class; the other labels (fru, sur, fea, dis, oth, xxx) are dropped.
LABEL_MAP = {
    "neu": "neu",
    "hap": "hap",
    "exc": "hap",
    "sad": "sad",
    "ang": "ang",
}
PROTOCOLS = ("session", "speaker")
SPLITS = ("train", "valid", "test")
FIELDS = [
    "ID",
    "duration",
    "wav",
    "emo",
    "spk_id",
    "gender",
    "session",
    "dialog",
    "original_emo",
]
SKIPPED_FILE = "skipped_files.txt"

# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]"
LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\t"
    r"(?P<utterance>\S+)\t(?P<label>[a-z]+)\t\["
)
# The speaker is the session plus the letter before the 3 digits, whatever the dialog name says.
UTTERANCE_NAME = re.compile(
    r"^(?P<session>Ses0[1-5])[FM]_.+_(?P<letter>[FM])\d{3}$"
)
GENDERS = {"F": "female", "M": "male"}


def read_evaluation_file(path):
    """Read the turn labels of one ``EmoEvaluation/<dialog>.txt`` file.

    Header lines (``%``), blank lines and per-annotator lines (``C-E1:``, ``A-E2:`` ...)
    are not labels. A line that opens like a label (``[``) but does not parse is an error.

    Arguments
    ---------
    path : str
        The evaluation file.

    Returns
    -------
    list of (str, str)
        ``(utterance, label)`` in file order, every label as written (``exc``, ``xxx`` ...).
    """
    labels = []
    # Free-text annotator comments may hold non-UTF-8 bytes; the label lines are ASCII.
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.startswith("["):
                continue
            match = LABEL_LINE.match(line)
            if match is None:
                raise ValueError(
                    f"{path}, line {number}: cannot parse the label line {line.rstrip()!r}; "
                    "expected '[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]'. "
                    "Is this file from IEMOCAP_full_release, unmodified?"
                )
            labels.append((match["utterance"], match["label"]))
    return labels


def session_folders(data_folder):
    """``{"Ses01": ".../Session1", ...}`` for the session folders present in ``data_folder``."""
    folders = {}
    for number in range(1, 6):
        folder = os.path.join(data_folder, f"Session{number}")
        if os.path.isdir(folder):
            folders[f"Ses0{number}"] = folder
    return folders


def collect_utterances(data_folder, allow_partial=False):
    """Read the 4-class utterances of every session present, with their wav duration.

    Arguments
    ---------
    data_folder : str
        ``IEMOCAP_full_release`` (holding ``Session1`` ... ``Session5``).
    allow_partial : bool
        Skip (and report) labelled utterances whose wav is missing or unreadable instead
        of failing.

    Returns
    -------
    rows : list of dict
        One manifest row per kept utterance, sorted by ID.
    skipped : list of (str, str)
        ``($data_root path, reason)`` of the utterances skipped for their audio.
    """
    sessions = session_folders(data_folder)
    if not sessions:
        raise FileNotFoundError(
            f"No Session1 ... Session5 folder in {data_folder}: point --data_folder at the "
            "unpacked IEMOCAP_full_release folder."
        )
    rows, skipped, seen = [], [], {}
    dropped = collections.Counter()
    for session, session_folder in sessions.items():
        # Only the top-level .txt files hold final labels; glob's "*" skips hidden
        # "._" files that macOS archivers add.
        pattern = os.path.join(
            session_folder, "dialog", "EmoEvaluation", "*.txt"
        )
        for evaluation_file in sorted(glob.glob(pattern)):
            dialog = os.path.splitext(os.path.basename(evaluation_file))[0]
            for utterance, label in read_evaluation_file(evaluation_file):
                if label not in LABEL_MAP:
                    dropped[label] += 1
                    continue
                name = UTTERANCE_NAME.match(utterance)
                if (
                    name is None
                    or name["session"] != session
                    or not utterance.startswith(dialog + "_")
                ):
                    raise ValueError(
                        f"{evaluation_file}: unexpected utterance name {utterance!r} (expected "
                        f"{dialog}_F000 or {dialog}_M012 style names of {session}). "
                        "Check that the file belongs to this session folder."
                    )
                if utterance in seen:
                    raise ValueError(
                        f"Utterance {utterance} is labelled twice, in {seen[utterance]} and "
                        f"{evaluation_file}: remove the stray copy."
                    )
                seen[utterance] = evaluation_file
                wav = os.path.join(
                    session_folder,
                    "sentences",
                    "wav",
                    dialog,
                    utterance + ".wav",
                )
                try:
                    duration = audio_info(wav)[0]
                except AudioError as error:
                    reason = (
                        "missing wav"
                        if not os.path.exists(wav)
                        else "unreadable wav"
                    )
                    if not allow_partial:
                        raise FileNotFoundError(
                            f"Labelled utterance {utterance} has a {reason}: {wav} ({error}). "
                            "Restore it from the release, or pass --allow_partial=True to "
                            "skip such utterances."
                        ) from error
                    logger.warning(
                        "Skipping %s: %s (%s)", utterance, reason, wav
                    )
                    skipped.append(
                        (to_data_root_path(wav, data_folder), reason)
                    )
                    continue
                letter = name["letter"]
                rows.append(
                    {
                        "ID": utterance,
                        "duration": duration,
                        "wav": to_data_root_path(wav, data_folder),
                        "emo": LABEL_MAP[label],
                        "spk_id": session + letter,
                        "gender": GENDERS[letter],
                        "session": session,
                        "dialog": dialog,
                        "original_emo": label,
                    }
                )
    logger.info(
        "Dropped utterances by label (not in the 4-class set): %s",
        dict(sorted(dropped.items())),
    )
    rows.sort(key=lambda row: row["ID"])
    skipped.sort()
    return rows, skipped


def check_release_counts(session_counts, allow_partial=False):
    """Check the per-session utterance counts against the full release (5,531 in all).

    Arguments
    ---------
    session_counts : dict
        ``{"Ses01": count, ...}`` of the 4-class utterances found (absent sessions = 0).
    allow_partial : bool
        Log a warning instead of failing when the counts differ.

    Raises
    ------
    ValueError
        Counts differ from 1085/1023/1151/1031/1241 and ``allow_partial`` is False.
    """
    found = {
        session: session_counts.get(session, 0)
        for session in EXPECTED_SESSION_COUNTS
    }
    table = ", ".join(
        f"{session}: {found[session]} (expected {expected})"
        for session, expected in EXPECTED_SESSION_COUNTS.items()
    )
    total = sum(found.values())
    if found == EXPECTED_SESSION_COUNTS:
        logger.info("Full IEMOCAP release: %d utterances (%s).", total, table)
        return
    expected_total = sum(EXPECTED_SESSION_COUNTS.values())
    message = f"IEMOCAP 4-class utterances found: {total} instead of {expected_total} ({table})."
    if allow_partial:
        logger.warning("%s Continuing because allow_partial=True.", message)
        return
    raise ValueError(
        f"{message} The data folder is not a complete IEMOCAP_full_release. Fix the release, "
        "or pass --allow_partial=True to prepare what is there (results are then not "
        "comparable with published ones)."
    )


def session_folds(rows, valid_fraction, seed):
    """Leave-one-session-out: ``{"foldN": {split: positions}}`` for each session N present.

    The validation set is a label-stratified ``valid_fraction`` share of the training
    sessions (seeded).
    """
    labels = [row["emo"] for row in rows]
    folds = {}
    for session, train, test in leave_one_group_out(
        [row["session"] for row in rows]
    ):
        train, valid = draw_validation(train, labels, valid_fraction, seed)
        folds[f"fold{int(session[3:])}"] = {
            "train": train,
            "valid": valid,
            "test": test,
        }
    return folds


def speaker_folds(rows):
    """Leave-one-speaker-out: ``{"foldK": {split: positions}}``, K = 2N-1 (F) or 2N (M).

    The validation set is the other speaker of the test speaker's session.
    """
    speakers = np.array([row["spk_id"] for row in rows])
    folds = {}
    for speaker, train, test in leave_one_group_out(speakers):
        partner = speaker[:5] + ("M" if speaker[5] == "F" else "F")
        in_partner = speakers[train] == partner
        if not in_partner.any():
            raise ValueError(
                f"Speaker {partner} has no utterance, so the fold testing on {speaker} has no "
                "validation speaker: the speaker protocol needs both speakers of every session."
            )
        number = 2 * int(speaker[3:5]) - (1 if speaker[5] == "F" else 0)
        folds[f"fold{number}"] = {
            "train": train[~in_partner],
            "valid": train[in_partner],
            "test": test,
        }
    return folds


def expected_fold_names(data_folder, protocol):
    """Fold names the protocol gives for the session folders present (before reading labels)."""
    numbers = [int(session[3:]) for session in session_folders(data_folder)]
    if protocol == "session":
        return [f"fold{n}" for n in numbers]
    return [f"fold{2 * n - offset}" for n in numbers for offset in (1, 0)]


def manifest_paths(save_folder, fold_names):
    """``{fold: {split: <save_folder>/<fold>/<split>.csv}}``."""
    return {
        fold: {
            split: os.path.join(save_folder, fold, f"{split}.csv")
            for split in SPLITS
        }
        for fold in fold_names
    }


def prepare_iemocap(
    data_folder,
    save_folder,
    protocol="session",
    valid_fraction=0.1,
    seed=1234,
    allow_partial=False,
    skip_prep=False,
):
    """Write IEMOCAP 4-class manifests for leave-one-session-out or leave-one-speaker-out.

    Arguments
    ---------
    data_folder : str
        The unpacked ``IEMOCAP_full_release`` folder.
    save_folder : str
        Where ``foldK/{train,valid,test}.csv`` and ``skipped_files.txt`` are written.
    protocol : str
        ``"session"`` (5 folds, test = one session) or ``"speaker"`` (10 folds, test = one
        speaker, valid = the other speaker of that session).
    valid_fraction : float
        ``session`` protocol: label-stratified share of the training sessions used for
        validation.
    seed : int
        Random state of the validation draw.
    allow_partial : bool
        Accept a release with missing sessions, utterances or wavs (reported and skipped)
        instead of failing.
    skip_prep : bool
        Do nothing and return the manifest paths.

    Returns
    -------
    dict
        ``{"fold1": {"train": csv, "valid": csv, "test": csv}, ...}``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown IEMOCAP protocol {protocol!r}: use one of {PROTOCOLS}."
        )
    data_folder = os.path.abspath(data_folder)
    manifests = manifest_paths(
        save_folder, expected_fold_names(data_folder, protocol)
    )
    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    options = {
        "data_folder": data_folder,
        "protocol": protocol,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "allow_partial": allow_partial,
    }
    outputs = [
        path for fold in manifests.values() for path in fold.values()
    ] + [skipped_path]
    if skip_prep:
        return manifests
    if skip_preparation(save_folder, options, outputs):
        logger.info(
            "IEMOCAP manifests in %s are up to date: skipping preparation.",
            save_folder,
        )
        return manifests
    invalidate_preparation(save_folder)

    rows, skipped = collect_utterances(data_folder, allow_partial)
    check_release_counts(
        collections.Counter(row["session"] for row in rows), allow_partial
    )
    if protocol == "session":
        folds = session_folds(rows, valid_fraction, seed)
    else:
        folds = speaker_folds(rows)
    manifests = manifest_paths(save_folder, folds)
    for fold, positions in folds.items():
        for split in SPLITS:
            write_csv(
                manifests[fold][split],
                [rows[i] for i in positions[split]],
                FIELDS,
            )
    atomic_write_text(
        skipped_path, "".join(f"{path}\t{reason}\n" for path, reason in skipped)
    )
    if skipped:
        logger.warning(
            "Skipped %d utterances, listed in %s.", len(skipped), skipped_path
        )
    logger.info(
        "IEMOCAP %s protocol: %d folds written to %s.",
        protocol,
        len(folds),
        save_folder,
    )
    outputs = [
        path for fold in manifests.values() for path in fold.values()
    ] + [skipped_path]
    mark_preparation_done(save_folder, options, outputs)
    return manifests


if __name__ == "__main__":
    preparation_cli(prepare_iemocap)
