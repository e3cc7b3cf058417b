"""IEMOCAP preparation: labels, speakers, protocols and release checks on a fixture tree
laid out exactly as ``IEMOCAP_full_release``."""

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

SCRIPT = "recipes/IEMOCAP/iemocap_prepare.py"
iemocap = load_recipe_module(SCRIPT)

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# Two dialogs per session: (dialog suffix, [(utterance suffix, label as annotated)]).
# The first dialog is named after F but has M turns, the second the other way round.
DIALOGS = [
    (
        "F_impro01",
        [
            ("F000", "neu"),
            ("F001", "hap"),
            ("F002", "exc"),
            ("F003", "sad"),
            ("F004", "ang"),
            ("F005", "fru"),
            ("M000", "neu"),
            ("M001", "sad"),
            ("M002", "ang"),
            ("M003", "xxx"),
        ],
    ),
    (
        "M_script01_1",
        [
            ("M000", "hap"),
            ("M001", "neu"),
            ("F000", "oth"),
            ("F001", "sad"),
            ("F002", "ang"),
            ("F003", "exc"),
        ],
    ),
]
KEPT_PER_SESSION = 13  # the labels above that are neu/hap/exc/sad/ang
EXPECTED_LABELS = {
    "neu": 3,
    "hap": 4,
    "sad": 3,
    "ang": 3,
}  # per session, exc merged into hap


def label_block(utterance, label, start):
    """A label line followed by per-annotator lines, as in the release."""
    return (
        f"[{start:.4f} - {start + 1.5:.4f}]\t{utterance}\t{label}\t[2.5000, 3.0000, 2.5000]\n"
        "C-E1:\tNeutral;\t()\n"
        "C-E2:\tFrustration;\t(annoyed)\n"
        "A-E2:\tval 3; act 2; dom  2;\t()\n\n"
    )


def build_release(root, sessions=(1, 2, 3, 4, 5)):
    """Write an IEMOCAP_full_release tree with every trap; returns its path."""
    release = os.path.join(root, "IEMOCAP_full_release")
    for number in sessions:
        session = os.path.join(release, f"Session{number}")
        evaluation = os.path.join(session, "dialog", "EmoEvaluation")
        for suffix, turns in DIALOGS:
            dialog = f"Ses0{number}{suffix}"
            text = HEADER + "".join(
                label_block(f"{dialog}_{turn}", label, 2.0 * index)
                for index, (turn, label) in enumerate(turns)
            )
            os.makedirs(evaluation, exist_ok=True)
            with open(os.path.join(evaluation, dialog + ".txt"), "w") as handle:
                handle.write(text)
            # Sub-folder files in the label-line format, with conflicting labels for kept
            # and dropped turns: reading them would change labels and counts.
            conflicting = "".join(
                label_block(
                    f"{dialog}_{turn}", "ang" if label != "ang" else "neu", 0.0
                )
                for turn, label in turns
            )
            for subfolder, name in [
                ("Categorical", f"{dialog}_e1_cat.txt"),
                ("Attribute", f"{dialog}_e2_atr.txt"),
                ("Self-evaluation", f"{dialog}.txt"),
            ]:
                os.makedirs(os.path.join(evaluation, subfolder), exist_ok=True)
                with open(
                    os.path.join(evaluation, subfolder, name), "w"
                ) as handle:
                    handle.write(HEADER + conflicting)
            for turn, _ in turns:
                write_tone(
                    os.path.join(
                        session,
                        "sentences",
                        "wav",
                        dialog,
                        f"{dialog}_{turn}.wav",
                    ),
                    0.05,
                )
    return release


@pytest.fixture
def fixture_is_full_release(monkeypatch):
    """Make the fixture's 13 utterances per session the expected full-release counts."""
    monkeypatch.setattr(
        iemocap,
        "EXPECTED_SESSION_COUNTS",
        {f"Ses0{n}": KEPT_PER_SESSION for n in range(1, 6)},
    )


def all_rows(manifests, fold="fold1"):
    return [
        row
        for split in ("train", "valid", "test")
        for row in read_csv(manifests[fold][split])
    ]


def test_labels_come_only_from_top_level_evaluation_files(
    tmp_path, fixture_is_full_release
):
    manifests = iemocap.prepare_iemocap(
        build_release(tmp_path), tmp_path / "out"
    )
    rows = all_rows(manifests)
    assert len(rows) == 5 * KEPT_PER_SESSION
    by_id = {row["ID"]: row["emo"] for row in rows}
    assert by_id["Ses01F_impro01_F000"] == "neu"  # sub-folders say ang
    assert by_id["Ses03F_impro01_F004"] == "ang"  # sub-folders say neu
    assert (
        "Ses01F_impro01_F005" not in by_id
    )  # fru, although sub-folders say ang


