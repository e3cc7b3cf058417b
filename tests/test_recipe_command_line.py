"""How a recipe's command line is split between the preparation function and the hparams."""

import yaml

from ser_modules.recipe import split_preparation_arguments


def prepare_example(
    data_folder, save_folder, n_folds=5, seed=1234, skip_prep=False
):
    """A preparation with a split seed, like the IEMOCAP, CREMA-D and custom ones."""


def test_seed_is_the_training_seed_and_split_seed_the_preparations():
    prepare_kwargs, rest = split_preparation_arguments(
        [
            "hparams/x.yaml",
            "--seed=7",
            "--split_seed",
            "99",
            "--n_folds=3",
            "--lr=0.1",
        ],
        prepare_example,
    )
    assert prepare_kwargs == {"seed": 99, "n_folds": 3}
    assert rest == ["hparams/x.yaml", "--seed=7", "--lr=0.1"]


def test_folders_and_skip_prep_stay_with_the_hparams():
    prepare_kwargs, rest = split_preparation_arguments(
        [
            "hparams/x.yaml",
            "--data_folder=/d",
            "--save_folder=/s",
            "--skip_prep=True",
        ],
        prepare_example,
    )
    assert prepare_kwargs == {}
    assert rest == [
        "hparams/x.yaml",
        "--data_folder=/d",
        "--save_folder=/s",
        "--skip_prep=True",
    ]


def test_a_prefix_of_a_speechbrain_option_is_an_hparams_override():
    """argparse would read --optimizer=sgd as --optimizer_step_limit=sgd (a prefix of a
    SpeechBrain run option) and drop it from the overrides; recipes must not."""
    import speechbrain as sb

    from ser_modules.recipe import parse_arguments

    argv = [
        "hparams/x.yaml",
        "--optimizer=sgd",
        "--lr=0.1",
        "--pool",
        "stats",
        "--device=cpu",
        "--ckpt_interval_steps",
        "5",
    ]
    _, speechbrain_opts, _ = sb.parse_arguments(argv)
    assert speechbrain_opts.optimizer_step_limit == "sgd"  # the trap
    hparams_file, run_opts, overrides = parse_arguments(argv)
    assert hparams_file == "hparams/x.yaml"
    assert yaml.safe_load(overrides) == {
        "optimizer": "sgd",
        "lr": 0.1,
        "pool": "stats",
    }
    assert run_opts.optimizer_step_limit is None
    assert run_opts.device == "cpu" and run_opts.ckpt_interval_steps == 5


def test_custom_recipe_trains_with_the_optimizer_given_on_the_command_line(
    tmp_path,
):
    from recipe_helpers import read_results, run_in_process

    output = str(tmp_path / "run")
    run_in_process(
        "recipes/custom/train.py",
        "hparams/superb_fbank.yaml",
        "--data_folder=tests/samples/audio",
        "--train_csv=tests/samples/manifests/train.csv",
        "--valid_csv=tests/samples/manifests/valid.csv",
        "--test_csv=tests/samples/manifests/test.csv",
        "--skip_prep=True",
        "--number_of_epochs=1",
        "--crop_seconds=1.0",
        "--batch_size=4",
        "--optimizer=sgd",
        f"--output_folder={output}",
    )
    results = read_results(output)
    # the command line wins over the small-corpus default (adamw)
    assert results["overrides"]["optimizer"] == "sgd"
    assert results["identity"]["hparams"]["optimizer"] == "sgd"


def test_numbers_in_e_notation_are_numbers_as_hyperpyyaml_reads_them():
    """YAML 1.2 (ruamel, HyperPyYAML) reads 1e-3 and 5e-05 as numbers; PyYAML's 1.1 as
    strings, which refused --lr=1e-3 and let a 5e-05 default escape the type check."""
    import os

    import pytest
    from hyperpyyaml import load_hyperpyyaml
    from prepare_helpers import REPO_ROOT

    from ser_modules.recipe import parse_overrides, recipe_overrides

    text = "lr: 1e-3\nfinal_lr: 5e-05\nn: 3\nname: adamw\nw: -2E+3"
    assert parse_overrides(text) == load_hyperpyyaml(text)
    assert parse_overrides(text) == {
        "lr": 0.001,
        "final_lr": 0.00005,
        "n": 3,
        "name": "adamw",
        "w": -2000.0,
    }
    path = os.path.join(
        REPO_ROOT, "hparams", "bas_fbank.yaml"
    )  # final_lr: 5e-05
    _, overrides = recipe_overrides(path, "lr: 1e-3\nfinal_lr: 7e-6", "custom")
    assert overrides["lr"] == 0.001 and overrides["final_lr"] == 0.000007
    with pytest.raises(ValueError, match="--final_lr='abc' is not a number"):
        recipe_overrides(path, "final_lr: abc", "custom")
