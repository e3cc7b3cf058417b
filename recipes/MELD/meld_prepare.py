"""Prepare MELD for speech emotion recognition: decode the mp4 clips once, write manifests.

MELD (Poria et al., ACL 2019) ships its utterances as video clips (``MELD.Raw/``):

* annotations ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv`` with the
  columns ``Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,
  Episode,StartTime,EndTime``;
* clips ``train_splits/dia{D}_utt{U}.mp4``, ``dev_splits_complete/dia{D}_utt{U}.mp4`` and
  ``output_repeated_splits_test/dia{D}_utt{U}.mp4`` (video + AAC audio at 48 kHz, stereo or
  5.1), extracted from ``train.tar.gz``, ``dev.tar.gz`` and ``test.tar.gz``.

The audio of every clip is decoded once with PyAV (the FFmpeg bundled in its wheel) and
written to ``<save_folder>/wav/{train,dev,test}/dia{D}_utt{U}.wav`` as 16 kHz mono 16-bit
PCM. Each wav is written to a temporary name and renamed, so an interrupted run never
leaves a half file, and a re-run converts only the clips whose wav is missing.

Channel policy (``channel_policy``)
-----------------------------------
``"downmix"`` (default)
    FFmpeg's standard downmix (libswresample's matrix, through
    ``av.AudioResampler(format="s16", layout="mono")``). Stereo becomes ``(L + R) / 2``.
    For 5.1 the weights are centre 1, front left/right 1/sqrt(2), surround left/right 1/2
    and LFE 0, normalised to sum 1 so that 16-bit output cannot clip (0.29, 0.21, 0.15, 0):
    the centre channel, which carries the dialogue in film and TV mixes, dominates and the
    LFE rumble is dropped. This is what ``ffmpeg -ac 1`` produces, the usual way MELD
    audio is extracted.
``"mean"``
    The plain average of all channels (what ``ser_modules.audio.load_audio`` does for
    multichannel files). Identical to the downmix for stereo; for 5.1 it gives the
    dialogue (centre) the same 1/6 weight as the LFE and surround channels, hence not the
    default.

Changing the policy reconverts every clip (the policy is recorded in
``<save_folder>/wav/conversion.json``).

Manifests
---------
``<save_folder>/{train,valid,test}.csv`` (``dev`` becomes ``valid``, used for model
selection) with the columns ``ID,duration,wav,emo,spk_id,sentiment,dialogue,turn,text``:
``ID`` is ``{split}_dia{D}_utt{U}``, ``wav`` is ``$prep_root/wav/{split}/dia{D}_utt{U}.wav``
(``$prep_root`` = ``save_folder``), ``emo`` one of the 7 classes, ``spk_id`` the
``Speaker`` column, ``dialogue`` ``{split}_dia{D}`` (unique across splits), ``turn`` the
``Utterance_ID`` and ``text`` the transcript.

Clips that are missing, have no audio stream, cannot be decoded or hold no samples (the
official release has a few) are listed with the reason in ``<save_folder>/skipped_files.txt``,
counted in the log, and left out of the manifests.

Usage::

    python recipes/MELD/meld_prepare.py --data_folder=/data/MELD.Raw --save_folder=prepared/MELD
"""

import codecs
import collections
import concurrent.futures
import csv
import io
import json
import logging
import os
import shutil
import tempfile

import av
import numpy as np
import soundfile
from tqdm import tqdm

from ser_modules.audio import SAMPLE_RATE, AudioError, audio_info
from ser_modules.manifest import (
    atomic_write_text,
    invalidate_preparation,
    mark_preparation_done,
    preparation_cli,
    skip_preparation,
    write_csv,
)

logger = logging.getLogger(__name__)

PREP_ROOT = "$prep_root"
EMOTIONS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
CHANNEL_POLICIES = ("downmix", "mean")
ANNOTATION_COLUMNS = (
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
)
MANIFEST_COLUMNS = [
    "ID",
    "duration",
    "wav",
    "emo",
    "spk_id",
    "sentiment",
    "dialogue",
    "turn",
    "text",
]
# MELD split -> (annotation file, media folder, utterances in the official release, manifest name)
SPLITS = {
    "train": ("train_sent_emo.csv", "train_splits", 9989, "train"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete", 1109, "valid"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test", 2610, "test"),
}
SKIPPED_FILE = "skipped_files.txt"
CONVERSION_RECORD = "conversion.json"
TMP_PREFIX = ".tmp_"


class ClipError(ValueError):
    """A clip whose audio cannot be used; the message is the reason written to the report."""