def test_exc_is_merged_into_hap_and_other_labels_are_dropped(
    tmp_path, fixture_is_full_release
):
    rows = all_rows(
        iemocap.prepare_iemocap(build_release(tmp_path), tmp_path / "out")
    )
    labels = {}
    for row in rows:
        labels[row["emo"]] = labels.get(row["emo"], 0) + 1
    assert labels == {
        label: 5 * count for label, count in EXPECTED_LABELS.items()
    }
    by_id = {row["ID"]: row for row in rows}
    assert by_id["Ses02M_script01_1_F003"]["emo"] == "hap"
    assert by_id["Ses02M_script01_1_F003"]["original_emo"] == "exc"
    for dropped in (
        "Ses02F_impro01_M003",
        "Ses02M_script01_1_F000",
        "Ses02F_impro01_F005",
    ):
        assert dropped not in by_id


def test_speaker_is_session_plus_utterance_letter_not_dialog_letter(
    tmp_path, fixture_is_full_release
):
    rows = all_rows(
        iemocap.prepare_iemocap(build_release(tmp_path), tmp_path / "out")
    )
    by_id = {row["ID"]: row for row in rows}
    assert by_id["Ses01F_impro01_M000"]["spk_id"] == "Ses01M"
    assert by_id["Ses01F_impro01_M000"]["gender"] == "male"
    assert by_id["Ses04M_script01_1_F001"]["spk_id"] == "Ses04F"
    assert by_id["Ses04M_script01_1_F001"]["gender"] == "female"
    assert by_id["Ses04M_script01_1_F001"]["session"] == "Ses04"
    assert by_id["Ses04M_script01_1_F001"]["wav"] == (
        "$data_root/Session4/sentences/wav/Ses04M_script01_1/Ses04M_script01_1_F001.wav"
    )
    assert abs(float(by_id["Ses04M_script01_1_F001"]["duration"]) - 0.05) < 1e-9


def test_session_protocol_tests_on_one_whole_session_per_fold(
    tmp_path, fixture_is_full_release
):
    manifests = iemocap.prepare_iemocap(
        build_release(tmp_path), tmp_path / "out"
    )
    assert sorted(manifests) == [f"fold{n}" for n in range(1, 6)]
    for number in range(1, 6):
        fold = manifests[f"fold{number}"]
        test = read_csv(fold["test"])
        assert len(test) == KEPT_PER_SESSION
        assert {row["session"] for row in test} == {f"Ses0{number}"}
        assert {row["spk_id"] for row in test} == {
            f"Ses0{number}F",
            f"Ses0{number}M",
        }


def test_session_protocol_validation_comes_only_from_training_sessions(
    tmp_path, fixture_is_full_release
):
    manifests = iemocap.prepare_iemocap(
        build_release(tmp_path), tmp_path / "out", valid_fraction=0.1
    )
    for number in range(1, 6):
        fold = manifests[f"fold{number}"]
        train, valid = read_csv(fold["train"]), read_csv(fold["valid"])
        # ceil(0.1 * 52) utterances of the 4 training sessions, one of each label at least.
        assert len(valid) == 6 and len(train) == 46
        assert f"Ses0{number}" not in {row["session"] for row in train + valid}
        assert {row["emo"] for row in valid} == set(EXPECTED_LABELS)
        assert not {row["ID"] for row in train} & {row["ID"] for row in valid}


def test_speaker_protocol_tests_one_speaker_and_validates_on_the_session_partner(
    tmp_path, fixture_is_full_release
):
    manifests = iemocap.prepare_iemocap(
        build_release(tmp_path), tmp_path / "out", protocol="speaker"
    )
    assert sorted(manifests, key=lambda name: int(name[4:])) == [
        f"fold{n}" for n in range(1, 11)
    ]
    sizes = {"F": 8, "M": 5}  # kept turns of each speaker per session
    for number in range(1, 6):
        for letter, partner, fold_number in (
            ("F", "M", 2 * number - 1),
            ("M", "F", 2 * number),
        ):
            fold = manifests[f"fold{fold_number}"]
            test, valid, train = (
                read_csv(fold[split]) for split in ("test", "valid", "train")
            )
            assert {row["spk_id"] for row in test} == {f"Ses0{number}{letter}"}
            assert {row["spk_id"] for row in valid} == {
                f"Ses0{number}{partner}"
            }
            assert len(test) == sizes[letter] and len(valid) == sizes[partner]
            assert len(train) == 4 * KEPT_PER_SESSION
            assert f"Ses0{number}" not in {row["session"] for row in train}


def test_missing_wav_of_a_labelled_utterance_is_an_error_naming_it(
    tmp_path, fixture_is_full_release
):
    release = build_release(tmp_path)
    os.remove(
        os.path.join(
            release,
            "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M001.wav",
        )
    )
    with pytest.raises(
        FileNotFoundError, match="Ses02F_impro01_M001.*allow_partial=True"
    ):
        iemocap.prepare_iemocap(release, tmp_path / "out")


