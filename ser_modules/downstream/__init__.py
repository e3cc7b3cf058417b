"""Downstream models on frozen upstream features, and the BAS block architecture search.

- ``blocks``: the candidate blocks (``msa_ffn``, ``msa``, ``ffn`` of BAS; ``shift`` and
  ``speechformer`` of the Table IV models).
- ``models``: layer combination, masked pooling, the SUPERB classifier and fixed block
  stacks (transformer baselines, simple FFN, derived BAS networks).
- ``supernet``: the Gumbel-softmax super net searched by BAS.
- ``shiftformer``, ``speechformer``: the Vesper paper's Table IV downstream models.
- ``factory``: ``build_downstream``, the ``downstream_model`` switch of the recipes.
- ``architecture``: derive, save, load, plot and tally the architectures found.
"""

from ser_modules.downstream.architecture import (
    architecture_probabilities,
    block_win_counts,
    derive_architecture,
    format_block_table,
    load_architecture,
    plot_theta_heatmap,
    save_architecture,
)
from ser_modules.downstream.blocks import BLOCKS, CANDIDATES, build_block
from ser_modules.downstream.models import (
    BlockStackClassifier,
    LayerCombiner,
    SuperbClassifier,
    masked_mean_pool,
    valid_frame_mask,
)
from ser_modules.downstream.normalization import GlobalFrameNormalization
from ser_modules.downstream.shiftformer import ShiftformerClassifier
from ser_modules.downstream.speechformer import SpeechFormerClassifier
from ser_modules.downstream.supernet import (
    BASSuperNet,
    SearchableLayer,
    derived_state_dict,
    fbnet_temperature,
)