def prepare_meld(
    data_folder,
    save_folder,
    channel_policy="downmix",
    num_workers=4,
    skip_prep=False,
):
    """Prepare MELD: decode every clip to 16 kHz mono wav and write the official split.

    Arguments
    ---------
    data_folder : str
        The ``MELD.Raw`` folder (annotation CSVs and the three extracted media folders).
    save_folder : str
        Where the wavs (``wav/``), the manifests and ``skipped_files.txt`` are written.
    channel_policy : str
        ``"downmix"`` (FFmpeg's standard downmix, default) or ``"mean"`` (channel average);
        see the module docstring.
    num_workers : int
        Clips decoded in parallel (threads: FFmpeg decodes without holding the GIL).
        The result does not depend on it.
    skip_prep : bool
        Return the manifest paths without preparing anything.

    Returns
    -------
    dict
        ``{"main": {"train": csv, "valid": csv, "test": csv}}``.
    """
    manifests = {
        name: os.path.join(save_folder, f"{name}.csv")
        for _, _, _, name in SPLITS.values()
    }
    result = {"main": manifests}
    if skip_prep:
        return result
    if channel_policy not in CHANNEL_POLICIES:
        raise ValueError(
            f"Unknown channel_policy {channel_policy!r}: use one of {CHANNEL_POLICIES}."
        )
    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    outputs = list(manifests.values()) + [skipped_path]
    options = {
        "data_folder": os.path.abspath(data_folder),
        "channel_policy": channel_policy,
        "sample_rate": SAMPLE_RATE,
    }
    if skip_preparation(save_folder, options, outputs):
        logger.info(
            "MELD already prepared in %s with the same options: skipping.",
            save_folder,
        )
        return result
    invalidate_preparation(save_folder)

    # Read and check every annotation before the (long) conversion starts.
    annotations = {}
    for split, (csv_name, media_name, expected, _) in SPLITS.items():
        annotations[split] = read_meld_annotations(
            os.path.join(data_folder, csv_name)
        )
        media_folder = os.path.join(data_folder, media_name)
        if not os.path.isdir(media_folder):
            raise FileNotFoundError(
                f"The MELD media folder {media_folder} does not exist: extract the {split} "
                f"archive of MELD.Raw ({split}.tar.gz) into {data_folder}."
            )
        found = len(annotations[split])
        log = logger.info if found == expected else logger.warning
        log(
            "%s: %d utterances annotated (the official release has %d).",
            csv_name,
            found,
            expected,
        )

    wav_folder = prepare_wav_folder(save_folder, channel_policy)
    jobs = []
    for split, rows in annotations.items():
        media_folder = os.path.join(data_folder, SPLITS[split][1])
        for row in rows:
            name = clip_name(row)
            mp4_path = os.path.join(media_folder, name + ".mp4")
            jobs.append(
                (mp4_path, os.path.join(wav_folder, split, name + ".wav"))
            )
    outcomes = convert_clips(jobs, channel_policy, num_workers)

    skipped_lines = []
    manifest_rows = {}
    for split, rows in annotations.items():
        media_name = SPLITS[split][1]
        manifest_rows[split] = []
        for row in rows:
            name = clip_name(row)
            duration, reason = outcomes[
                os.path.join(wav_folder, split, name + ".wav")
            ]
            if reason is not None:
                skipped_lines.append(f"{media_name}/{name}.mp4\t{reason}")
                continue
            manifest_rows[split].append(
                {
                    "ID": f"{split}_{name}",
                    "duration": duration,
                    "wav": f"{PREP_ROOT}/wav/{split}/{name}.wav",
                    "emo": row["emotion"],
                    "spk_id": row["speaker"],
                    "sentiment": row["sentiment"],
                    "dialogue": f"{split}_dia{row['dialogue_id']}",
                    "turn": row["utterance_id"],
                    "text": row["text"],
                }
            )
        logger.info(
            "MELD %s: %d clips kept, %d skipped.",
            split,
            len(manifest_rows[split]),
            len(rows) - len(manifest_rows[split]),
        )
    skipped_lines.sort()
    atomic_write_text(
        skipped_path, "".join(line + "\n" for line in skipped_lines)
    )
    if skipped_lines:
        logger.warning(
            "%d MELD clips were skipped (listed with the reason in %s).",
            len(skipped_lines),
            skipped_path,
        )

    for split, rows in manifest_rows.items():
        if not rows:
            raise RuntimeError(
                f"No usable clip in the MELD {split} split: the reasons are in {skipped_path}; "
                f"check {os.path.join(data_folder, SPLITS[split][1])}."
            )
        rows.sort(key=lambda manifest_row: manifest_row["ID"])
        write_csv(manifests[SPLITS[split][3]], rows, MANIFEST_COLUMNS)
    mark_preparation_done(save_folder, options, outputs)
    return result


