"""How a recipe's command line is split between the preparation function and the hparams."""

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
