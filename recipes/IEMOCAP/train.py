#!/usr/bin/env python3
"""Speech emotion recognition on IEMOCAP (4 classes, leave-one-session-out, 5 folds).

    python recipes/IEMOCAP/train.py hparams/superb_wavlm.yaml \
        --data_folder=/path/to/IEMOCAP_full_release --ssl_source=/path/to/wavlm-large

Options of ``iemocap_prepare.prepare_iemocap`` (e.g. ``--protocol=speaker`` for the
10-fold leave-one-speaker-out split) and every hparam can be given on the command line;
``--fold=k`` runs one fold. Results: ``<output_folder>/results.{json,md}``.
"""

from iemocap_prepare import prepare_iemocap

from ser_modules.recipe import main

# IEMOCAP defaults of the papers: first 6.5 s, model selected on UA (WA reported too).
DATASET_DEFAULTS = {"crop_seconds": 6.5, "selection_metric": "UA"}

if __name__ == "__main__":
    main(prepare_iemocap, DATASET_DEFAULTS, "IEMOCAP")