def clip_name(row):
    """``dia{D}_utt{U}``: the stem of a clip's mp4 (and of its wav)."""
    return f"dia{row['dialogue_id']}_utt{row['utterance_id']}"


def read_meld_annotations(csv_path):
    """Read one MELD annotation CSV, robust to a UTF-8 BOM and to non-UTF-8 encodings.

    The file is decoded as UTF-8 when it is valid UTF-8, otherwise as Windows-1252 (the
    encoding of the curly quotes found in some copies), otherwise as Latin-1 (which never
    fails); the fallback is logged because only the transcript can be affected.

    Arguments
    ---------
    csv_path : str
        ``train_sent_emo.csv``, ``dev_sent_emo.csv`` or ``test_sent_emo.csv``.

    Returns
    -------
    list of dict
        One dict per utterance with ``dialogue_id`` and ``utterance_id`` (int), ``emotion``
        and ``sentiment`` (lower case), ``speaker`` and ``text`` (stripped).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, missing column, unknown emotion, non-integer IDs or a duplicated clip,
        naming the file and the line.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"The MELD annotation file {csv_path} does not exist: check --data_folder (MELD.Raw)."
        )
    with open(csv_path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8":
        logger.warning(
            "%s is not valid UTF-8: read it as %s (only the transcripts are affected).",
            csv_path,
            encoding,
        )

    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    missing = [
        column
        for column in ANNOTATION_COLUMNS
        if column not in reader.fieldnames
    ]
    if missing:
        raise ValueError(
            f"{csv_path} lacks the columns {missing} (found {reader.fieldnames}): is it a MELD annotation file?"
        )
    rows = []
    seen = {}
    for row in reader:
        line = reader.line_num
        emotion = row["Emotion"].strip().lower()
        if emotion not in EMOTIONS:
            raise ValueError(
                f"{csv_path}, line {line}: unknown emotion {row['Emotion']!r} (expected one of {EMOTIONS})."
            )
        try:
            dialogue_id, utterance_id = (
                int(row["Dialogue_ID"]),
                int(row["Utterance_ID"]),
            )
        except ValueError as error:
            raise ValueError(
                f"{csv_path}, line {line}: Dialogue_ID and Utterance_ID must be integers, got "
                f"{row['Dialogue_ID']!r} and {row['Utterance_ID']!r}."
            ) from error
        key = (dialogue_id, utterance_id)
        if key in seen:
            raise ValueError(
                f"{csv_path}: dia{dialogue_id}_utt{utterance_id} is annotated twice "
                f"(lines {seen[key]} and {line}); remove one of the two lines."
            )
        seen[key] = line
        rows.append(
            {
                "dialogue_id": dialogue_id,
                "utterance_id": utterance_id,
                "emotion": emotion,
                "sentiment": row["Sentiment"].strip().lower(),
                "speaker": row["Speaker"].strip(),
                "text": row["Utterance"].strip(),
            }
        )
    return rows


def prepare_wav_folder(save_folder, channel_policy):
    """Create ``<save_folder>/wav`` for ``channel_policy`` and clean what a killed run left.

    Wavs converted with another policy (or of unknown origin) are deleted so that no clip
    mixes two policies; temporary files of an interrupted conversion are removed.

    Returns
    -------
    str
        The wav folder.
    """
    wav_folder = os.path.join(save_folder, "wav")
    record_path = os.path.join(wav_folder, CONVERSION_RECORD)
    record = {
        "channel_policy": channel_policy,
        "sample_rate": SAMPLE_RATE,
        "subtype": "PCM_16",
    }
    stored = None
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as handle:
            stored = json.load(handle)
    if stored != record and os.path.isdir(wav_folder):
        logger.info(
            "Removing the wavs in %s (converted with %s, now %s).",
            wav_folder,
            stored,
            record,
        )
        shutil.rmtree(wav_folder)
    for split in SPLITS:
        os.makedirs(os.path.join(wav_folder, split), exist_ok=True)
        for name in os.listdir(os.path.join(wav_folder, split)):
            if name.startswith(TMP_PREFIX):
                os.remove(os.path.join(wav_folder, split, name))
    if stored != record:
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return wav_folder


def convert_clips(jobs, channel_policy, num_workers=1):
    """Convert ``(mp4_path, wav_path)`` jobs whose wav is missing; measure the others.

    Arguments
    ---------
    jobs : list of tuple
        ``(mp4_path, wav_path)`` pairs.
    channel_policy : str
        See :func:`decode_audio`.
    num_workers : int
        Parallel threads (1 = in this thread).

    Returns
    -------
    dict
        ``{wav_path: (duration_s, None)}`` for usable clips and ``{wav_path: (None, reason)}``
        for skipped ones.
    """

    def convert(job):
        return job[1], convert_clip(job[0], job[1], channel_policy)

    progress = tqdm(total=len(jobs), desc="MELD clips", disable=None)
    outcomes = {}
    actions = collections.Counter()
    if num_workers <= 1:
        results = map(convert, jobs)
        executor = None
    else:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers
        )
        results = executor.map(convert, jobs)
    try:
        for wav_path, (duration, reason, action) in results:
            outcomes[wav_path] = (duration, reason)
            actions[action] += 1
            progress.update()
    finally:
        progress.close()
        if executor is not None:
            # Do not start the queued clips when one failed (e.g. disk full, Ctrl-C).
            executor.shutdown(wait=True, cancel_futures=True)
    logger.info(
        "MELD clips: %d converted, %d reused from an earlier run, %d skipped.",
        actions["converted"],
        actions["reused"],
        actions["skipped"],
    )
    return outcomes


def convert_clip(mp4_path, wav_path, channel_policy):
    """Decode ``mp4_path`` into ``wav_path`` (atomically) unless the wav already exists.

    Returns
    -------
    tuple
        ``(duration_s, None, action)`` for a usable clip, with action ``"converted"`` or
        ``"reused"``; ``(None, reason, "skipped")`` for a clip to skip.
    """
    if os.path.isfile(wav_path):
        try:
            return round(audio_info(wav_path)[0], 5), None, "reused"
        except AudioError:
            # Not a wav this preparation wrote (renames are atomic): convert it again.
            logger.warning("Reconverting %s, which cannot be read.", wav_path)
    if not os.path.isfile(mp4_path):
        return None, "missing", "skipped"
    try:
        samples = decode_audio(mp4_path, channel_policy)  # (T,)
    except ClipError as error:
        return None, str(error), "skipped"
    write_wav_atomically(wav_path, samples)
    return round(len(samples) / SAMPLE_RATE, 5), None, "converted"


def decode_audio(media_path, channel_policy="downmix", sample_rate=SAMPLE_RATE):
    """Decode the first audio stream of a media file to mono 16-bit samples with FFmpeg.

    Arguments
    ---------
    media_path : str
        A media file FFmpeg can read (mp4 with AAC audio for MELD).
    channel_policy : str
        ``"downmix"``: libswresample's standard downmix matrix; ``"mean"``: average of the
        channels (see the module docstring).
    sample_rate : int
        Output rate (resampled by libswresample).

    Returns
    -------
    numpy.ndarray
        ``(T,)`` int16 samples at ``sample_rate``.

    Raises
    ------
    ClipError
        No audio stream, undecodable data, or no samples; the message is the reason.
    """
    chunks = []
    try:
        with av.open(media_path) as container:
            if not container.streams.audio:
                raise ClipError("no audio stream")
            stream = container.streams.audio[0]
            if channel_policy == "downmix":
                resampler = av.AudioResampler(
                    format="s16", layout="mono", rate=sample_rate
                )
            elif channel_policy == "mean":
                # Keep the channels (planar float) and average them below.
                resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            else:
                raise ValueError(
                    f"Unknown channel_policy {channel_policy!r}: use one of {CHANNEL_POLICIES}."
                )
            for frame in container.decode(stream):
                chunks.extend(
                    resampled.to_ndarray()
                    for resampled in resampler.resample(frame)
                )
            chunks.extend(
                resampled.to_ndarray() for resampled in resampler.resample(None)
            )  # flush
    except av.FFmpegError as error:
        # strerror leaves out the path, so the report does not depend on where the corpus is.
        raise ClipError(f"undecodable ({error.strerror or error})") from error
    if not chunks or sum(chunk.shape[1] for chunk in chunks) == 0:
        raise ClipError("no audio samples")
    samples = np.concatenate(chunks, axis=1)  # (C, T)
    if channel_policy == "mean":
        # Same float -> int16 conversion as FFmpeg's (scale by 2^15, round, saturate).
        mono = samples.mean(axis=0)  # (T,)
        return np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)
    return samples[0]


def write_wav_atomically(wav_path, samples, sample_rate=SAMPLE_RATE):
    """Write ``(T,)`` int16 samples as a 16-bit wav: temporary file, then atomic rename."""
    fd, tmp_path = tempfile.mkstemp(
        dir=os.path.dirname(wav_path), prefix=TMP_PREFIX, suffix=".wav"
    )
    os.close(fd)
    try:
        soundfile.write(
            tmp_path, samples, sample_rate, subtype="PCM_16", format="WAV"
        )
        os.replace(tmp_path, wav_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


if __name__ == "__main__":
    preparation_cli(prepare_meld)
