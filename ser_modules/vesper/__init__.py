"""Vesper: a compact, emotion-specific speech encoder pretrained from WavLM Large.

- ``encoder``: the encoder (teacher and student share it) and the WavLM configurations;
- ``compression``: the student built from the teacher at initialisation;
- ``masking``: energy-guided (or random) span masking of the student's input;
- ``losses``: the predictors and the low / high / cross-layer pretraining losses;
- ``pretraining``: the SpeechBrain Brain that trains the student
  (``recipes/LSSED/pretrain.py``);
- ``export``: the trained student as a Hugging Face WavLM folder, and loading of the
  authors' checkpoints.

The recipe, its defaults and the paper's numbers are described in
``recipes/LSSED/README.md``.
"""

from ser_modules.vesper.compression import (
    COMPRESSION_METHODS,
    build_student_from_teacher,
)
from ser_modules.vesper.encoder import (
    VesperEncoder,
    count_encoder_parameters,
    count_wavlm_pretraining_parameters,
    wavlm_base_config,
    wavlm_large_config,
)
from ser_modules.vesper.export import (
    export_to_huggingface,
    load_authors_checkpoint,
    to_authors_state_dict,
)
from ser_modules.vesper.losses import VesperPretrainingLoss
from ser_modules.vesper.masking import EnergyGuidedMasker

__all__ = [
    "COMPRESSION_METHODS",
    "EnergyGuidedMasker",
    "VesperEncoder",
    "VesperPretrainingLoss",
    "build_student_from_teacher",
    "count_encoder_parameters",
    "count_wavlm_pretraining_parameters",
    "export_to_huggingface",
    "load_authors_checkpoint",
    "to_authors_state_dict",
    "wavlm_base_config",
    "wavlm_large_config",
]
