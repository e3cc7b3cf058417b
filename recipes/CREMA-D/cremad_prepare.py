"""Prepare CREMA-D (``CREMA-D/AudioWAV/``) for 6-class speech emotion recognition.

Clip names carry every label: ``1001_DFA_ANG_XX.wav`` = actor 1001, sentence DFA, emotion
ANG (anger), intensity level XX (unspecified). Two protocols are offered:

* ``random`` (default, the Vesper paper's): a label-stratified random 80/20 split of the
  clips with a fixed seed (2013 in the reference code); actors are shared between training
  and test.
* ``speaker``: speaker-independent, 20 % of the *actors* held out for test.

The validation set is taken from the training part only: a label-stratified
``valid_fraction`` share of the training clips for ``random``, a ``valid_fraction`` share of
the training actors for ``speaker`` (so that model selection is speaker-independent too).
The protocol used is logged; write it next to any reported result.

The full release has 7,442 clips, one of which (``1076_MTI_SAD_XX.wav``, 44 bytes) holds no
audio. Unreadable clips and names that do not follow the pattern are listed in
``skipped_files.txt``, counted and skipped; a clip count other than 7,442 is logged as a
warning, not an error (subsets of the corpus are legitimate).

Usage::

    python recipes/CREMA-D/cremad_prepare.py --data_folder=/path/to/CREMA-D \\
        --save_folder=results/CREMA-D/prepared [--split=speaker] [--seed=2013]
"""

import logging
import os
import re

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
from ser_modules.splits import (
    draw_validation,
    speaker_holdout_split,
    stratified_split,
)

logger = logging.getLogger(__name__)

FULL_RELEASE_CLIPS = 7442
EMOTIONS = {
    "ANG": "ang",
    "DIS": "dis",
    "FEA": "fea",
    "HAP": "hap",
    "NEU": "neu",
    "SAD": "sad",
}
SENTENCES = (
    "IEO",
    "TIE",
    "IOM",
    "IWW",
    "TAI",
    "MTI",
    "IWL",
    "ITH",
    "DFA",
    "ITS",
    "TSI",
    "WSI",
)
LEVELS = ("LO", "MD", "HI", "XX")
CLIP_NAME = re.compile(
    rf"^(?P<actor>\d{{4}})_(?P<sentence>{'|'.join(SENTENCES)})_"
    rf"(?P<emotion>{'|'.join(EMOTIONS)})_(?P<level>{'|'.join(LEVELS)})\.wav$"
)
PROTOCOLS = {
    "random": "label-stratified random split of the clips, actors shared (the Vesper paper's)",
    "speaker": "actors split, speaker-independent",
}
SPLITS = ("train", "valid", "test")
FIELDS = ["ID", "duration", "wav", "emo", "spk_id", "sentence", "level"]
SKIPPED_FILE = "skipped_files.txt"


def find_audio_folder(data_folder):
    """``<data_folder>/AudioWAV``, or ``data_folder`` itself when it is that folder."""
    nested = os.path.join(data_folder, "AudioWAV")
    if os.path.isdir(nested):
        return nested
    if os.path.isdir(data_folder) and any(
        CLIP_NAME.match(name) for name in os.listdir(data_folder)
    ):
        return data_folder
    raise FileNotFoundError(
        f"No AudioWAV folder (nor CREMA-D clips such as 1001_DFA_ANG_XX.wav) in {data_folder}: "
        "point --data_folder at the CREMA-D folder that holds AudioWAV/."
    )


