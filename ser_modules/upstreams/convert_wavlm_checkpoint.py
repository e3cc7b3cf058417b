"""Convert an original WavLM release checkpoint (microsoft/unilm ``.pt``) into a Hugging Face WavLM folder.

The original checkpoint is ``{"cfg": dict of unilm WavLMConfig fields, "model": state dict}``
with fairseq-style names (``encoder.layers.0.self_attn.k_proj.weight``, ...). This module
holds the one mapping between those names and ``transformers.WavLMModel``'s, used in
both directions: here for the release checkpoints, and by
:func:`ser_modules.vesper.export.load_authors_checkpoint` for checkpoints saved by the
Vesper authors' code (same names under a ``vesper.`` prefix).

Command line::

    python -m ser_modules.upstreams.convert_wavlm_checkpoint WavLM-Large.pt wavlm_large_hf/

The output folder (config.json, weights, preprocessor_config.json) loads offline with
``transformers.WavLMModel.from_pretrained`` and SpeechBrain's WavLM wrapper.
"""

import argparse
import ast
import logging
import re

import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000

# Defaults of unilm's WavLMConfig for the fields used here: the original code applies a
# checkpoint's cfg on top of these, so a missing field means this value.
ORIGINAL_CONFIG_DEFAULTS = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "normalize": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}

# (original name, Hugging Face name). Placeholders: {i} layer index, {p} weight|bias,
# {proj} attention projection. The CNN norm entry depends on the extractor mode.
_SHARED_KEY_TEMPLATES = (
    (
        "feature_extractor.conv_layers.{i}.0.{p}",
        "feature_extractor.conv_layers.{i}.conv.{p}",
    ),
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}"),
    ("post_extract_proj.{p}", "feature_projection.projection.{p}"),
    ("mask_emb", "masked_spec_embed"),
    # torch.nn.utils.weight_norm's g / v are parametrizations.weight.original0 / 1 in the
    # torch.nn.utils.parametrizations.weight_norm that transformers uses.
    (
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    ),
    (
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    ),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}"),
    (
        "encoder.layers.{i}.self_attn.{proj}.{p}",
        "encoder.layers.{i}.attention.{proj}.{p}",
    ),
    (
        "encoder.layers.{i}.self_attn.grep_linear.{p}",
        "encoder.layers.{i}.attention.gru_rel_pos_linear.{p}",
    ),
    (
        "encoder.layers.{i}.self_attn.grep_a",
        "encoder.layers.{i}.attention.gru_rel_pos_const",
    ),
    (
        "encoder.layers.{i}.self_attn.relative_attention_bias.weight",
        "encoder.layers.{i}.attention.rel_attn_embed.weight",
    ),
    (
        "encoder.layers.{i}.self_attn_layer_norm.{p}",
        "encoder.layers.{i}.layer_norm.{p}",
    ),
    (
        "encoder.layers.{i}.fc1.{p}",
        "encoder.layers.{i}.feed_forward.intermediate_dense.{p}",
    ),
    (
        "encoder.layers.{i}.fc2.{p}",
        "encoder.layers.{i}.feed_forward.output_dense.{p}",
    ),
    (
        "encoder.layers.{i}.final_layer_norm.{p}",
        "encoder.layers.{i}.final_layer_norm.{p}",
    ),
)
_CNN_NORM_KEY_TEMPLATES = {
    # extractor_mode "layer_norm": Sequential(conv, dropout, Sequential(transpose, LayerNorm, transpose), GELU)
    "layer": (
        "feature_extractor.conv_layers.{i}.2.1.{p}",
        "feature_extractor.conv_layers.{i}.layer_norm.{p}",
    ),
    # extractor_mode "default": GroupNorm in the first block only
    "group": (
        "feature_extractor.conv_layers.0.2.{p}",
        "feature_extractor.conv_layers.0.layer_norm.{p}",
    ),
}
_PLACEHOLDER_PATTERNS = {
    "i": r"\d+",
    "p": "weight|bias",
    "proj": "q_proj|k_proj|v_proj|out_proj",
}


def _template_regex(template):
    """Compile a key template into a full-match regex with one named group per placeholder."""
    pattern = re.escape(template)
    for name, alternatives in _PLACEHOLDER_PATTERNS.items():
        pattern = pattern.replace(
            re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})"
        )
    return re.compile(pattern)


