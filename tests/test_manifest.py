"""Specification of the manifest helpers (ser_modules/manifest.py): paths, atomic CSVs, skipping."""

import json
import os

import pytest

from ser_modules.manifest import (
    OPTIONS_FILE,
    atomic_write_text,
    format_summary,
    invalidate_preparation,
    mark_preparation_done,
    preparation_cli,
    read_csv,
    resolve_data_root,
    skip_preparation,
    summarize_manifest,
    to_data_root_path,
    write_csv,
)

ROWS = [
    {
        "ID": "utt1",
        "duration": "1.5",
        "wav": "$data_root/a/utt1.wav",
        "emo": "neu",
        "spk_id": "s1",
    },
    {
        "ID": "utt2",
        "duration": "2.5",
        "wav": "$data_root/a/utt2.wav",
        "emo": "sad",
        "spk_id": "s1",
    },
    {
        "ID": "utt3",
        "duration": "3.0",
        "wav": "$data_root/b/utt3.wav",
        "emo": "neu",
        "spk_id": "s2",
    },
]


# --- $data_root paths ---------------------------------------------------------------------


def test_paths_are_stored_relative_to_the_data_folder_with_forward_slashes(
    tmp_path,
):
    wav = tmp_path / "corpus" / "Session1" / "utt.wav"
    assert (
        to_data_root_path(str(wav), str(tmp_path / "corpus"))
        == "$data_root/Session1/utt.wav"
    )


def test_relative_paths_are_resolved_from_the_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert (
        to_data_root_path("corpus/x/utt.wav", str(tmp_path / "corpus"))
        == "$data_root/x/utt.wav"
    )


def test_path_outside_the_data_folder_is_rejected_naming_both(tmp_path):
    with pytest.raises(
        ValueError, match=r"other\.wav.*not inside the data folder.*corpus"
    ):
        to_data_root_path(str(tmp_path / "other.wav"), str(tmp_path / "corpus"))


def test_file_whose_name_starts_with_two_dots_is_inside_the_data_folder(
    tmp_path,
):
    assert (
        to_data_root_path(str(tmp_path / "..x.wav"), str(tmp_path))
        == "$data_root/..x.wav"
    )


def test_resolve_data_root_inverts_to_data_root_path_for_a_moved_corpus(
    tmp_path,
):
    stored = to_data_root_path(
        str(tmp_path / "old" / "a" / "utt.wav"), str(tmp_path / "old")
    )
    assert (
        resolve_data_root(stored, str(tmp_path / "new"))
        == str(tmp_path / "new") + "/a/utt.wav"
    )


