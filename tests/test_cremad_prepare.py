"""CREMA-D preparation: name parsing, broken files, both protocols, on a fixture laid out
exactly as ``CREMA-D/AudioWAV/``."""

import collections
import logging
import os

import pytest
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

SCRIPT = "recipes/CREMA-D/cremad_prepare.py"
cremad = load_recipe_module(SCRIPT)

ACTORS = [str(actor) for actor in range(1001, 1010)] + ["1076"]
EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def build_corpus(root):
    """10 actors x 2 sentences x 6 emotions = 120 clips, a broken clip and two stray names."""
    corpus = os.path.join(root, "CREMA-D")
    audio = os.path.join(corpus, "AudioWAV")
    for actor in ACTORS:
        for sentence, level in (("DFA", "XX"), ("IEO", "HI")):
            for emotion in EMOTIONS:
                write_tone(
                    os.path.join(
                        audio, f"{actor}_{sentence}_{emotion}_{level}.wav"
                    ),
                    0.05,
                )
    write_header_only_wav(
        os.path.join(audio, "1076_MTI_SAD_XX.wav")
    )  # as in the release
    write_tone(os.path.join(audio, "1001_DFA_ANGRY_XX.wav"), 0.05)
    with open(os.path.join(audio, "notes.txt"), "w") as handle:
        handle.write("not audio\n")
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One fixture corpus for the whole module: no test modifies it."""
    return build_corpus(tmp_path_factory.mktemp("cremad"))


def split_rows(manifests):
    return {name: read_csv(path) for name, path in manifests["main"].items()}


def test_clip_name_gives_actor_sentence_emotion_and_level(tmp_path, corpus):
    manifests = cremad.prepare_cremad(corpus, tmp_path / "out")
    rows = {
        row["ID"]: row
        for rows in split_rows(manifests).values()
        for row in rows
    }
    assert rows["1003_IEO_FEA_HI"] == {
        "ID": "1003_IEO_FEA_HI",
        "duration": "0.05",
        "wav": "$data_root/AudioWAV/1003_IEO_FEA_HI.wav",
        "emo": "fea",
        "spk_id": "1003",
        "sentence": "IEO",
        "level": "HI",
    }
    assert {row["emo"] for row in rows.values()} == {
        "ang",
        "dis",
        "fea",
        "hap",
        "neu",
        "sad",
    }


def test_broken_and_misnamed_files_are_listed_and_skipped(tmp_path, corpus):
    manifests = cremad.prepare_cremad(corpus, tmp_path / "out")
    ids = [row["ID"] for rows in split_rows(manifests).values() for row in rows]
    assert len(ids) == 120
    assert "1076_MTI_SAD_XX" not in ids
    with open(tmp_path / "out" / "skipped_files.txt") as handle:
        assert handle.read().splitlines() == [
            "$data_root/AudioWAV/1001_DFA_ANGRY_XX.wav\tname does not follow the CREMA-D pattern",
            "$data_root/AudioWAV/1076_MTI_SAD_XX.wav\tunreadable or empty audio",
            "$data_root/AudioWAV/notes.txt\tname does not follow the CREMA-D pattern",
        ]


def test_clip_count_is_logged_against_the_full_release_without_failing(
    tmp_path, corpus, caplog
):
    caplog.set_level(logging.INFO)
    cremad.prepare_cremad(corpus, tmp_path / "out")
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
    ]
    assert any(
        "121 clips" in message and "7,442" in message for message in warnings
    )


def test_random_split_is_stratified_80_20_by_label_with_actors_shared(
    tmp_path, corpus, caplog
):
    caplog.set_level(logging.INFO)
    rows = split_rows(cremad.prepare_cremad(corpus, tmp_path / "out"))
    test_counts = collections.Counter(row["emo"] for row in rows["test"])
    assert test_counts == {
        emotion: 4 for emotion in cremad.EMOTIONS.values()
    }  # 20 % of 20
    assert (
        len(rows["valid"]) == 10 and len(rows["train"]) == 86
    )  # ceil(10 % of 96)
    assert len({row["ID"] for split in rows.values() for row in split}) == 120
    assert {row["spk_id"] for row in rows["test"]} & {
        row["spk_id"] for row in rows["train"]
    }
    assert "CREMA-D protocol: random" in caplog.text


def test_speaker_split_holds_out_whole_actors_for_test_and_validation(
    tmp_path, corpus
):
    rows = split_rows(
        cremad.prepare_cremad(corpus, tmp_path / "out", split="speaker")
    )
    actors = {
        name: {row["spk_id"] for row in split} for name, split in rows.items()
    }
    assert (
        len(actors["test"]) == 2
        and len(actors["valid"]) == 1
        and len(actors["train"]) == 7
    )
    assert (
        not actors["test"] & actors["train"]
        and not actors["valid"] & actors["train"]
    )
    assert not actors["test"] & actors["valid"]
    assert [len(rows[name]) for name in ("train", "valid", "test")] == [
        84,
        12,
        24,
    ]


def test_same_seed_reproduces_the_split_and_another_seed_changes_it(
    tmp_path, corpus
):
    cremad.prepare_cremad(corpus, tmp_path / "a", seed=2013)
    cremad.prepare_cremad(corpus, tmp_path / "b", seed=2013)
    assert_same_files(tmp_path / "a", tmp_path / "b")
    other = cremad.prepare_cremad(corpus, tmp_path / "c", seed=7)
    test_ids = {row["ID"] for row in read_csv(tmp_path / "a" / "test.csv")}
    assert test_ids != {row["ID"] for row in read_csv(other["main"]["test"])}


def test_data_folder_may_be_the_audiowav_folder_itself(tmp_path, corpus):
    from_corpus = split_rows(cremad.prepare_cremad(corpus, tmp_path / "a"))
    from_audio = split_rows(
        cremad.prepare_cremad(os.path.join(corpus, "AudioWAV"), tmp_path / "b")
    )
    for name in ("train", "valid", "test"):
        assert [row["ID"] for row in from_audio[name]] == [
            row["ID"] for row in from_corpus[name]
        ]
    assert (
        from_audio["test"][0]["wav"]
        == f"$data_root/{from_audio['test'][0]['ID']}.wav"
    )


def test_folder_without_clips_is_an_error_saying_where_to_point(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds AudioWAV"):
        cremad.prepare_cremad(tmp_path, tmp_path / "out")


def test_rerun_after_a_crash_matches_an_uninterrupted_run(
    tmp_path, corpus, monkeypatch
):
    cremad.prepare_cremad(corpus, tmp_path / "clean", split="speaker")
    with monkeypatch.context() as patch:
        interrupt_csv_writes(patch, cremad, after=2)
        with pytest.raises(Interrupted):
            cremad.prepare_cremad(corpus, tmp_path / "crashed", split="speaker")
    cremad.prepare_cremad(corpus, tmp_path / "crashed", split="speaker")
    assert_same_files(tmp_path / "clean", tmp_path / "crashed")


def test_unchanged_options_skip_and_changed_options_redo(
    tmp_path, corpus, monkeypatch
):
    cremad.prepare_cremad(corpus, tmp_path / "out")
    interrupt_csv_writes(monkeypatch, cremad, after=0)
    cremad.prepare_cremad(corpus, tmp_path / "out")  # skipped: nothing written
    with pytest.raises(Interrupted):
        cremad.prepare_cremad(corpus, tmp_path / "out", split="speaker")


def test_command_line_prepares_and_prints_the_summary(tmp_path, corpus):
    result = run_script(
        SCRIPT,
        f"--data_folder={corpus}",
        f"--save_folder={tmp_path / 'out'}",
        "--split=speaker",
    )
    assert result.returncode == 0, result.stderr
    assert "| main/test | 24 |" in result.stdout
    assert "CREMA-D protocol: speaker" in result.stderr
