#!/usr/bin/env python3
"""Speech emotion recognition on MELD (7 classes, official train / dev / test split).

    python recipes/MELD/train.py hparams/superb_wavlm.yaml \
        --data_folder=/path/to/MELD.Raw --ssl_source=/path/to/wavlm-large

The audio is decoded from the mp4 files once, during preparation. The checkpoint is
selected on dev by weighted F1, the paper's primary MELD metric.
"""

from meld_prepare import prepare_meld

from ser_modules.recipe import main

DATASET_DEFAULTS = {"crop_seconds": 4.5, "selection_metric": "WF1"}

if __name__ == "__main__":
    main(prepare_meld, DATASET_DEFAULTS, "MELD")
