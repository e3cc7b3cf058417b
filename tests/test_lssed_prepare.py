"""Specification of the unlabeled pretraining-data preparation (recipes/LSSED/lssed_prepare.py).

The fixture is a nested folder of short sines in wav, flac, ogg and mp3 (written with
soundfile, whose libsndfile >= 1.1 handles mp3), with a repeated stem in two folders, an
upper-case extension, a text file, a hidden macOS ``._`` file, an empty wav, a broken flac
and a too-short wav.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from prepare_helpers import (
    Interrupted,
    assert_same_files,
    interrupt_csv_writes,
    load_recipe_module,
    run_script,
    write_header_only_wav,
    write_tone,
)

from ser_modules.manifest import read_csv

SCRIPT = "recipes/LSSED/lssed_prepare.py"
lssed_prepare = load_recipe_module(SCRIPT)

# relative path -> (duration s, sample rate); all usable with min_duration=0.3
AUDIO = {
    "spk1/a.wav": (1.0, 16000),
    "spk1/b.flac": (0.8, 16000),
    "spk2/a.wav": (0.6, 22050),
    "spk2/deep/c.ogg": (0.7, 16000),
    "spk3/d.mp3": (1.2, 16000),
    "spk3/e.WAV": (0.9, 8000),
}
USABLE_IDS = [
    "spk1__a",
    "spk1__b",
    "spk2__a",
    "spk2__deep__c",
    "spk3__d",
    "spk3__e",
]


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "speech"
    for relative, (seconds, sample_rate) in AUDIO.items():
        write_tone(str(root / relative), seconds, sample_rate)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not audio")
    (root / "spk1" / "._a.wav").write_bytes(
        b"\x00\x05\x16\x07 macOS resource fork"
    )
    write_header_only_wav(str(root / "bad" / "empty.wav"))
    (root / "bad" / "broken.flac").write_bytes(
        np.random.default_rng(0).bytes(2000)
    )
    write_tone(str(root / "short" / "tiny.wav"), 0.1)
    return root


def prepare(corpus, save_folder, **options):
    options = {"min_duration": 0.3, "num_workers": 2, **options}
    return lssed_prepare.prepare_lssed(str(corpus), str(save_folder), **options)


def manifest_rows(save_folder):
    return {
        name: read_csv(Path(save_folder) / f"{name}.csv")
        for name in ("train", "valid")
    }


def skipped_reasons(save_folder):
    lines = (
        (Path(save_folder) / "skipped_files.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    return dict(line.split("\t", 1) for line in lines)


def test_nested_mixed_formats_give_unique_ids_data_root_paths_and_header_durations(
    corpus, tmp_path
):
    splits = prepare(corpus, tmp_path / "out")
    assert splits == {
        "main": {
            name: str(tmp_path / "out" / f"{name}.csv")
            for name in ("train", "valid")
        }
    }
    rows = {
        row["ID"]: row
        for rows in manifest_rows(tmp_path / "out").values()
        for row in rows
    }
    assert sorted(rows) == USABLE_IDS
    assert rows["spk2__deep__c"]["wav"] == "$data_root/spk2/deep/c.ogg"
    assert rows["spk3__e"]["wav"] == "$data_root/spk3/e.WAV"
    for relative, (seconds, _) in AUDIO.items():
        row = rows[os.path.splitext(relative)[0].replace("/", "__")]
        # mp3 frames are 1152 samples: its header may count up to one frame of padding
        assert float(row["duration"]) == pytest.approx(
            seconds, abs=0.075 if relative.endswith(".mp3") else 1e-4
        )


def test_unreadable_empty_and_short_files_are_reported_and_other_files_ignored(
    corpus, tmp_path
):
    prepare(corpus, tmp_path)
    reasons = skipped_reasons(tmp_path)
    assert sorted(reasons) == [
        "bad/broken.flac",
        "bad/empty.wav",
        "short/tiny.wav",
    ]
    assert reasons["bad/broken.flac"].startswith("Cannot read the audio file")
    assert "is empty" in reasons["bad/empty.wav"]
    assert (
        reasons["short/tiny.wav"]
        == "shorter than min_duration (0.100 s < 0.3 s)"
    )


def test_files_longer_than_max_duration_are_skipped(corpus, tmp_path):
    prepare(corpus, tmp_path, max_duration=0.95)
    reasons = skipped_reasons(tmp_path)
    assert (
        reasons["spk1/a.wav"] == "longer than max_duration (1.000 s > 0.95 s)"
    )
    assert "spk3/d.mp3" in reasons
    ids = {
        row["ID"] for rows in manifest_rows(tmp_path).values() for row in rows
    }
    assert ids == {"spk1__b", "spk2__a", "spk2__deep__c", "spk3__e"}


def test_valid_set_is_a_seeded_sample_disjoint_from_train(corpus, tmp_path):
    def split_ids(folder, seed):
        prepare(corpus, folder, valid_count=2, valid_fraction=0.5, seed=seed)
        rows = manifest_rows(folder)
        return [row["ID"] for row in rows["train"]], [
            row["ID"] for row in rows["valid"]
        ]

    train, valid = split_ids(tmp_path / "seed1", 1)
    assert len(valid) == 2 and not set(train) & set(valid)
    assert (
        sorted(train + valid) == USABLE_IDS
        and train == sorted(train)
        and valid == sorted(valid)
    )
    assert split_ids(tmp_path / "seed1_again", 1) == (train, valid)
    assert (
        len(
            {
                tuple(split_ids(tmp_path / f"seed{seed}", seed)[1])
                for seed in range(2, 7)
            }
        )
        > 1
    )


def test_valid_size_is_the_fraction_capped_by_the_count(corpus, tmp_path):
    prepare(corpus, tmp_path / "fraction", valid_count=200, valid_fraction=0.01)
    assert (
        len(manifest_rows(tmp_path / "fraction")["valid"]) == 1
    )  # max(1, round(0.06))
    prepare(corpus, tmp_path / "capped", valid_count=3, valid_fraction=0.9)
    assert len(manifest_rows(tmp_path / "capped")["valid"]) == 3


def test_file_list_accepts_relative_data_root_and_absolute_paths(
    corpus, tmp_path
):
    file_list = tmp_path / "list.csv"
    file_list.write_text(
        "speaker,path\n"
        "s1,spk1/a.wav\n"
        "s1,$data_root/spk1/b.flac\n"
        f"s2,{corpus / 'spk2' / 'deep' / 'c.ogg'}\n"
        "s9,spk9/gone.wav\n"
        "s1,spk1/a.wav\n",
        encoding="utf-8-sig",
    )
    prepare(corpus, tmp_path / "out", file_list=str(file_list))
    ids = sorted(
        row["ID"]
        for rows in manifest_rows(tmp_path / "out").values()
        for row in rows
    )
    assert ids == ["spk1__a", "spk1__b", "spk2__deep__c"]
    assert skipped_reasons(tmp_path / "out") == {
        "spk9/gone.wav": "missing (line 5; looked for spk9/gone.wav)",
        "spk1/a.wav (line 6)": "listed twice (first on line 2)",
    }


def test_file_list_name_column_is_completed_with_the_first_existing_extension(
    corpus, tmp_path
):
    # The layout of the LSSED metadata read by the Vesper reference code: name + label.
    (corpus / "metadata.csv").write_text(
        "name,faces\nspk1/a,0\nspk2/deep/c,3\n"
    )
    prepare(
        corpus, tmp_path, file_list="metadata.csv", extensions="wav,ogg"
    )  # found in data_folder
    rows = {
        row["ID"]: row["wav"]
        for rows in manifest_rows(tmp_path).values()
        for row in rows
    }
    assert rows == {
        "spk1__a": "$data_root/spk1/a.wav",
        "spk2__deep__c": "$data_root/spk2/deep/c.ogg",
    }


def test_file_list_path_outside_the_data_folder_is_an_error_naming_the_line(
    corpus, tmp_path
):
    outside = tmp_path / "elsewhere.wav"
    write_tone(str(outside), 0.5)
    file_list = tmp_path / "list.csv"
    file_list.write_text(f"wav\nspk1/a.wav\n{outside}\n")
    with pytest.raises(
        ValueError,
        match=r"list\.csv, line 3: .*elsewhere\.wav is not inside the data folder",
    ):
        prepare(corpus, tmp_path / "out", file_list=str(file_list))


def test_same_stem_in_two_formats_in_one_folder_is_an_error_naming_both(
    corpus, tmp_path
):
    write_tone(str(corpus / "spk1" / "a.flac"), 0.5)
    with pytest.raises(
        ValueError,
        match=r"spk1/a\.flac and spk1/a\.wav both give the utterance ID 'spk1__a'",
    ):
        prepare(corpus, tmp_path)


def test_rerun_is_skipped_unless_the_files_change(
    corpus, tmp_path, monkeypatch
):
    prepare(corpus, tmp_path)
    original = lssed_prepare.read_durations

    def must_not_run(*args, **kwargs):
        raise AssertionError("the preparation should have been skipped")

    monkeypatch.setattr(lssed_prepare, "read_durations", must_not_run)
    prepare(corpus, tmp_path)

    write_tone(str(corpus / "spk4" / "new.wav"), 0.5)
    monkeypatch.setattr(lssed_prepare, "read_durations", original)
    prepare(corpus, tmp_path)
    ids = {
        row["ID"] for rows in manifest_rows(tmp_path).values() for row in rows
    }
    assert ids == set(USABLE_IDS) | {"spk4__new"}


def test_interrupted_preparation_reruns_to_the_same_files(
    corpus, tmp_path, monkeypatch
):
    prepare(corpus, tmp_path / "uninterrupted")
    interrupt_csv_writes(
        monkeypatch, lssed_prepare, after=1
    )  # train.csv written, valid.csv not
    with pytest.raises(Interrupted):
        prepare(corpus, tmp_path / "interrupted")
    assert not (tmp_path / "interrupted" / "prepare_options.json").exists()
    monkeypatch.undo()
    prepare(corpus, tmp_path / "interrupted")
    assert_same_files(tmp_path / "interrupted", tmp_path / "uninterrupted")


def test_mp3_without_libsndfile_support_is_an_error(
    corpus, tmp_path, monkeypatch
):
    formats = {
        name: text
        for name, text in soundfile.available_formats().items()
        if name != "MP3"
    }
    monkeypatch.setattr(soundfile, "available_formats", lambda: formats)
    with pytest.raises(RuntimeError, match=r"1 mp3 files .*cannot read mp3"):
        prepare(corpus, tmp_path)
    prepare(
        corpus, tmp_path, extensions="wav,flac,ogg"
    )  # leaving mp3 out works


def test_script_prints_the_summary_and_matches_the_function(corpus, tmp_path):
    prepare(corpus, tmp_path / "function")
    completed = run_script(
        SCRIPT,
        f"--data_folder={corpus}",
        f"--save_folder={tmp_path / 'script'}",
        "--min_duration=0.3",
    )
    assert completed.returncode == 0, completed.stderr
    assert (
        "| main/train | 5 |" in completed.stdout
        and "| main/valid | 1 |" in completed.stdout
    )
    assert_same_files(tmp_path / "script", tmp_path / "function")
