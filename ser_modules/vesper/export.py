"""Move Vesper encoders in and out of this project: Hugging Face export, authors' checkpoints.

* :func:`export_to_huggingface` writes a pretrained Vesper as a plain Hugging Face WavLM
  folder, so that every upstream wrapper that loads WavLM (``transformers``, SpeechBrain)
  loads Vesper with no custom code.
* :func:`load_authors_checkpoint` reads a checkpoint saved by the Vesper authors' code
  (HappyColor/Vesper), whose encoder weights use the original WavLM names.

The final encoder LayerNorm of the export
-----------------------------------------
``transformers.WavLMModel`` (pre-LN) ends with a LayerNorm that Vesper does not have:
the student is pretrained without it. The export writes it with weight 1 and bias 0,
not the teacher's. During pretraining every predictor reads the student's output
through a LayerNorm without affine parameters, so LN(weight 1, bias 0) of layer N is
exactly the representation the losses shaped; the teacher's LayerNorm carries
per-channel gains fitted to WavLM Large's layer-24 statistics, which the student's layer
N (initialised from layer 18 or 22, then retrained) does not share. The exported model
therefore gives: ``hidden_states[k]`` = Vesper's raw layer k for k < N (and for k = N
with transformers 5.x, whose last hidden state is taken before the LayerNorm), and
``last_hidden_state`` = that parameter-free normalisation of layer N.
"""

import copy

import torch
from transformers import WavLMModel

from ser_modules.upstreams.convert_wavlm_checkpoint import (
    rename_huggingface_to_original,
    rename_original_to_huggingface,
    save_feature_extractor_config,
)
from ser_modules.vesper.encoder import (
    FINAL_LAYER_NORM_PREFIX,
    VesperEncoder,
    split_layer_key,
)

# Prefix of the encoder weights inside the authors' checkpoint["model"]; the other
# entries are the pretraining predictors, which are not part of the encoder.
AUTHORS_ENCODER_PREFIX = "vesper."


def export_to_huggingface(encoder, out_dir):
    """Write a Vesper encoder as a Hugging Face WavLM folder.

    Arguments
    ---------
    encoder : VesperEncoder
        N-layer encoder (trained student or any other).
    out_dir : str | os.PathLike
        Receives config.json (``num_hidden_layers`` = N, ``vesper`` = ``{"num_layers": N}``
        marking the export), the weights and
        preprocessor_config.json (16 kHz, ``do_normalize`` = ``encoder.normalize_waveform``).

    Returns
    -------
    transformers.WavLMModel
        The exported model (eval mode), equal to what ``WavLMModel.from_pretrained(out_dir)`` loads.
    """
    config = copy.deepcopy(encoder.config)
    config.architectures = ["WavLMModel"]
    # Says what the folder is (transformers keeps unknown config keys): a run's identity
    # records it, so reports name the upstream Vesper-N whatever its folder is called.
    config.vesper = {"num_layers": int(config.num_hidden_layers)}
    model = WavLMModel(config)
    state = {
        key: value.detach().cpu() for key, value in encoder.state_dict().items()
    }
    # See the module docstring for why the final LayerNorm is the parameter-free one.
    state[FINAL_LAYER_NORM_PREFIX + "weight"] = torch.ones(config.hidden_size)
    state[FINAL_LAYER_NORM_PREFIX + "bias"] = torch.zeros(config.hidden_size)
    if not hasattr(model, "masked_spec_embed"):
        # transformers only creates the mask embedding when SpecAugment is configured.
        state.pop("masked_spec_embed")
    model.load_state_dict(state, strict=True)
    model.eval().save_pretrained(out_dir)
    save_feature_extractor_config(
        out_dir, do_normalize=encoder.normalize_waveform
    )
    return model


def load_authors_checkpoint(path, teacher_config, normalize_waveform=True):
    """Load the encoder of a checkpoint saved by the Vesper authors' code.

    Arguments
    ---------
    path : str | os.PathLike
        ``torch.save``-d dict whose ``"model"`` entry holds ``vesper.*`` keys in the
        original WavLM naming (``vesper.encoder.layers.0.self_attn.grep_a``, ...);
        other keys (the predictors) are ignored. Loaded with ``weights_only=True``.
    teacher_config : transformers.WavLMConfig
        Architecture of the teacher (WavLM Large); the number of layers is read from
        the checkpoint.
    normalize_waveform : bool
        Input normalisation of the encoder (True for Vesper, as for WavLM Large).

    Returns
    -------
    VesperEncoder
        With N layers, in eval mode.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in checkpoint:
        raise KeyError(
            f"{path}: expected the authors' format with a 'model' entry, found {sorted(checkpoint)}."
        )
    original_state = {
        key[len(AUTHORS_ENCODER_PREFIX) :]: value
        for key, value in checkpoint["model"].items()
        if key.startswith(AUTHORS_ENCODER_PREFIX)
    }
    if not original_state:
        raise ValueError(
            f"{path}: no '{AUTHORS_ENCODER_PREFIX}*' keys in checkpoint['model']; is it a Vesper checkpoint?"
        )
    state, unmapped = rename_original_to_huggingface(
        original_state, teacher_config.feat_extract_norm
    )
    if unmapped:
        raise ValueError(
            f"{path}: encoder keys with no WavLM counterpart: {unmapped}."
        )
    # Vesper has no final encoder LayerNorm; ignore one if a checkpoint carries it.
    state = {
        key: value
        for key, value in state.items()
        if not key.startswith(FINAL_LAYER_NORM_PREFIX)
    }
    layer_indices = {
        split[0] for split in map(split_layer_key, state) if split is not None
    }
    if not layer_indices:
        raise ValueError(
            f"{path}: no Transformer layer weights under '{AUTHORS_ENCODER_PREFIX}encoder.layers.'."
        )
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = max(layer_indices) + 1
    encoder = VesperEncoder(config, normalize_waveform=normalize_waveform)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def to_authors_state_dict(encoder):
    """State dict of a Vesper encoder in the authors' format (``vesper.`` + original WavLM names).

    Arguments
    ---------
    encoder : VesperEncoder

    Returns
    -------
    dict[str, torch.Tensor]
        Suitable as (part of) the ``"model"`` entry read by :func:`load_authors_checkpoint`.
    """
    original = rename_huggingface_to_original(
        encoder.state_dict(), encoder.config.feat_extract_norm
    )
    return {
        AUTHORS_ENCODER_PREFIX + key: value for key, value in original.items()
    }
