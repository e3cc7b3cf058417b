#!/usr/bin/env python3
"""Train every architecture of the BAS search space on your corpus and rank them.

    python recipes/custom/rank_architectures.py hparams/bas_fbank.yaml \
        --data_folder=/path/to/corpus --labels_csv=labels.csv --output_folder=OUT \
        [--rank_layers=3] [--rank_seeds=1986,1987] [--fold=1]

Writes ``OUT/ranking.json`` and ``OUT/ranking.md`` (see
``ser_modules.architecture_ranking``); pass ``--architecture_ranking=OUT/ranking.json`` to
a BAS run to have its ``results.md`` say where the derived architecture ranks.
"""

from custom_prepare import prepare_custom
from train import DEFAULT_GROUPS, run_fold

from ser_modules.architecture_ranking import main

if __name__ == "__main__":
    # The same recipe as train.py: its default groups (dataset and small-corpus
    # defaults), and its fold run for every architecture.
    main(prepare_custom, DEFAULT_GROUPS, "custom", run_fold)
