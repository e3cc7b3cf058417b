"""Where a recipe's manifests come from: given (``--train_csv`` ...), found
(``--skip_prep=True``) or prepared; and which dataset defaults a recipe applies."""

import os

import pytest

from ser_modules.recipe import existing_folds, fold_manifests, recipe_overrides

SPLITS = ("train", "valid", "test")


def never_prepare(**kwargs):
    raise AssertionError(f"the preparation ran with {kwargs}")


def write_fold(folder):
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = os.path.join(folder, f"{split}.csv")
        with open(paths[split], "w", encoding="utf-8") as handle:
            handle.write("ID,duration,wav,emo,spk_id\n")
    return paths


def test_skip_prep_finds_the_folds_without_preparing(tmp_path):
    fold1 = write_fold(tmp_path / "prepared" / "fold1")
    fold2 = write_fold(tmp_path / "prepared" / "fold2")
    os.makedirs(tmp_path / "prepared" / "not_a_fold")
    splits = fold_manifests(
        never_prepare,
        {},
        data_folder=str(tmp_path / "no_corpus_here"),
        prepare_folder=str(tmp_path / "prepared"),
        skip_prep=True,
        given={split: None for split in SPLITS},
    )
    assert splits == {"fold1": fold1, "fold2": fold2}


def test_skip_prep_finds_a_single_split_at_the_top(tmp_path):
    main = write_fold(tmp_path / "prepared")
    assert existing_folds(str(tmp_path / "prepared")) == {"main": main}


def test_skip_prep_without_manifests_names_the_folder(tmp_path):
    empty = tmp_path / "prepared"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        fold_manifests(
            never_prepare,
            {},
            data_folder=str(tmp_path),
            prepare_folder=str(empty),
            skip_prep=True,
        )


def test_given_manifests_are_used_as_they_are(tmp_path):
    given = write_fold(tmp_path / "mine")
    splits = fold_manifests(
        never_prepare,
        {},
        data_folder=str(tmp_path),
        prepare_folder=str(tmp_path / "prepared"),
        skip_prep=False,
        given=given,
    )
    assert splits == {"main": given}
    assert not (tmp_path / "prepared").exists()


def test_some_manifests_given_names_the_missing_ones(tmp_path):
    given = write_fold(tmp_path / "mine")
    given["test"] = None
    with pytest.raises(ValueError, match="--test_csv"):
        fold_manifests(
            never_prepare,
            {},
            data_folder=str(tmp_path),
            prepare_folder=str(tmp_path / "prepared"),
            skip_prep=False,
            given=given,
        )


def test_without_manifests_the_preparation_runs(tmp_path):
    calls = []

    def prepare(data_folder, save_folder, protocol="session"):
        calls.append((data_folder, save_folder, protocol))
        return {"fold1": write_fold(os.path.join(save_folder, "fold1"))}

    splits = fold_manifests(
        prepare,
        {"protocol": "speaker"},
        data_folder="corpus",
        prepare_folder=str(tmp_path / "prepared"),
        skip_prep=False,
        given={split: None for split in SPLITS},
    )
    assert calls == [("corpus", str(tmp_path / "prepared"), "speaker")]
    assert list(splits) == ["fold1"]


def test_a_default_group_applies_only_to_a_file_that_declares_all_of_it(
    tmp_path,
):
    group = {"optimizer": "adamw", "lr": 0.001}
    with_switch = tmp_path / "with_switch.yaml"
    with_switch.write_text("seed: 3\noptimizer: sgd\nlr: 0.1\n")
    without_switch = tmp_path / "without_switch.yaml"
    without_switch.write_text("seed: 3\nlr: 0.1\n")

    _, overrides = recipe_overrides(str(with_switch), "lr: 0.5", "X", group)
    assert overrides["optimizer"] == "adamw"
    assert overrides["lr"] == 0.5  # the command line wins
    _, overrides = recipe_overrides(str(without_switch), "", "X", group)
    assert "lr" not in overrides and "optimizer" not in overrides


def test_the_default_output_folder_names_dataset_file_and_ssl_folder(tmp_path):
    hparams = tmp_path / "superb_ssl.yaml"
    hparams.write_text("seed: 7\nssl_source: !PLACEHOLDER\n")
    _, overrides = recipe_overrides(
        str(hparams), "ssl_source: /models/hubert-large/", "MELD"
    )
    assert overrides["output_folder"] == os.path.join(
        "results", "MELD", "superb_ssl_hubert-large", "7"
    )
