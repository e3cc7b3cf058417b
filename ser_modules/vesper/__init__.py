"""Vesper: a compact, emotion-specific speech encoder pretrained from WavLM Large.

Encoder (teacher and student), compression at initialisation, and Hugging Face /
authors'-checkpoint export live here.
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

# --- Lead: add the masking (ser_modules/vesper/masking.py) and loss
# --- (ser_modules/vesper/losses.py) imports and names here.

__all__ = [
    "COMPRESSION_METHODS",
    "VesperEncoder",
    "build_student_from_teacher",
    "count_encoder_parameters",
    "count_wavlm_pretraining_parameters",
    "export_to_huggingface",
    "load_authors_checkpoint",
    "to_authors_state_dict",
    "wavlm_base_config",
    "wavlm_large_config",
]