def test_missing_wav_is_skipped_and_listed_with_allow_partial(tmp_path):
    release = build_release(tmp_path)
    os.remove(
        os.path.join(
            release,
            "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M001.wav",
        )
    )
    manifests = iemocap.prepare_iemocap(
        release, tmp_path / "out", allow_partial=True
    )
    assert len(all_rows(manifests)) == 5 * KEPT_PER_SESSION - 1
    with open(tmp_path / "out" / "skipped_files.txt") as handle:
        assert handle.read() == (
            "$data_root/Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M001.wav\tmissing wav\n"
        )


def test_partial_release_fails_with_per_session_counts(tmp_path):
    release = build_release(tmp_path, sessions=(1, 2))
    with pytest.raises(ValueError) as error:
        iemocap.prepare_iemocap(release, tmp_path / "out")
    message = str(error.value)
    assert "26 instead of 5531" in message
    assert (
        "Ses01: 13 (expected 1085)" in message
        and "Ses05: 0 (expected 1241)" in message
    )
    assert "--allow_partial=True" in message


def test_partial_release_is_prepared_with_allow_partial(tmp_path, caplog):
    release = build_release(tmp_path, sessions=(1, 2))
    # One training session of 13 utterances: a 40 % share is needed to validate on every label.
    manifests = iemocap.prepare_iemocap(
        release, tmp_path / "out", valid_fraction=0.4, allow_partial=True
    )
    assert sorted(manifests) == ["fold1", "fold2"]
    assert [
        len(read_csv(manifests[fold]["test"])) for fold in ("fold1", "fold2")
    ] == [13, 13]
    assert "Ses02: 13 (expected 1023)" in caplog.text


def test_release_count_check_accepts_exactly_the_full_release():
    iemocap.check_release_counts(
        {
            "Ses01": 1085,
            "Ses02": 1023,
            "Ses03": 1151,
            "Ses04": 1031,
            "Ses05": 1241,
        }
    )
    with pytest.raises(
        ValueError,
        match="5530 instead of 5531.*Ses03: 1150 \\(expected 1151\\)",
    ):
        iemocap.check_release_counts(
            {
                "Ses01": 1085,
                "Ses02": 1023,
                "Ses03": 1150,
                "Ses04": 1031,
                "Ses05": 1241,
            }
        )
    # Right total, wrong split between sessions.
    with pytest.raises(ValueError, match="Ses01: 1086"):
        iemocap.check_release_counts(
            {
                "Ses01": 1086,
                "Ses02": 1022,
                "Ses03": 1151,
                "Ses04": 1031,
                "Ses05": 1241,
            }
        )


def test_full_release_with_one_label_missing_fails(
    tmp_path, fixture_is_full_release
):
    release = build_release(tmp_path)
    path = os.path.join(
        release, "Session3/dialog/EmoEvaluation/Ses03F_impro01.txt"
    )
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(
            text.replace("Ses03F_impro01_F001\thap", "Ses03F_impro01_F001\tfru")
        )
    with pytest.raises(ValueError, match="Ses03: 12 \\(expected 13\\)"):
        iemocap.prepare_iemocap(release, tmp_path / "out")


def test_malformed_label_line_is_an_error_naming_file_and_line(tmp_path):
    release = build_release(tmp_path, sessions=(1,))
    path = os.path.join(
        release, "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    )
    with open(path, "a") as handle:
        handle.write("[12.0 - 13.0] Ses01F_impro01_F009 neu\n")
    with pytest.raises(ValueError, match="Ses01F_impro01.txt, line 53"):
        iemocap.prepare_iemocap(release, tmp_path / "out", allow_partial=True)


def test_rerun_after_a_crash_matches_an_uninterrupted_run(
    tmp_path, monkeypatch, fixture_is_full_release
):
    release = build_release(tmp_path)
    iemocap.prepare_iemocap(release, tmp_path / "clean")
    with monkeypatch.context() as patch:
        interrupt_csv_writes(patch, iemocap, after=7)
        with pytest.raises(Interrupted):
            iemocap.prepare_iemocap(release, tmp_path / "crashed")
    iemocap.prepare_iemocap(release, tmp_path / "crashed")
    assert_same_files(tmp_path / "clean", tmp_path / "crashed")


def test_unchanged_options_skip_and_changed_options_redo(
    tmp_path, monkeypatch, fixture_is_full_release
):
    release = build_release(tmp_path)
    first = iemocap.prepare_iemocap(release, tmp_path / "out", seed=1)
    interrupt_csv_writes(monkeypatch, iemocap, after=0)
    assert (
        iemocap.prepare_iemocap(release, tmp_path / "out", seed=1) == first
    )  # no write
    with pytest.raises(Interrupted):
        iemocap.prepare_iemocap(release, tmp_path / "out", seed=2)


def test_command_line_prepares_and_prints_the_summary(tmp_path):
    release = build_release(tmp_path)
    result = run_script(
        SCRIPT,
        f"--data_folder={release}",
        f"--save_folder={tmp_path / 'out'}",
        "--allow_partial=True",
    )
    assert result.returncode == 0, result.stderr
    assert "| fold1/test | 13 |" in result.stdout
    assert "| fold5/train | 46 |" in result.stdout
    assert (tmp_path / "out" / "fold5" / "valid.csv").is_file()