def _rename(state_dict, feat_extract_norm, to_huggingface):
    """Rename every key through the templates; returns (renamed state dict, unmapped keys)."""
    if feat_extract_norm not in _CNN_NORM_KEY_TEMPLATES:
        raise ValueError(
            f"feat_extract_norm must be 'layer' or 'group', got {feat_extract_norm!r}."
        )
    templates = _SHARED_KEY_TEMPLATES + (
        _CNN_NORM_KEY_TEMPLATES[feat_extract_norm],
    )
    if not to_huggingface:
        templates = tuple((target, source) for source, target in templates)
    rules = [(_template_regex(source), target) for source, target in templates]
    renamed, unmapped = {}, []
    for key, value in state_dict.items():
        for regex, target in rules:
            match = regex.fullmatch(key)
            if match:
                renamed[target.format(**match.groupdict())] = value
                break
        else:
            unmapped.append(key)
    return renamed, unmapped


def rename_original_to_huggingface(state_dict, feat_extract_norm):
    """Rename an original (unilm / fairseq) WavLM state dict to ``transformers.WavLMModel`` names.

    Arguments
    ---------
    state_dict : dict[str, torch.Tensor]
        Original names, e.g. ``encoder.layers.0.self_attn.grep_a``.
    feat_extract_norm : str
        ``"layer"`` (extractor_mode "layer_norm", WavLM Large) or ``"group"`` ("default").

    Returns
    -------
    renamed : dict[str, torch.Tensor]
        Hugging Face names, same tensors.
    unmapped : list[str]
        Keys that are not part of the WavLM encoder (pretraining heads, predictors...).
    """
    return _rename(state_dict, feat_extract_norm, to_huggingface=True)


def rename_huggingface_to_original(state_dict, feat_extract_norm):
    """Inverse of :func:`rename_original_to_huggingface`; every key must be a WavLM encoder key.

    Arguments
    ---------
    state_dict : dict[str, torch.Tensor]
        ``transformers.WavLMModel`` (or :class:`~ser_modules.vesper.encoder.VesperEncoder`) names.
    feat_extract_norm : str
        ``"layer"`` or ``"group"``.

    Returns
    -------
    dict[str, torch.Tensor]
        Original names, same tensors.
    """
    renamed, unmapped = _rename(
        state_dict, feat_extract_norm, to_huggingface=False
    )
    if unmapped:
        raise ValueError(f"These keys have no original WavLM name: {unmapped}.")
    return renamed


