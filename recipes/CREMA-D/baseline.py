#!/usr/bin/env python3
"""The classic baseline (openSMILE eGeMAPS functionals + linear SVM) on CREMA-D.

    python recipes/CREMA-D/baseline.py hparams/svm_egemaps.yaml --data_folder=...

Same preparation, folds and dataset defaults (crop, selection metric) as ``train.py``; see
:mod:`ser_modules.classic_baseline`.
"""

from cremad_prepare import prepare_cremad
from train import DATASET_DEFAULTS

from ser_modules.classic_baseline import main

if __name__ == "__main__":
    main(prepare_cremad, DATASET_DEFAULTS, "CREMA-D")