def test_speechbrain_replacements_resolve_the_stored_paths(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    wav = to_data_root_path(str(tmp_path / "a" / "utt1.wav"), str(tmp_path))
    write_csv(
        str(tmp_path / "train.csv"),
        [{"ID": "utt1", "duration": "1.0", "wav": wav}],
    )
    dataset = DynamicItemDataset.from_csv(
        str(tmp_path / "train.csv"), replacements={"data_root": str(tmp_path)}
    )
    dataset.set_output_keys(["wav"])
    assert dataset[0]["wav"] == str(tmp_path / "a" / "utt1.wav")


# --- write_csv / read_csv -----------------------------------------------------------------


def test_written_manifest_reads_back_with_its_column_order(tmp_path):
    path = str(tmp_path / "train.csv")
    write_csv(path, ROWS, fieldnames=["ID", "duration", "wav", "emo", "spk_id"])
    assert read_csv(path) == ROWS
    with open(path, encoding="utf-8") as handle:
        assert handle.readline().strip() == "ID,duration,wav,emo,spk_id"


def test_values_with_commas_quotes_and_non_ascii_survive_the_round_trip(
    tmp_path,
):
    rows = [
        {
            "ID": "dia1_utt0",
            "duration": "1.0",
            "text": 'Oh, "really"? Café… 日本',
        }
    ]
    write_csv(str(tmp_path / "m.csv"), rows)
    assert read_csv(str(tmp_path / "m.csv")) == rows


def test_id_must_be_the_first_column(tmp_path):
    with pytest.raises(ValueError, match="first column.*ID"):
        write_csv(
            str(tmp_path / "m.csv"), ROWS, fieldnames=["duration", "ID", "wav"]
        )


def test_duplicate_ids_are_rejected_naming_them(tmp_path):
    rows = ROWS + [dict(ROWS[1])]
    with pytest.raises(ValueError, match=r"Duplicated IDs.*utt2"):
        write_csv(str(tmp_path / "m.csv"), rows)
    assert not (tmp_path / "m.csv").exists()


def _previous_manifest(tmp_path):
    path = str(tmp_path / "train.csv")
    write_csv(path, ROWS)
    with open(path, "rb") as handle:
        return path, handle.read()


def _assert_unchanged_and_no_temp_file(tmp_path, path, previous):
    with open(path, "rb") as handle:
        assert handle.read() == previous
    assert sorted(os.listdir(tmp_path)) == ["train.csv"]


def test_exception_from_a_row_generator_leaves_the_previous_file_intact(
    tmp_path,
):
    path, previous = _previous_manifest(tmp_path)

    def rows():
        yield {
            "ID": "new1",
            "duration": "1.0",
            "wav": "x",
            "emo": "hap",
            "spk_id": "s9",
        }
        raise RuntimeError("corpus reader failed")

    with pytest.raises(RuntimeError, match="corpus reader failed"):
        write_csv(path, rows())
    _assert_unchanged_and_no_temp_file(tmp_path, path, previous)


def test_failure_while_writing_rows_leaves_the_previous_file_intact_and_no_temp_file(
    tmp_path,
):
    path, previous = _previous_manifest(tmp_path)

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot format this value")

    rows = [
        dict(ROWS[0], ID="new1"),
        dict(ROWS[0], ID="new2", duration=Unprintable()),
    ]
    with pytest.raises(RuntimeError, match="cannot format"):
        write_csv(path, rows)
    _assert_unchanged_and_no_temp_file(tmp_path, path, previous)


def test_row_missing_a_field_is_rejected_and_leaves_the_previous_file_intact(
    tmp_path,
):
    path, previous = _previous_manifest(tmp_path)
    incomplete = {
        key: value for key, value in ROWS[2].items() if key != "duration"
    }
    with pytest.raises((ValueError, KeyError), match="duration"):
        write_csv(path, [dict(ROWS[0], ID="new1"), incomplete])
    _assert_unchanged_and_no_temp_file(tmp_path, path, previous)


def test_atomic_write_text_failure_leaves_the_previous_file_intact(tmp_path):
    path = str(tmp_path / "train.csv")
    atomic_write_text(path, "old content\n")
    with pytest.raises(TypeError):
        atomic_write_text(path, b"bytes are not text")
    _assert_unchanged_and_no_temp_file(tmp_path, path, b"old content\n")


def test_write_csv_creates_missing_folders(tmp_path):
    path = str(tmp_path / "save" / "fold1" / "train.csv")
    write_csv(path, ROWS)
    assert len(read_csv(path)) == 3


# --- skip / mark / invalidate -------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path):
    """A save folder whose preparation wrote one manifest and was marked done."""
    output = str(tmp_path / "train.csv")
    write_csv(output, ROWS)
    options = {
        "data_folder": "/data/IEMOCAP",
        "split": "session",
        "seed": 1986,
        "folds": (1, 2),
    }
    mark_preparation_done(str(tmp_path), options, [output])
    return str(tmp_path), options, [output]


def test_nothing_is_skipped_before_a_first_preparation(tmp_path):
    assert not skip_preparation(str(tmp_path), {"seed": 1}, [])


def test_same_options_and_existing_outputs_skip(prepared):
    save_folder, options, outputs = prepared
    assert skip_preparation(save_folder, dict(options), outputs)


def test_options_compare_as_stored_in_json_so_tuples_equal_lists(prepared):
    save_folder, options, outputs = prepared
    assert skip_preparation(save_folder, dict(options, folds=[1, 2]), outputs)


def test_changed_option_does_not_skip(prepared):
    save_folder, options, outputs = prepared
    assert not skip_preparation(save_folder, dict(options, seed=2013), outputs)


def test_added_option_does_not_skip(prepared):
    save_folder, options, outputs = prepared
    assert not skip_preparation(
        save_folder, dict(options, valid_ratio=0.1), outputs
    )


def test_missing_output_does_not_skip(prepared):
    save_folder, options, outputs = prepared
    os.remove(outputs[0])
    assert not skip_preparation(save_folder, options, outputs)


def test_invalidated_preparation_does_not_skip(prepared):
    save_folder, options, outputs = prepared
    invalidate_preparation(save_folder)
    assert not os.path.exists(os.path.join(save_folder, OPTIONS_FILE))
    assert not skip_preparation(save_folder, options, outputs)


def test_corrupt_options_record_does_not_skip(prepared):
    save_folder, options, outputs = prepared
    with open(
        os.path.join(save_folder, OPTIONS_FILE), "w", encoding="utf-8"
    ) as handle:
        handle.write('{"options": ')  # a run killed while writing the record
    assert not skip_preparation(save_folder, options, outputs)


def test_options_record_stores_outputs_relative_to_the_save_folder(prepared):
    save_folder, _, _ = prepared
    with open(
        os.path.join(save_folder, OPTIONS_FILE), encoding="utf-8"
    ) as handle:
        assert json.load(handle)["outputs"] == ["train.csv"]


# --- summaries ----------------------------------------------------------------------------


def test_summarize_manifest_counts_utterances_hours_labels_and_speakers(
    tmp_path,
):
    write_csv(str(tmp_path / "m.csv"), ROWS)
    assert summarize_manifest(str(tmp_path / "m.csv")) == {
        "utterances": 3,
        "hours": pytest.approx(7.0 / 3600.0),
        "labels": {"neu": 2, "sad": 1},
        "speakers": 2,
    }


def test_summarize_manifest_without_label_and_speaker_columns(tmp_path):
    write_csv(
        str(tmp_path / "m.csv"), [{"ID": "a", "duration": "3600", "wav": "x"}]
    )
    assert summarize_manifest(str(tmp_path / "m.csv")) == {
        "utterances": 1,
        "hours": 1.0,
    }


def test_format_summary_has_one_table_row_per_manifest(tmp_path):
    write_csv(str(tmp_path / "train.csv"), ROWS)
    write_csv(str(tmp_path / "test.csv"), ROWS[:1])
    table = format_summary(
        {
            "train": str(tmp_path / "train.csv"),
            "test": str(tmp_path / "test.csv"),
        }
    )
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| train | 3 | 0.002 | 2 | neu: 2, sad: 1 |"
    assert lines[3] == "| test | 1 | 0.000 | 1 | neu: 1 |"


# --- preparation_cli ----------------------------------------------------------------------


def _fake_prepare(calls, tmp_path):
    def prepare_fake(
        data_folder,
        save_folder,
        use_cache=False,
        n_folds=5,
        valid_ratio=0.1,
        split="session",
        seed=None,
    ):
        """Prepare a fake corpus."""
        calls.append(
            {
                "data_folder": data_folder,
                "save_folder": save_folder,
                "use_cache": use_cache,
                "n_folds": n_folds,
                "valid_ratio": valid_ratio,
                "split": split,
                "seed": seed,
            }
        )
        path = str(tmp_path / "train.csv")
        write_csv(path, ROWS)
        return {"fold1": {"train": path}}

    return prepare_fake


def test_cli_converts_values_to_the_types_of_the_defaults(tmp_path):
    calls = []
    argv = [
        "--data_folder",
        "/data",
        "--save_folder",
        "/save",
        "--use_cache",
        "True",
    ]
    argv += ["--n_folds", "10", "--valid_ratio", "0.25", "--split", "speaker"]
    preparation_cli(_fake_prepare(calls, tmp_path), argv)
    assert calls == [
        {
            "data_folder": "/data",
            "save_folder": "/save",
            "use_cache": True,
            "n_folds": 10,
            "valid_ratio": 0.25,
            "split": "speaker",
            "seed": None,
        }
    ]
    assert (
        type(calls[0]["n_folds"]) is int
        and type(calls[0]["valid_ratio"]) is float
    )


def test_cli_leaves_unset_parameters_at_their_defaults(tmp_path):
    calls = []
    preparation_cli(_fake_prepare(calls, tmp_path), REQUIRED)
    assert (
        calls[0]["use_cache"] is False
        and calls[0]["n_folds"] == 5
        and calls[0]["valid_ratio"] == 0.1
    )


REQUIRED = ["--data_folder", "d", "--save_folder", "s"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("False", False),
        ("0", False),
        ("no", False),
    ],
)
def test_cli_booleans_accept_true_false_spellings(tmp_path, text, expected):
    calls = []
    preparation_cli(
        _fake_prepare(calls, tmp_path), REQUIRED + ["--use_cache", text]
    )
    assert calls[0]["use_cache"] is expected


