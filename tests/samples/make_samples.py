#!/usr/bin/env python3
"""Regenerate the tiny committed samples the recipe tests run on (``tests/recipes/*.csv``).

    python tests/samples/make_samples.py

Writes, under ``tests/samples/``:

* ``audio/``: 16 synthetic utterances of :mod:`ser_modules.mini_corpus` (2 speakers x 4
  emotions x 2, about 1 s each, 16 kHz mono), and ``labels.csv``;
* ``manifests/{train,valid,test}.csv``: SpeechBrain manifests of them (``ID, duration,
  wav, emo, spk_id``; ``$data_root`` is ``--data_folder=tests/samples/audio``), every
  emotion in every split; ``manifests/unlabeled_{train,valid}.csv`` for Vesper
  pretraining;
* ``upstreams/tiny_wavlm`` and ``upstreams/tiny_hubert``: random 4-layer, 32-dim models
  saved with ``transformers`` (:mod:`ser_modules.upstreams.tiny`), as ``--ssl_source`` or
  ``--teacher_source``.

Everything is synthetic or random (no corpus, no download) and deterministic; the whole
folder stays well under 2 MB.
"""

import os
import shutil
import sys

import soundfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from ser_modules.manifest import read_csv, write_csv  # noqa: E402
from ser_modules.mini_corpus import generate_mini_corpus  # noqa: E402
from ser_modules.upstreams.tiny import save_tiny_model  # noqa: E402

AUDIO = os.path.join(HERE, "audio")
MANIFESTS = os.path.join(HERE, "manifests")
UPSTREAMS = os.path.join(HERE, "upstreams")


def manifest_rows():
    """One manifest row per utterance of ``audio/labels.csv``."""
    rows = []
    for entry in read_csv(os.path.join(AUDIO, "labels.csv")):
        info = soundfile.info(os.path.join(AUDIO, entry["path"]))
        rows.append(
            {
                "ID": os.path.splitext(os.path.basename(entry["path"]))[0],
                "duration": f"{info.frames / info.samplerate:.3f}",
                "wav": "$data_root/" + entry["path"],
                "emo": entry["emotion"],
                "spk_id": entry["speaker"],
            }
        )
    return sorted(rows, key=lambda row: row["ID"])


def main():
    """Write the samples (replacing what is there)."""
    for folder in (AUDIO, MANIFESTS, UPSTREAMS):
        shutil.rmtree(folder, ignore_errors=True)
    generate_mini_corpus(
        AUDIO,
        num_speakers=2,
        utterances_per_class=2,
        duration_range=(0.8, 1.2),
        seed=0,
    )
    # The generator's record of its options is not needed by the tests.
    for name in os.listdir(AUDIO):
        if name.startswith(".") or name.endswith(".json"):
            os.remove(os.path.join(AUDIO, name))
    rows = manifest_rows()
    # Utterance 000 of each speaker and emotion trains; 001 validates (speaker 1) or
    # tests (speaker 2): every emotion is in every split.
    splits = {"train": [], "valid": [], "test": []}
    for row in rows:
        if row["ID"].endswith("000"):
            splits["train"].append(row)
        elif row["spk_id"] == rows[0]["spk_id"]:
            splits["valid"].append(row)
        else:
            splits["test"].append(row)
    fields = ["ID", "duration", "wav", "emo", "spk_id"]
    for name, split_rows in splits.items():
        write_csv(os.path.join(MANIFESTS, f"{name}.csv"), split_rows, fields)
    unlabeled = {"train": rows[:12], "valid": rows[12:]}
    for name, split_rows in unlabeled.items():
        write_csv(
            os.path.join(MANIFESTS, f"unlabeled_{name}.csv"),
            split_rows,
            ["ID", "duration", "wav"],
        )
    for kind in ("wavlm", "hubert"):
        save_tiny_model(
            os.path.join(UPSTREAMS, f"tiny_{kind}"), kind=kind, num_layers=4
        )
    total = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(HERE)
        for name in names
    )
    print(f"Samples written to {HERE}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
