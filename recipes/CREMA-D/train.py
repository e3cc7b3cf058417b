#!/usr/bin/env python3
"""Speech emotion recognition on CREMA-D (6 classes).

    python recipes/CREMA-D/train.py hparams/superb_wavlm.yaml \
        --data_folder=/path/to/CREMA-D --ssl_source=/path/to/wavlm-large [--split=speaker]

``--split=random`` (default) is the paper's stratified 80/20 split with shared speakers;
``--split=speaker`` holds out 20 % of the actors. The checkpoint is selected on WA.
"""

from cremad_prepare import prepare_cremad

from ser_modules.recipe import main

DATASET_DEFAULTS = {"crop_seconds": 3.0, "selection_metric": "WA"}

if __name__ == "__main__":
    main(prepare_cremad, DATASET_DEFAULTS, "CREMA-D")
