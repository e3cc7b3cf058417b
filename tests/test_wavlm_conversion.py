"""Specification of the original-WavLM checkpoint converter (ser_modules/upstreams/convert_wavlm_checkpoint.py).

A fake original checkpoint is written from a tiny transformers WavLM through the inverse
name mapping, with a ``cfg`` dict written by hand in unilm's field names.
"""

import logging

import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.upstreams.convert_wavlm_checkpoint import (
    config_from_original,
    convert_original_wavlm,
    main,
    parse_conv_feature_layers,
    rename_huggingface_to_original,
    save_as_huggingface,
)

WAVLM_LARGE_CFG = {
    "extractor_mode": "layer_norm",
    "encoder_layers": 24,
    "encoder_embed_dim": 1024,
    "encoder_ffn_embed_dim": 4096,
    "encoder_attention_heads": 16,
    "activation_fn": "gelu",
    "layer_norm_first": True,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "normalize": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
}


def tiny_original_cfg(
    extractor_mode="layer_norm", layer_norm_first=True, normalize=True
):
    """unilm cfg of a tiny WavLM: 2 layers of 32 dims, a 3-layer CNN of 16 channels."""
    return {
        "extractor_mode": extractor_mode,
        "encoder_layers": 2,
        "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 2,
        "activation_fn": "gelu",
        "layer_norm_first": layer_norm_first,
        "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 2",
        "conv_bias": False,
        "normalize": normalize,
        "conv_pos": 16,
        "conv_pos_groups": 2,
        "relative_position_embedding": True,
        "num_buckets": 32,
        "max_distance": 64,
        "gru_rel_pos": True,
        "mask_prob": 0.65,
    }


def tiny_hf_wavlm(feat_extract_norm="layer", do_stable_layer_norm=True):
    """The transformers WavLM that tiny_original_cfg describes, with random weights."""
    torch.manual_seed(0)
    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=64,
        do_stable_layer_norm=do_stable_layer_norm,
        feat_extract_norm=feat_extract_norm,
    )
    return WavLMModel(config).eval()


def fake_original_checkpoint(wavlm, cfg):
    """``{"cfg", "model"}`` as in the WavLM release, from a transformers model."""
    return {
        "cfg": cfg,
        "model": rename_huggingface_to_original(
            wavlm.state_dict(), wavlm.config.feat_extract_norm
        ),
    }


