"""Specification of Vesper export (ser_modules/vesper/export.py): Hugging Face folders and authors' checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.vesper.encoder import VesperEncoder
from ser_modules.vesper.export import (
    export_to_huggingface,
    load_authors_checkpoint,
    to_authors_state_dict,
)

TOLERANCE = 1e-5


def tiny_config(num_layers=4):
    """A small pre-LN WavLM; receptive field 40 samples, hop 20."""
    return WavLMConfig(
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=64,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )


def trained_looking_encoder(num_layers=4):
    """A Vesper encoder whose LayerNorms and mask embedding are not at their init values."""
    torch.manual_seed(0)
    encoder = VesperEncoder(
        tiny_config(num_layers), normalize_waveform=False
    ).eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return encoder


def batch():
    """Two waveforms of 1200 and 840 samples, as (B, S), relative lengths and HF attention mask."""
    torch.manual_seed(1)
    wavs = torch.randn(2, 1200)
    wavs[1, 840:] = 0.0
    attention_mask = torch.ones(2, 1200, dtype=torch.long)
    attention_mask[1, 840:] = 0
    return wavs, torch.tensor([1.0, 0.7]), attention_mask


def test_exported_folder_loads_as_wavlm_with_vesper_layer_outputs(tmp_path):
    encoder = trained_looking_encoder(num_layers=4)
    export_to_huggingface(encoder, tmp_path)
    wavlm = WavLMModel.from_pretrained(tmp_path).eval()
    wavs, wav_lens, attention_mask = batch()
    with torch.no_grad():
        hidden_states = wavlm(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states
        vesper = encoder(wavs, wav_lens, output_layers=range(4))
    assert wavlm.config.num_hidden_layers == 4
    # The folder says it is a Vesper export (reports name it from this, not its path).
    with open(tmp_path / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["vesper"] == {"num_layers": 4}
    for layer in range(1, 4):
        assert (hidden_states[layer] - vesper[layer]).abs().max() < TOLERANCE, (
            f"layer {layer}"
        )


def test_exported_last_hidden_state_is_parameter_free_layer_norm_of_layer_n(
    tmp_path,
):
    encoder = trained_looking_encoder(num_layers=2)
    export_to_huggingface(encoder, tmp_path)
    wavlm = WavLMModel.from_pretrained(tmp_path).eval()
    wavs, wav_lens, attention_mask = batch()
    with torch.no_grad():
        last_hidden_state = wavlm(
            wavs, attention_mask=attention_mask
        ).last_hidden_state
        raw_last = encoder(wavs, wav_lens, output_layers=[2])[2]
    assert (
        last_hidden_state - F.layer_norm(raw_last, (32,))
    ).abs().max() < TOLERANCE


@pytest.mark.parametrize("normalize_waveform", [True, False])
def test_exported_preprocessor_config_is_16_khz_with_the_encoders_normalisation(
    tmp_path, normalize_waveform
):
    encoder = VesperEncoder(
        tiny_config(2), normalize_waveform=normalize_waveform
    )
    export_to_huggingface(encoder, tmp_path)
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert feature_extractor.sampling_rate == 16000
    assert feature_extractor.do_normalize is normalize_waveform


def test_export_then_from_wavlm_gives_back_the_same_encoder(tmp_path):
    encoder = trained_looking_encoder(num_layers=2)
    export_to_huggingface(encoder, tmp_path)
    reloaded = VesperEncoder.from_wavlm(tmp_path)
    assert reloaded.normalize_waveform is False
    original_state = encoder.state_dict()
    assert all(
        torch.equal(value, original_state[key])
        for key, value in reloaded.state_dict().items()
    )


def test_authors_state_dict_uses_original_wavlm_names():
    keys = set(to_authors_state_dict(VesperEncoder(tiny_config(2))))
    for key in (
        "vesper.feature_extractor.conv_layers.0.0.weight",
        "vesper.feature_extractor.conv_layers.2.2.1.bias",
        "vesper.layer_norm.weight",
        "vesper.post_extract_proj.weight",
        "vesper.mask_emb",
        "vesper.encoder.pos_conv.0.weight_g",
        "vesper.encoder.pos_conv.0.weight_v",
        "vesper.encoder.layers.0.self_attn.relative_attention_bias.weight",
        "vesper.encoder.layers.1.self_attn.k_proj.weight",
        "vesper.encoder.layers.1.self_attn.grep_linear.weight",
        "vesper.encoder.layers.1.self_attn.grep_a",
        "vesper.encoder.layers.1.self_attn_layer_norm.weight",
        "vesper.encoder.layers.1.fc1.weight",
        "vesper.encoder.layers.1.fc2.bias",
        "vesper.encoder.layers.1.final_layer_norm.bias",
    ):
        assert key in keys, key


def test_authors_checkpoint_round_trip_reproduces_outputs_exactly(tmp_path):
    encoder = trained_looking_encoder(num_layers=4)
    model_state = to_authors_state_dict(encoder)
    # The authors' checkpoint also holds the predictors, which are not part of the encoder.
    model_state["predictor_low.1.weight"] = torch.randn(16, 32)
    torch.save({"model": model_state, "epoch": 100}, tmp_path / "vesper.pt")
    loaded = load_authors_checkpoint(
        tmp_path / "vesper.pt", tiny_config(24), normalize_waveform=False
    )
    wavs, wav_lens, _ = batch()
    with torch.no_grad():
        expected = encoder(wavs, wav_lens, output_layers=[2, 4])
        actual = loaded(wavs, wav_lens, output_layers=[2, 4])
    assert loaded.num_layers == 4
    assert torch.equal(actual[2], expected[2]) and torch.equal(
        actual[4], expected[4]
    )


def test_authors_checkpoint_without_vesper_keys_is_rejected(tmp_path):
    torch.save(
        {"model": {"predictor.weight": torch.zeros(2)}}, tmp_path / "other.pt"
    )
    with pytest.raises(ValueError, match="other.pt.*vesper"):
        load_authors_checkpoint(tmp_path / "other.pt", tiny_config(24))
