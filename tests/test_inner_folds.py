"""Nested cross-validation manifests: inner speaker folds inside one outer fold."""

import collections
import os

import pytest
from prepare_helpers import load_recipe_module, run_script

from ser_modules.manifest import read_csv, write_csv
from ser_modules.recipe import existing_folds

SCRIPT = "recipes/custom/inner_folds.py"
inner = load_recipe_module(SCRIPT)

EMOTIONS = ("angry", "happy", "neutral", "sad")
FIELDS = ["ID", "duration", "wav", "emo", "spk_id", "gender"]


def rows_for(speakers):
    """Two clips per emotion per speaker; ``gender`` checks that extra columns are kept."""
    return [
        {
            "ID": f"{speaker}-{emotion}-{take}",
            "duration": "1.0",
            "wav": f"$data_root/{speaker}_{emotion}_{take}.wav",
            "emo": emotion,
            "spk_id": speaker,
            "gender": "female" if speaker.endswith(("1", "3", "5")) else "male",
        }
        for speaker in speakers
        for emotion in EMOTIONS
        for take in (1, 2)
    ]


@pytest.fixture
def prepared(tmp_path):
    """An outer fold: 8 training speakers, 2 validation speakers, 2 test speakers."""
    folder = tmp_path / "prepared"
    splits = {
        "train": rows_for([f"S{number}" for number in range(1, 9)]),
        "valid": rows_for(["S9", "S10"]),
        "test": rows_for(["T1", "T2"]),
    }
    for split, rows in splits.items():
        write_csv(str(folder / "fold2" / f"{split}.csv"), rows, FIELDS)
    return folder


def read_fold(paths):
    return {split: read_csv(path) for split, path in paths.items()}


def speakers_of(rows):
    return {row["spk_id"] for row in rows}


def test_held_out_inner_folds_partition_the_non_test_clips_by_speaker(
    tmp_path, prepared
):
    written = inner.prepare_inner_folds(
        str(prepared), str(tmp_path / "inner"), fold="fold2", n_folds=5
    )
    assert sorted(written) == [f"fold{g}" for g in range(1, 6)]
    outer = read_csv(str(prepared / "fold2" / "train.csv")) + read_csv(
        str(prepared / "fold2" / "valid.csv")
    )
    held_out_ids = []
    for paths in written.values():
        fold = read_fold(paths)
        assert fold["valid"] == fold["test"]  # held_out: the group is both
        assert not speakers_of(fold["train"]) & speakers_of(fold["test"])
        assert speakers_of(fold["test"]) and fold["train"]
        # Every clip of the outer fold is in the train or the held-out part.
        assert sorted(r["ID"] for r in fold["train"] + fold["test"]) == sorted(
            r["ID"] for r in outer
        )
        held_out_ids += [row["ID"] for row in fold["test"]]
        assert list(fold["train"][0]) == FIELDS  # columns and their order kept
    # Every non-test clip is held out exactly once; the outer test speakers never appear.
    assert sorted(held_out_ids) == sorted(row["ID"] for row in outer)
    assert not any(ID.startswith("T") for ID in held_out_ids)
    # 10 speakers in 5 groups of 2, each speaker with the same labels: balanced groups.
    for paths in written.values():
        held_out = read_csv(paths["test"])
        assert len(speakers_of(held_out)) == 2
        assert collections.Counter(r["emo"] for r in held_out) == dict.fromkeys(
            EMOTIONS, 4
        )


def test_speaker_validation_is_drawn_from_the_inner_training_speakers(
    tmp_path, prepared
):
    written = inner.prepare_inner_folds(
        str(prepared),
        str(tmp_path / "inner"),
        fold="fold2",
        n_folds=2,
        valid="speaker",
        valid_fraction=0.2,
    )
    for paths in written.values():
        fold = read_fold(paths)
        train, valid, test = (
            speakers_of(fold[s]) for s in ("train", "valid", "test")
        )
        assert (
            valid
            and not valid & train
            and not valid & test
            and not train & test
        )
        assert len(train | valid | test) == 10
        assert len(fold["test"]) == 40  # half of the 10 speakers' 80 clips


def test_the_seed_moves_the_speaker_groups_and_a_rerun_repeats_them(
    tmp_path, prepared
):
    def groups(seed, name):
        written = inner.prepare_inner_folds(
            str(prepared),
            str(tmp_path / name),
            fold="fold2",
            n_folds=5,
            seed=seed,
        )
        return [
            frozenset(speakers_of(read_csv(paths["test"])))
            for paths in written.values()
        ]

    assert groups(7, "a") == groups(7, "b")
    assert set(groups(7, "a")) != set(groups(8, "c"))


def test_bad_input_is_refused_with_what_to_do(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="fold9.*--fold"):
        inner.prepare_inner_folds(
            str(prepared), str(tmp_path / "x"), fold="fold9"
        )
    with pytest.raises(ValueError, match="between 2 and 10 folds"):
        inner.prepare_inner_folds(
            str(prepared), str(tmp_path / "x"), fold="fold2", n_folds=11
        )
    with pytest.raises(ValueError, match="--valid=utterance"):
        inner.prepare_inner_folds(
            str(prepared), str(tmp_path / "x"), fold="fold2", valid="utterance"
        )
    assert not os.path.exists(tmp_path / "x")


def test_command_line_writes_the_layout_skip_prep_reads(tmp_path, prepared):
    save = tmp_path / "inner"
    result = run_script(
        SCRIPT,
        f"--prepare_folder={prepared}",
        "--fold=fold2",
        f"--save_folder={save}",
        "--n_folds=2",
    )
    assert result.returncode == 0, result.stderr
    assert "| fold2/test | 40 |" in result.stdout
    found = existing_folds(str(save))
    assert sorted(found) == ["fold1", "fold2"]
    assert found["fold1"]["test"] == str(save / "fold1" / "test.csv")
