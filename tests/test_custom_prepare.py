"""Generic corpus preparation: labels CSV and folder-tree layouts, the three protocols."""

import collections
import os

import pytest
from prepare_helpers import (
    Interrupted,
    assert_same_files,
    interrupt_csv_writes,
    load_recipe_module,
    run_script,
    write_tone,
)

from ser_modules.manifest import read_csv

SCRIPT = "recipes/custom/custom_prepare.py"
custom = load_recipe_module(SCRIPT)

EMOTIONS = ["Angry", "Happy", "Neutral", "Sad"]
SPEAKERS = ["SF1", "SF2", "SM1", "SM2", "SM3", "SM4"]


def build_csv_corpus(root):
    """URDU-like corpus: ``<Emotion>/<speaker>_F<n>_<E><n>.wav`` and a labels.csv describing
    48 of them plus one unreadable and one missing file."""
    corpus = os.path.join(root, "corpus")
    lines = ["path,speaker,gender,emotion"]
    for speaker in SPEAKERS:
        for emotion in EMOTIONS:
            for take in (1, 2):
                relative = f"{emotion}/{speaker}_F{take}_{emotion[0]}{take}.wav"
                # One file at 44.1 kHz, as the URDU clips are.
                rate = 44100 if relative == "Angry/SF1_F1_A1.wav" else 16000
                write_tone(
                    os.path.join(corpus, relative), 0.05, sample_rate=rate
                )
                gender = "female" if speaker.startswith("SF") else "male"
                lines.append(f"{relative},{speaker},{gender},{emotion}")
    with open(os.path.join(corpus, "Sad", "SM4_F9_S9.wav"), "wb") as handle:
        handle.write(b"not a wav file")
    lines += [
        "Sad/SM4_F9_S9.wav,SM4,male,Sad",
        "Sad/SM4_F8_S8.wav,SM4,male,Sad",
    ]
    with open(os.path.join(corpus, "labels.csv"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return corpus


@pytest.fixture(scope="module")
def csv_corpus(tmp_path_factory):
    """One labels-CSV corpus for the tests that do not modify it."""
    return build_csv_corpus(tmp_path_factory.mktemp("custom"))


def build_tree_corpus(root):
    """``<emotion>/...`` tree with nested, flat and deep files and stray files."""
    corpus = os.path.join(root, "tree")
    for relative in [
        "happy/spk1/take1.wav",  # nested: speaker = parent folder spk1
        "happy/spk1/take2.wav",
        "Sad/spk2_003.flac",  # flat: speaker = prefix spk2
        "angry/session1/spk3/spk3_1.wav",  # deep: speaker = parent folder spk3
        "loose.wav",  # no emotion folder
        "neutral/noprefix.wav",  # flat without "_": no speaker
    ]:
        write_tone(os.path.join(corpus, relative), 0.05)
    with open(os.path.join(corpus, "happy", "README.txt"), "w") as handle:
        handle.write("not audio\n")
    return corpus


def rows_of(manifests):
    return [
        row
        for parts in manifests.values()
        for path in parts.values()
        for row in read_csv(path)
    ]


def test_labels_csv_rows_keep_extra_columns_and_lowercase_labels(
    tmp_path, csv_corpus
):
    manifests = custom.prepare_custom(
        csv_corpus,
        tmp_path / "out",
        labels_csv="labels.csv",
        split="stratified",
    )
    rows = {row["ID"]: row for row in rows_of(manifests)}
    assert len(rows) == 48
    assert rows["Angry-SF1_F1_A1"] == {
        "ID": "Angry-SF1_F1_A1",
        "duration": "0.05",
        "wav": "$data_root/Angry/SF1_F1_A1.wav",
        "emo": "angry",
        "spk_id": "SF1",
        "gender": "female",
    }
    assert {row["emo"] for row in rows.values()} == {
        "angry",
        "happy",
        "neutral",
        "sad",
    }


def test_unreadable_and_missing_files_are_listed_and_skipped(
    tmp_path, csv_corpus
):
    custom.prepare_custom(
        csv_corpus,
        tmp_path / "out",
        labels_csv="labels.csv",
        split="stratified",
    )
    with open(tmp_path / "out" / "skipped_files.txt") as handle:
        assert handle.read().splitlines() == [
            "$data_root/Sad/SM4_F8_S8.wav\tmissing file",
            "$data_root/Sad/SM4_F9_S9.wav\tunreadable or empty audio",
        ]


def test_labels_csv_without_a_required_column_is_an_error_naming_it(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "labels.csv").write_text("path,emotion\na.wav,happy\n")
    with pytest.raises(
        ValueError, match=r"lacks the column\(s\) \['speaker'\]"
    ):
        custom.prepare_custom(corpus, tmp_path / "out", labels_csv="labels.csv")


def test_labels_csv_line_without_emotion_is_an_error_naming_the_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "labels.csv").write_text(
        "path,emotion,speaker\na.wav,happy,s1\nb.wav,,s1\n"
    )
    with pytest.raises(
        ValueError, match=r"labels.csv, line 3: empty \['emotion'\]"
    ):
        custom.prepare_custom(corpus, tmp_path / "out", labels_csv="labels.csv")


def test_tree_takes_emotion_from_top_folder_and_speaker_from_parent_or_prefix(
    tmp_path,
):
    corpus = build_tree_corpus(tmp_path)
    entries, skipped = custom.scan_tree(corpus)
    found = {
        os.path.relpath(entry["path"], corpus): (entry["emo"], entry["spk_id"])
        for entry in entries
    }
    assert found == {
        "Sad/spk2_003.flac": ("sad", "spk2"),
        "angry/session1/spk3/spk3_1.wav": ("angry", "spk3"),
        "happy/spk1/take1.wav": ("happy", "spk1"),
        "happy/spk1/take2.wav": ("happy", "spk1"),
    }
    assert [path for path, _ in skipped] == [
        "$data_root/loose.wav",
        "$data_root/neutral/noprefix.wav",
    ]


def test_speaker_regex_takes_its_first_group_from_the_file_name(tmp_path):
    corpus = build_tree_corpus(tmp_path)
    entries, skipped = custom.scan_tree(corpus, speaker_regex=r"^(spk\d)_")
    found = {
        os.path.relpath(entry["path"], corpus): entry["spk_id"]
        for entry in entries
    }
    assert found == {
        "Sad/spk2_003.flac": "spk2",
        "angry/session1/spk3/spk3_1.wav": "spk3",
    }
    assert "$data_root/happy/spk1/take1.wav" in [path for path, _ in skipped]


def test_speaker_kfold_writes_k_speaker_disjoint_folds(tmp_path, csv_corpus):
    manifests = custom.prepare_custom(
        csv_corpus,
        tmp_path / "out",
        labels_csv="labels.csv",
        n_folds=3,
        valid_fraction=0.25,
        valid_split="utterance",
    )
    assert sorted(manifests) == ["fold1", "fold2", "fold3"]
    tested = []
    for fold in manifests.values():
        train, valid, test = (
            read_csv(fold[part]) for part in ("train", "valid", "test")
        )
        test_speakers = {row["spk_id"] for row in test}
        assert len(test_speakers) == 2  # 6 equal speakers over 3 folds
        assert not test_speakers & {row["spk_id"] for row in train + valid}
        assert (
            len(train) == 24 and len(valid) == 8
        )  # ceil(25 % of 32), label-stratified
        valid_labels = collections.Counter(row["emo"] for row in valid)
        assert valid_labels == dict.fromkeys(
            ("angry", "happy", "neutral", "sad"), 2
        )
        tested += [row["ID"] for row in test]
    assert len(tested) == len(set(tested)) == 48


def test_speaker_validation_holds_out_training_speakers_and_keeps_the_test_folds(
    tmp_path, csv_corpus
):
    by_speaker = custom.prepare_custom(
        csv_corpus, tmp_path / "speaker", labels_csv="labels.csv", n_folds=3
    )
    by_utterance = custom.prepare_custom(
        csv_corpus,
        tmp_path / "utterance",
        labels_csv="labels.csv",
        n_folds=3,
        valid_split="utterance",
    )
    for name, fold in by_speaker.items():
        train, valid, test = (
            read_csv(fold[part]) for part in ("train", "valid", "test")
        )
        # The test fold is the one of the former default (validation by utterance).
        assert [row["ID"] for row in test] == [
            row["ID"] for row in read_csv(by_utterance[name]["test"])
        ]
        train_speakers = {row["spk_id"] for row in train}
        valid_speakers = {row["spk_id"] for row in valid}
        test_speakers = {row["spk_id"] for row in test}
        # 4 training speakers, round(1 / 0.2) = 5 groups capped at 4: one speaker.
        assert len(valid_speakers) == 1 and len(train_speakers) == 3
        assert not valid_speakers & train_speakers
        assert not test_speakers & (train_speakers | valid_speakers)
        assert collections.Counter(
            row["emo"] for row in valid
        ) == dict.fromkeys(("angry", "happy", "neutral", "sad"), 2)
    with pytest.raises(ValueError, match="valid_split"):
        custom.prepare_custom(
            csv_corpus,
            tmp_path / "bad",
            labels_csv="labels.csv",
            valid_split="speakers",
        )


def test_default_test_folds_are_the_speaker_kfold_of_the_sorted_corpus(
    tmp_path, csv_corpus
):
    from ser_modules.splits import speaker_kfold

    manifests = custom.prepare_custom(
        csv_corpus, tmp_path / "out", labels_csv="labels.csv"
    )
    rows = sorted(
        (row for fold in manifests.values() for row in read_csv(fold["test"])),
        key=lambda row: row["ID"],
    )
    folds = speaker_kfold(
        [row["emo"] for row in rows], [row["spk_id"] for row in rows], 5, 1234
    )
    for number, (_, test) in enumerate(folds, start=1):
        assert [rows[i]["ID"] for i in test] == [
            row["ID"] for row in read_csv(manifests[f"fold{number}"]["test"])
        ]


def test_stratified_split_writes_one_label_stratified_split(
    tmp_path, csv_corpus
):
    manifests = custom.prepare_custom(
        csv_corpus,
        tmp_path / "out",
        labels_csv="labels.csv",
        split="stratified",
        test_fraction=0.25,
    )
    parts = ("train", "valid", "test")
    assert manifests == {
        "main": {
            part: os.path.join(tmp_path / "out", f"{part}.csv")
            for part in parts
        }
    }
    test = read_csv(manifests["main"]["test"])
    assert collections.Counter(row["emo"] for row in test) == dict.fromkeys(
        ("angry", "happy", "neutral", "sad"), 3
    )


def test_speaker_holdout_separates_test_validation_and_training_speakers(
    tmp_path, csv_corpus
):
    manifests = custom.prepare_custom(
        csv_corpus,
        tmp_path / "out",
        labels_csv="labels.csv",
        split="speaker_holdout",
        test_fraction=0.3,
        valid_fraction=0.25,
    )
    speakers = {
        part: {row["spk_id"] for row in read_csv(path)}
        for part, path in manifests["main"].items()
    }
    # ceil(30 % of 6) test speakers, ceil(25 % of the 4 others) validation speakers.
    assert [len(speakers[part]) for part in ("train", "valid", "test")] == [
        3,
        1,
        2,
    ]
    assert set().union(*speakers.values()) == set(SPEAKERS)


def test_edited_labels_csv_redoes_the_preparation(tmp_path):
    corpus = build_csv_corpus(tmp_path)
    custom.prepare_custom(
        corpus, tmp_path / "out", labels_csv="labels.csv", split="stratified"
    )
    labels = os.path.join(corpus, "labels.csv")
    with open(labels) as handle:
        text = handle.read()
    with open(labels, "w") as handle:
        handle.write(
            text.replace(
                "Happy/SM1_F1_H1.wav,SM1,male,Happy",
                "Happy/SM1_F1_H1.wav,SM1,male,Sad",
            )
        )
    manifests = custom.prepare_custom(
        corpus, tmp_path / "out", labels_csv="labels.csv", split="stratified"
    )
    labels_by_id = {row["ID"]: row["emo"] for row in rows_of(manifests)}
    assert labels_by_id["Happy-SM1_F1_H1"] == "sad"


def test_rerun_after_a_crash_matches_an_uninterrupted_run(
    tmp_path, csv_corpus, monkeypatch
):
    custom.prepare_custom(
        csv_corpus, tmp_path / "clean", labels_csv="labels.csv", n_folds=3
    )
    with monkeypatch.context() as patch:
        interrupt_csv_writes(patch, custom, after=4)
        with pytest.raises(Interrupted):
            custom.prepare_custom(
                csv_corpus,
                tmp_path / "crashed",
                labels_csv="labels.csv",
                n_folds=3,
            )
    custom.prepare_custom(
        csv_corpus, tmp_path / "crashed", labels_csv="labels.csv", n_folds=3
    )
    assert_same_files(tmp_path / "clean", tmp_path / "crashed")


def test_unchanged_options_skip_and_changed_options_redo(
    tmp_path, csv_corpus, monkeypatch
):
    custom.prepare_custom(
        csv_corpus, tmp_path / "out", labels_csv="labels.csv", n_folds=3
    )
    interrupt_csv_writes(monkeypatch, custom, after=0)
    custom.prepare_custom(
        csv_corpus, tmp_path / "out", labels_csv="labels.csv", n_folds=3
    )  # skipped
    with pytest.raises(Interrupted):
        custom.prepare_custom(
            csv_corpus,
            tmp_path / "out",
            labels_csv="labels.csv",
            n_folds=3,
            seed=7,
        )


def test_command_line_prepares_and_prints_the_summary(tmp_path, csv_corpus):
    result = run_script(
        SCRIPT,
        f"--data_folder={csv_corpus}",
        f"--save_folder={tmp_path / 'out'}",
        "--labels_csv=labels.csv",
        "--n_folds=3",
    )
    assert result.returncode == 0, result.stderr
    assert "| fold3/test | 16 |" in result.stdout
    assert "2 files skipped" in result.stderr
