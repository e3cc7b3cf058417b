#!/usr/bin/env python3
"""Speech emotion recognition on your own labelled corpus (RAVDESS, EmoDB, ...).

    python recipes/custom/train.py hparams/superb_fbank.yaml \
        --data_folder=/path/to/corpus --labels_csv=labels.csv [--split=speaker_kfold --n_folds=5]

The corpus is either a CSV of ``path,emotion,speaker`` (paths relative to --data_folder)
or a tree ``<data_folder>/<emotion>/**/*.wav``; see ``custom_prepare.prepare_custom``.
"""

from custom_prepare import prepare_custom

from ser_modules.recipe import main

DATASET_DEFAULTS = {"crop_seconds": 6.5, "selection_metric": "UA"}

if __name__ == "__main__":
    main(prepare_custom, DATASET_DEFAULTS, "custom")
