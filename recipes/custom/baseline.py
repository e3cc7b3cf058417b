#!/usr/bin/env python3
"""The classic baseline (openSMILE eGeMAPS functionals + linear SVM) on your own corpus.

    python recipes/custom/baseline.py hparams/svm_egemaps.yaml \
        --data_folder=/path/to/corpus --labels_csv=labels.csv [--split=speaker_kfold --n_folds=5]

Same preparation, folds and dataset defaults as ``train.py``; see
:mod:`ser_modules.classic_baseline`.
"""

from custom_prepare import prepare_custom
from train import DATASET_DEFAULTS

from ser_modules.classic_baseline import main

if __name__ == "__main__":
    main(prepare_custom, DATASET_DEFAULTS, "custom")
