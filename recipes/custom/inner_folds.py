"""Nested cross-validation: speaker-grouped inner folds inside one outer fold.

On a small corpus a fold's validation set is a handful of speakers (4-6 on Urdu), too few
to tell candidate models apart. The inner folds use every non-test speaker of the outer
fold for validation once: the outer fold's ``train.csv`` and ``valid.csv`` are pooled and
split into ``n_folds`` speaker-disjoint, label-stratified groups (``StratifiedGroupKFold``,
as the outer folds); inner fold *g* trains on the other groups and holds out group *g*.
The outer ``test.csv`` is never read, so a choice made on the inner folds is made without
the test speakers.

``--valid=held_out`` (default): group *g* is both the inner fold's ``valid.csv`` and its
``test.csv``, so the test score a run reports is the validation score of its selected
checkpoint, which is what a choice made on validation sees. ``--valid=speaker``: the
validation speakers are drawn from the inner training speakers instead (as
``custom_prepare.py --valid_split=speaker`` does), and group *g* is scored only as test.

Train a candidate on all inner folds of an outer fold; ``results.json`` then holds the
pooled score of every non-test clip (``pooled``) next to the per-inner-fold scores::

    python recipes/custom/inner_folds.py --prepare_folder=runs/urdu/prepared --fold=fold1 \\
        --save_folder=runs/urdu/inner/fold1
    python recipes/custom/train.py hparams/bas_fbank.yaml --data_folder=/data/urdu \\
        --prepare_folder=runs/urdu/inner/fold1 --skip_prep=True \\
        --search=False --architecture=[ffn,msa_ffn,msa_ffn] --output_folder=runs/urdu/icv/...
"""

import os

from ser_modules.manifest import preparation_cli, read_csv, write_csv
from ser_modules.splits import draw_speaker_validation, speaker_kfold

VALID_MODES = ("held_out", "speaker")


def prepare_inner_folds(
    prepare_folder,
    save_folder,
    fold="fold1",
    n_folds=4,
    seed=1234,
    valid="held_out",
    valid_fraction=0.2,
):
    """Write ``<save_folder>/fold<g>/{train,valid,test}.csv`` for g = 1..``n_folds``.

    Arguments
    ---------
    prepare_folder : str
        A preparation's folder (``custom_prepare.py`` or any recipe's), holding
        ``<fold>/train.csv`` and ``<fold>/valid.csv``.
    save_folder : str
        Where the inner folds go (one sub-folder per inner fold, the layout
        ``--skip_prep=True`` reads).
    fold : str
        The outer fold whose non-test clips are split.
    n_folds : int
        Number of inner folds (speaker groups).
    seed : int
        Random state of the speaker shuffle (and of the ``speaker`` validation draw).
    valid : str
        ``held_out``: the held-out group is the inner fold's valid and test set;
        ``speaker``: validation speakers are drawn from the inner training part.
    valid_fraction : float
        Share of the inner training clips moved to validation with ``valid=speaker``.

    Returns
    -------
    dict
        ``{"fold<g>": {"train": csv, "valid": csv, "test": csv}}``.
    """
    if valid not in VALID_MODES:
        raise ValueError(f"--valid={valid} is not one of {VALID_MODES}.")
    sources = [
        os.path.join(prepare_folder, fold, f"{split}.csv")
        for split in ("train", "valid")
    ]
    for path in sources:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: point --prepare_folder to a preparation's "
                f"folder and --fold to one of its fold folders."
            )
    rows = [row for path in sources for row in read_csv(path)]
    for column in ("ID", "emo", "spk_id"):
        if not rows or column not in rows[0]:
            raise ValueError(
                f"{sources[0]} has no {column} column (or no rows): inner folds need "
                "the ID, emo and spk_id columns a preparation writes."
            )
    fieldnames = list(rows[0])
    labels = [row["emo"] for row in rows]
    speakers = [row["spk_id"] for row in rows]
    written = {}
    for number, (train, held_out) in enumerate(
        speaker_kfold(labels, speakers, n_folds, seed), start=1
    ):
        if valid == "speaker":
            train, valid_positions = draw_speaker_validation(
                train, labels, speakers, valid_fraction, seed
            )
        else:
            valid_positions = held_out
        folder = os.path.join(save_folder, f"fold{number}")
        paths = {}
        for split, positions in (
            ("train", train),
            ("valid", valid_positions),
            ("test", held_out),
        ):
            paths[split] = os.path.join(folder, f"{split}.csv")
            write_csv(paths[split], [rows[i] for i in positions], fieldnames)
        written[f"fold{number}"] = paths
    return written


if __name__ == "__main__":
    preparation_cli(prepare_inner_folds)
