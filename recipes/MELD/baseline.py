#!/usr/bin/env python3
"""The classic baseline (openSMILE eGeMAPS functionals + linear SVM) on MELD.

    python recipes/MELD/baseline.py hparams/svm_egemaps.yaml --data_folder=...

Same preparation, folds and dataset defaults (crop, selection metric) as ``train.py``; see
:mod:`ser_modules.classic_baseline`.
"""

from meld_prepare import prepare_meld
from train import DATASET_DEFAULTS

from ser_modules.classic_baseline import main

if __name__ == "__main__":
    main(prepare_meld, DATASET_DEFAULTS, "MELD")