def test_cli_float_parameter_given_as_an_integer_becomes_a_float(tmp_path):
    calls = []
    preparation_cli(
        _fake_prepare(calls, tmp_path), REQUIRED + ["--valid_ratio", "1"]
    )
    assert (
        calls[0]["valid_ratio"] == 1.0
        and type(calls[0]["valid_ratio"]) is float
    )


def test_cli_none_default_accepts_none_numbers_and_other_text(tmp_path):
    calls = []
    prepare = _fake_prepare(calls, tmp_path)
    for text in ("None", "2013", "0.25", "abc"):
        preparation_cli(prepare, REQUIRED + ["--seed", text])
    assert [call["seed"] for call in calls] == [None, 2013, 0.25, "abc"]
    assert isinstance(calls[1]["seed"], int)


@pytest.mark.parametrize(
    "option, text",
    [
        ("--use_cache", "maybe"),
        ("--n_folds", "2.5"),
        ("--valid_ratio", "a tenth"),
    ],
)
def test_cli_rejects_values_that_do_not_fit_the_type(tmp_path, option, text):
    with pytest.raises(ValueError):
        preparation_cli(_fake_prepare([], tmp_path), REQUIRED + [option, text])


def test_cli_requires_parameters_without_default(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preparation_cli(_fake_prepare([], tmp_path), ["--data_folder", "d"])
    assert "--save_folder" in capsys.readouterr().err


def test_cli_prints_the_summary_of_the_returned_manifests(tmp_path, capsys):
    preparation_cli(_fake_prepare([], tmp_path), REQUIRED)
    assert (
        "| fold1/train | 3 | 0.002 | 2 | neu: 2, sad: 1 |"
        in capsys.readouterr().out
    )