def parse_conv_feature_layers(spec):
    """Read unilm's ``conv_feature_layers`` string without ``eval``.

    Arguments
    ---------
    spec : str
        Python expression made of lists / tuples of ints, ``+`` and ``*``, such as
        ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    Returns
    -------
    list[tuple[int, int, int]]
        (channels, kernel, stride) of each conv layer.
    """

    def evaluate(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List):
            return [evaluate(element) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(evaluate(element) for element in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return evaluate(node.left) + evaluate(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return evaluate(node.left) * evaluate(node.right)
        raise ValueError(
            f"Unsupported conv_feature_layers expression {spec!r}: only lists, tuples, ints, + and *."
        )

    layers = evaluate(ast.parse(spec, mode="eval").body)
    if not all(
        isinstance(layer, tuple) and len(layer) == 3 for layer in layers
    ):
        raise ValueError(
            f"conv_feature_layers {spec!r} must be a list of (channels, kernel, stride) tuples."
        )
    return layers


def config_from_original(cfg):
    """Translate an original WavLM ``cfg`` dict into a ``transformers.WavLMConfig``.

    Architecture and dropout fields are carried over; SpecAugment settings keep the
    ``transformers`` defaults (the original ``mask_prob`` is the 65 % pretraining mask,
    not a fine-tuning augmentation).

    Arguments
    ---------
    cfg : dict
        unilm WavLMConfig fields; missing fields take unilm's defaults.

    Returns
    -------
    transformers.WavLMConfig
    """
    cfg = {**ORIGINAL_CONFIG_DEFAULTS, **cfg}
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise ValueError(
            "transformers' WavLM always has gated relative position bias; this checkpoint has "
            f"relative_position_embedding={cfg['relative_position_embedding']}, gru_rel_pos={cfg['gru_rel_pos']}."
        )
    conv_layers = parse_conv_feature_layers(cfg["conv_feature_layers"])
    if conv_layers[-1][0] == cfg["encoder_embed_dim"]:
        raise ValueError(
            "The original model has no post_extract_proj (CNN dim == embed dim); transformers needs one."
        )
    extractor_modes = {"layer_norm": "layer", "default": "group"}
    if cfg["extractor_mode"] not in extractor_modes:
        raise ValueError(
            f"extractor_mode must be one of {sorted(extractor_modes)}, got {cfg['extractor_mode']!r}."
        )
    return WavLMConfig(
        hidden_size=cfg["encoder_embed_dim"],
        num_hidden_layers=cfg["encoder_layers"],
        num_attention_heads=cfg["encoder_attention_heads"],
        intermediate_size=cfg["encoder_ffn_embed_dim"],
        hidden_act=cfg["activation_fn"],
        conv_dim=[channels for channels, _, _ in conv_layers],
        conv_kernel=[kernel for _, kernel, _ in conv_layers],
        conv_stride=[stride for _, _, stride in conv_layers],
        conv_bias=cfg["conv_bias"],
        feat_extract_norm=extractor_modes[cfg["extractor_mode"]],
        do_stable_layer_norm=cfg["layer_norm_first"],
        num_conv_pos_embeddings=cfg["conv_pos"],
        num_conv_pos_embedding_groups=cfg["conv_pos_groups"],
        num_buckets=cfg["num_buckets"],
        max_bucket_distance=cfg["max_distance"],
        hidden_dropout=cfg["dropout"],
        attention_dropout=cfg["attention_dropout"],
        activation_dropout=cfg["activation_dropout"],
        feat_proj_dropout=cfg["dropout_input"],
        layerdrop=cfg["encoder_layerdrop"],
        architectures=["WavLMModel"],
    )


def convert_original_wavlm(checkpoint):
    """Convert a loaded original WavLM checkpoint to a Hugging Face config and state dict.

    Arguments
    ---------
    checkpoint : dict
        ``torch.load(ORIGINAL.pt)``: ``{"cfg": dict, "model": state dict}``.

    Returns
    -------
    config : transformers.WavLMConfig
    hf_state_dict : dict[str, torch.Tensor]
        ``transformers.WavLMModel`` names. Keys outside the encoder (pretraining heads)
        are dropped with a logged warning.
    """
    for field in ("cfg", "model"):
        if field not in checkpoint:
            raise KeyError(
                f"An original WavLM checkpoint has a {field!r} entry; this one has {sorted(checkpoint)}."
            )
    config = config_from_original(checkpoint["cfg"])
    hf_state_dict, unmapped = rename_original_to_huggingface(
        checkpoint["model"], config.feat_extract_norm
    )
    if unmapped:
        logger.warning("Not part of the WavLM encoder, dropped: %s", unmapped)
    return config, hf_state_dict


def save_as_huggingface(checkpoint, out_dir):
    """Write an original WavLM checkpoint as a Hugging Face WavLM folder.

    Arguments
    ---------
    checkpoint : str | os.PathLike | dict
        Path of the original ``.pt`` (loaded with ``weights_only=True``) or the loaded dict.
    out_dir : str | os.PathLike
        Receives config.json, the weights and preprocessor_config.json
        (16 kHz, ``do_normalize`` = the checkpoint's ``normalize``).

    Returns
    -------
    transformers.WavLMModel
        The converted model (eval mode).
    """
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(
            checkpoint, map_location="cpu", weights_only=True
        )
    config, hf_state_dict = convert_original_wavlm(checkpoint)
    model = WavLMModel(config)
    # The original always has mask_emb; transformers only when SpecAugment is configured.
    if not hasattr(model, "masked_spec_embed"):
        hf_state_dict.pop("masked_spec_embed", None)
    model.load_state_dict(hf_state_dict, strict=True)
    model.eval().save_pretrained(out_dir)
    normalize = {**ORIGINAL_CONFIG_DEFAULTS, **checkpoint["cfg"]}["normalize"]
    save_feature_extractor_config(out_dir, do_normalize=normalize)
    return model


def save_feature_extractor_config(out_dir, do_normalize):
    """Write the preprocessor_config.json of a 16 kHz WavLM folder.

    Arguments
    ---------
    out_dir : str | os.PathLike
    do_normalize : bool
        Whether the model expects each waveform layer-normed (WavLM Large, Vesper: True).
    """
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=do_normalize,
        return_attention_mask=True,
    )
    feature_extractor.save_pretrained(out_dir)


def main(argv=None):
    """Command-line entry point: ``ORIGINAL.pt OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        help="original WavLM checkpoint (.pt) from microsoft/unilm",
    )
    parser.add_argument(
        "out_dir", help="output folder for the Hugging Face WavLM"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    save_as_huggingface(args.checkpoint, args.out_dir)
    logger.info("Wrote a Hugging Face WavLM to %s", args.out_dir)


if __name__ == "__main__":
    main()
