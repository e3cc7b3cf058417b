#!/usr/bin/env python3
"""Check a BAS architecture one layer at a time by nested cross-validation on one fold.

    python recipes/custom/refine_architecture.py hparams/bas_fbank.yaml \
        --data_folder=/path/to/corpus --prepare_folder=PREP --fold=fold1 --output_folder=OUT \
        (--architecture=[msa_ffn,msa_ffn,msa_ffn] | --bas_results=BAS_OUT/results.json) \
        [--n_inner_folds=4] [--inner_seed=1234] [--seed=1986] [--jobs=2] \
        [--architecture_ranking=RANKING/ranking.json] [train.py options]

Writes the inner folds of the fold's training + validation clips (``inner_folds.py``),
trains the base and each architecture one layer away from it on all of them (this
folder's ``train.py``), and writes ``OUT/refinement.{json,md}``: each layer takes the block
with the best pooled inner-CV score (and, given a ranking of the outer folds, where each
candidate ranks on the fold's test clips). See ``ser_modules.layer_refinement``.
"""

import os

from inner_folds import prepare_inner_folds

from ser_modules.layer_refinement import main

if __name__ == "__main__":
    main(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
        prepare_inner_folds,
    )