def collect_clips(data_folder):
    """Read the clips of ``AudioWAV/`` with their labels and durations.

    Arguments
    ---------
    data_folder : str
        The CREMA-D folder (holding ``AudioWAV/``) or ``AudioWAV/`` itself.

    Returns
    -------
    rows : list of dict
        One manifest row per usable clip, sorted by ID.
    skipped : list of (str, str)
        ``($data_root path, reason)`` for badly named or unreadable files.
    """
    audio_folder = find_audio_folder(data_folder)
    rows, skipped = [], []
    for name in sorted(os.listdir(audio_folder)):
        path = os.path.join(audio_folder, name)
        if not os.path.isfile(path):
            continue
        match = CLIP_NAME.match(name)
        if match is None:
            logger.warning(
                "Skipping %s: not an <actor>_<sentence>_<EMOTION>_<level>.wav name.",
                path,
            )
            skipped.append(
                (
                    to_data_root_path(path, data_folder),
                    "name does not follow the CREMA-D pattern",
                )
            )
            continue
        try:
            duration = audio_info(path)[0]
        except AudioError as error:
            logger.warning("Skipping an unreadable clip: %s", error)
            skipped.append(
                (
                    to_data_root_path(path, data_folder),
                    "unreadable or empty audio",
                )
            )
            continue
        rows.append(
            {
                "ID": name[: -len(".wav")],
                "duration": duration,
                "wav": to_data_root_path(path, data_folder),
                "emo": EMOTIONS[match["emotion"]],
                "spk_id": match["actor"],
                "sentence": match["sentence"],
                "level": match["level"],
            }
        )
    clips = len(rows) + sum(
        reason.startswith("unreadable") for _, reason in skipped
    )
    log = logger.info if clips == FULL_RELEASE_CLIPS else logger.warning
    log(
        "CREMA-D: %d clips named like the release, %d usable, %d files skipped (listed in %s). "
        "The full release has 7,442 clips including the broken 1076_MTI_SAD_XX.wav; another "
        "count is accepted (no error) but makes results less comparable with published ones.",
        clips,
        len(rows),
        len(skipped),
        SKIPPED_FILE,
    )
    if not rows:
        raise FileNotFoundError(f"No usable CREMA-D clip in {audio_folder}.")
    return rows, skipped


def prepare_cremad(
    data_folder,
    save_folder,
    split="random",
    test_fraction=0.2,
    valid_fraction=0.1,
    seed=2013,
    skip_prep=False,
):
    """Write CREMA-D train / valid / test manifests for the random or speaker protocol.

    Arguments
    ---------
    data_folder : str
        The CREMA-D folder holding ``AudioWAV/`` (or ``AudioWAV/`` itself).
    save_folder : str
        Where ``{train,valid,test}.csv`` and ``skipped_files.txt`` are written.
    split : str
        ``"random"`` (label-stratified clips, actors shared) or ``"speaker"`` (actors).
    test_fraction : float
        Share of the clips (``random``) or actors (``speaker``) held out for test.
    valid_fraction : float
        Share of the training clips (``random``, stratified) or training actors
        (``speaker``) used for validation.
    seed : int
        Random state of both draws (2013 = the reference code's).
    skip_prep : bool
        Do nothing and return the manifest paths.

    Returns
    -------
    dict
        ``{"main": {"train": csv, "valid": csv, "test": csv}}``.
    """
    if split not in PROTOCOLS:
        raise ValueError(
            f"Unknown CREMA-D split {split!r}: use one of {sorted(PROTOCOLS)}."
        )
    data_folder = os.path.abspath(data_folder)
    manifests = {
        "main": {
            name: os.path.join(save_folder, f"{name}.csv") for name in SPLITS
        }
    }
    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    outputs = list(manifests["main"].values()) + [skipped_path]
    options = {
        "data_folder": data_folder,
        "split": split,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "seed": seed,
    }
    logger.info(
        "CREMA-D protocol: %s (%s), seed %d.", split, PROTOCOLS[split], seed
    )
    if skip_prep:
        return manifests
    if skip_preparation(save_folder, options, outputs):
        logger.info(
            "CREMA-D manifests in %s are up to date: skipping preparation.",
            save_folder,
        )
        return manifests
    invalidate_preparation(save_folder)

    rows, skipped = collect_clips(data_folder)
    labels = [row["emo"] for row in rows]
    speakers = [row["spk_id"] for row in rows]
    if split == "random":
        train, test = stratified_split(labels, test_fraction, seed)
        train, valid = draw_validation(train, labels, valid_fraction, seed)
    else:
        train, test = speaker_holdout_split(speakers, test_fraction, seed)
        train, valid = draw_validation(
            train, labels, valid_fraction, seed, speakers=speakers
        )
    for name, positions in (("train", train), ("valid", valid), ("test", test)):
        write_csv(manifests["main"][name], [rows[i] for i in positions], FIELDS)
    atomic_write_text(
        skipped_path, "".join(f"{path}\t{reason}\n" for path, reason in skipped)
    )
    mark_preparation_done(save_folder, options, outputs)
    return manifests


if __name__ == "__main__":
    preparation_cli(prepare_cremad)