def test_conv_feature_layers_string_is_evaluated():
    assert parse_conv_feature_layers(
        WAVLM_LARGE_CFG["conv_feature_layers"]
    ) == ([(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)


def test_conv_feature_layers_string_cannot_run_code():
    with pytest.raises(ValueError, match="Unsupported"):
        parse_conv_feature_layers("[__import__('os').getcwd()]")


def test_wavlm_large_cfg_becomes_the_wavlm_large_architecture():
    config = config_from_original(WAVLM_LARGE_CFG)
    assert (
        config.hidden_size,
        config.num_hidden_layers,
        config.intermediate_size,
    ) == (1024, 24, 4096)
    assert config.num_attention_heads == 16
    assert list(config.conv_dim) == [512] * 7
    assert list(config.conv_kernel) == [10, 3, 3, 3, 3, 2, 2]
    assert list(config.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    assert config.feat_extract_norm == "layer" and config.do_stable_layer_norm
    assert (
        config.num_conv_pos_embeddings,
        config.num_conv_pos_embedding_groups,
    ) == (128, 16)
    assert (config.num_buckets, config.max_bucket_distance) == (320, 800)


def test_original_names_of_a_tiny_layer_norm_wavlm():
    original = set(
        fake_original_checkpoint(tiny_hf_wavlm(), tiny_original_cfg())["model"]
    )
    expected = {"mask_emb", "layer_norm.weight", "layer_norm.bias"}
    expected |= {"post_extract_proj.weight", "post_extract_proj.bias"}
    expected |= {
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv.0.bias",
    }
    expected |= {"encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    for conv in range(3):
        expected |= {f"feature_extractor.conv_layers.{conv}.0.weight"}
        expected |= {
            f"feature_extractor.conv_layers.{conv}.2.1.{p}"
            for p in ("weight", "bias")
        }
    expected.add("encoder.layers.0.self_attn.relative_attention_bias.weight")
    for layer in range(2):
        prefix = f"encoder.layers.{layer}."
        expected.add(prefix + "self_attn.grep_a")
        for module in ("k_proj", "v_proj", "q_proj", "out_proj", "grep_linear"):
            expected |= {
                f"{prefix}self_attn.{module}.{p}" for p in ("weight", "bias")
            }
        for module in (
            "self_attn_layer_norm",
            "fc1",
            "fc2",
            "final_layer_norm",
        ):
            expected |= {f"{prefix}{module}.{p}" for p in ("weight", "bias")}
    assert original == expected


@pytest.mark.parametrize(
    "extractor_mode, feat_extract_norm, layer_norm_first",
    [("layer_norm", "layer", True), ("default", "group", False)],
    ids=["large-style", "base-style"],
)
def test_converted_checkpoint_reproduces_the_model(
    tmp_path, extractor_mode, feat_extract_norm, layer_norm_first
):
    wavlm = tiny_hf_wavlm(
        feat_extract_norm, do_stable_layer_norm=layer_norm_first
    )
    checkpoint = fake_original_checkpoint(
        wavlm, tiny_original_cfg(extractor_mode, layer_norm_first)
    )
    torch.save(checkpoint, tmp_path / "original.pt")
    save_as_huggingface(tmp_path / "original.pt", tmp_path / "hf")
    converted = WavLMModel.from_pretrained(tmp_path / "hf").eval()
    torch.manual_seed(1)
    wavs = torch.randn(2, 1000)
    with torch.no_grad():
        expected = wavlm(wavs, output_hidden_states=True)
        actual = converted(wavs, output_hidden_states=True)
    assert torch.equal(actual.last_hidden_state, expected.last_hidden_state)
    assert all(
        torch.equal(a, e)
        for a, e in zip(actual.hidden_states, expected.hidden_states)
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_preprocessor_config_follows_the_checkpoints_normalize(
    tmp_path, normalize
):
    checkpoint = fake_original_checkpoint(
        tiny_hf_wavlm(), tiny_original_cfg(normalize=normalize)
    )
    save_as_huggingface(checkpoint, tmp_path)
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert feature_extractor.do_normalize is normalize
    assert feature_extractor.sampling_rate == 16000


def test_command_line_writes_a_loadable_folder(tmp_path):
    wavlm = tiny_hf_wavlm()
    torch.save(
        fake_original_checkpoint(wavlm, tiny_original_cfg()),
        tmp_path / "original.pt",
    )
    main([str(tmp_path / "original.pt"), str(tmp_path / "hf")])
    converted = WavLMModel.from_pretrained(tmp_path / "hf")
    assert all(
        torch.equal(value, wavlm.state_dict()[key])
        for key, value in converted.state_dict().items()
    )


def test_pretraining_head_weights_are_dropped_with_a_warning(caplog):
    checkpoint = fake_original_checkpoint(tiny_hf_wavlm(), tiny_original_cfg())
    checkpoint["model"]["label_embs_concat"] = torch.zeros(504, 16)
    with caplog.at_level(logging.WARNING):
        _, hf_state_dict = convert_original_wavlm(checkpoint)
    assert "label_embs_concat" in caplog.text
    assert "label_embs_concat" not in hf_state_dict


def test_checkpoint_without_gated_relative_position_bias_is_rejected():
    with pytest.raises(ValueError, match="gru_rel_pos"):
        config_from_original({**WAVLM_LARGE_CFG, "gru_rel_pos": False})
