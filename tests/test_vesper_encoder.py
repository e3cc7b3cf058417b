"""Specification of the Vesper encoder (ser_modules/vesper/encoder.py).

References are transformers' own WavLMModel outputs on the same weights; the models
are tiny (32 dims, 2 heads, a 3-layer CNN with hop 20 samples).
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.vesper.encoder import (
    VesperEncoder,
    wavlm_base_config,
    wavlm_large_config,
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


def tiny_wavlm(num_layers=4, seed=0):
    torch.manual_seed(seed)
    return WavLMModel(tiny_config(num_layers)).eval()


def padded_batch():
    """Two waveforms of 1600 and 960 samples, right-padded: (B, S), relative lengths, HF attention mask."""
    torch.manual_seed(1)
    wavs = torch.randn(2, 1600)
    wavs[1, 960:] = 0.0
    wav_lens = torch.tensor([1.0, 0.6])
    attention_mask = torch.zeros(2, 1600, dtype=torch.long)
    attention_mask[0] = 1
    attention_mask[1, :960] = 1
    return wavs, wav_lens, attention_mask


def test_layer_outputs_equal_transformers_hidden_states():
    wavlm = tiny_wavlm()
    encoder = VesperEncoder.from_wavlm(wavlm, normalize_waveform=False)
    wavs, wav_lens, attention_mask = padded_batch()
    with torch.no_grad():
        reference = wavlm(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states
        outputs = encoder(wavs, wav_lens, output_layers=range(4))
    for layer in range(4):
        assert (outputs[layer] - reference[layer]).abs().max() < TOLERANCE, (
            f"layer {layer}"
        )


def test_last_layer_is_raw_output_before_final_layer_norm():
    wavlm = tiny_wavlm()
    encoder = VesperEncoder.from_wavlm(wavlm, normalize_waveform=False)
    wavs, wav_lens, attention_mask = padded_batch()
    with torch.no_grad():
        last_hidden_state = wavlm(
            wavs, attention_mask=attention_mask
        ).last_hidden_state
        raw_last = encoder(wavs, wav_lens, output_layers=[4])[4]
        assert (raw_last - last_hidden_state).abs().max() > 0.1
        assert (
            wavlm.encoder.layer_norm(raw_last) - last_hidden_state
        ).abs().max() < TOLERANCE


def test_transformers_5_hidden_states_end_with_the_raw_last_layer():
    # transformers 4.x put the final LayerNorm into hidden_states[M]; 5.x does not.
    wavlm = tiny_wavlm()
    encoder = VesperEncoder.from_wavlm(wavlm, normalize_waveform=False)
    wavs, wav_lens, attention_mask = padded_batch()
    with torch.no_grad():
        hidden_states = wavlm(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states
        raw_last = encoder(wavs, wav_lens, output_layers=[4])[4]
    assert (hidden_states[4] - raw_last).abs().max() < TOLERANCE


def test_encoder_has_no_final_layer_norm():
    encoder = VesperEncoder(tiny_config())
    assert not any(
        key.startswith("encoder.layer_norm.") for key in encoder.state_dict()
    )


def test_default_outputs_are_middle_and_last_layer():
    encoder = VesperEncoder(tiny_config(4)).eval()
    wavs, wav_lens, _ = padded_batch()
    with torch.no_grad():
        assert sorted(encoder(wavs, wav_lens)) == [2, 4]


def test_cnn_features_and_forward_from_cnn_equal_forward():
    encoder = VesperEncoder(tiny_config()).eval()
    wavs, wav_lens, _ = padded_batch()
    with torch.no_grad():
        cnn_feats, frame_mask = encoder.extract_cnn_features(wavs, wav_lens)
        split = encoder.forward_from_cnn(
            cnn_feats, frame_mask, output_layers=[1, 4]
        )
        whole = encoder(wavs, wav_lens, output_layers=[1, 4])
    assert cnn_feats.shape == (2, 79, 16)
    assert torch.equal(split[1], whole[1]) and torch.equal(split[4], whole[4])


def test_frame_mask_follows_the_conv_length_formula():
    encoder = VesperEncoder(tiny_config()).eval()
    wavs, wav_lens, _ = padded_batch()
    _, frame_mask = encoder.extract_cnn_features(wavs, wav_lens)
    # 1600 samples: (1600 - 10) // 5 + 1 = 319 -> 159 -> 79; 960 samples: 191 -> 95 -> 47.
    assert frame_mask.dtype == torch.bool
    assert frame_mask.sum(dim=1).tolist() == [79, 47]
    assert frame_mask[1, :47].all() and not frame_mask[1, 47:].any()


def test_wavlm_large_frame_count_and_receptive_field():
    with torch.device("meta"):
        encoder = VesperEncoder(wavlm_large_config(num_hidden_layers=1))
    num_samples = torch.tensor([80000, 400, 720])
    assert encoder.frame_lengths(num_samples).tolist() == [
        1 + (80000 - 400) // 320,
        1,
        2,
    ]
    assert encoder.min_num_samples() == 400


def test_utterance_outputs_do_not_depend_on_batch_padding():
    encoder = VesperEncoder(tiny_config()).eval()
    wavs, wav_lens, _ = padded_batch()
    with torch.no_grad():
        batched = encoder(wavs, wav_lens, output_layers=[4])[4]
        alone = encoder(wavs[1:, :960], output_layers=[4])[4]
    assert (batched[1, :47] - alone[0]).abs().max() < TOLERANCE


def test_waveform_normalisation_uses_real_samples_only():
    wavlm = tiny_wavlm()
    normalizing = VesperEncoder.from_wavlm(wavlm, normalize_waveform=True)
    wavs, wav_lens, attention_mask = padded_batch()
    wavs = 3.0 * wavs + 0.5
    wavs[1, 960:] = 0.0
    normalized = torch.zeros_like(wavs)
    normalized[0] = F.layer_norm(wavs[0], (1600,))
    normalized[1, :960] = F.layer_norm(wavs[1, :960], (960,))
    with torch.no_grad():
        reference = wavlm(
            normalized, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states[2]
        outputs = normalizing(wavs, wav_lens, output_layers=[2])[2]
    assert (outputs - reference).abs().max() < TOLERANCE


def test_from_wavlm_folder_reads_do_normalize(tmp_path):
    wavlm = tiny_wavlm()
    wavlm.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    encoder = VesperEncoder.from_wavlm(tmp_path)
    assert encoder.normalize_waveform is False
    wavs, wav_lens, attention_mask = padded_batch()
    with torch.no_grad():
        reference = wavlm(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states[3]
        assert (
            encoder(wavs, wav_lens, output_layers=[3])[3] - reference
        ).abs().max() < TOLERANCE


def test_from_wavlm_keeps_the_first_num_layers():
    wavlm = tiny_wavlm(num_layers=4)
    encoder = VesperEncoder.from_wavlm(
        wavlm, num_layers=2, normalize_waveform=False
    )
    wavs, wav_lens, attention_mask = padded_batch()
    assert encoder.num_layers == 2
    with torch.no_grad():
        reference = wavlm(
            wavs, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states[2]
        assert (
            encoder(wavs, wav_lens, output_layers=[2])[2] - reference
        ).abs().max() < TOLERANCE


def test_phoneme_mask_replaces_layer_one_input_after_positional_conv():
    encoder = VesperEncoder(tiny_config()).eval()
    wavs, wav_lens, _ = padded_batch()
    phoneme_mask = torch.zeros(2, 79, dtype=torch.bool)
    phoneme_mask[0, 10:18] = True
    phoneme_mask[1, 30:38] = True
    with torch.no_grad():
        cnn_feats, frame_mask = encoder.extract_cnn_features(wavs, wav_lens)
        masked = encoder.forward_from_cnn(
            cnn_feats,
            frame_mask,
            phoneme_mask=phoneme_mask,
            output_layers=[0, 1],
        )
        layer_input = encoder.forward_from_cnn(
            cnn_feats, frame_mask, output_layers=[0]
        )[0]
        expected_input = torch.where(
            phoneme_mask[..., None], encoder.masked_spec_embed, layer_input
        )
        expected, _ = encoder.encoder.layers[0](
            expected_input, attention_mask=frame_mask
        )
    assert torch.equal(masked[0], layer_input)
    assert (masked[1] - expected).abs().max() < TOLERANCE


def test_word_mask_replaces_middle_layer_output_before_next_layer():
    encoder = VesperEncoder(tiny_config(4)).eval()
    wavs, wav_lens, _ = padded_batch()
    word_mask = torch.zeros(2, 79, dtype=torch.bool)
    word_mask[:, 20:40] = True
    with torch.no_grad():
        cnn_feats, frame_mask = encoder.extract_cnn_features(wavs, wav_lens)
        unmasked = encoder.forward_from_cnn(
            cnn_feats, frame_mask, output_layers=[0, 2]
        )
        masked = encoder.forward_from_cnn(
            cnn_feats, frame_mask, word_mask=word_mask, output_layers=[2, 4]
        )
        _, position_bias = encoder.encoder.layers[0](
            unmasked[0], attention_mask=frame_mask
        )
        hidden = torch.where(
            word_mask[..., None], encoder.masked_spec_embed, unmasked[2]
        )
        for layer in encoder.encoder.layers[2:]:
            hidden, _ = layer(
                hidden, attention_mask=frame_mask, position_bias=position_bias
            )
    assert torch.equal(masked[2], unmasked[2])
    assert (masked[4] - hidden).abs().max() < TOLERANCE


def test_cnn_is_frozen_and_mask_embedding_is_trained():
    encoder = VesperEncoder(tiny_config()).train()
    wavs, wav_lens, _ = padded_batch()
    phoneme_mask = torch.zeros(2, 79, dtype=torch.bool)
    phoneme_mask[:, :8] = True
    outputs = encoder(wavs, wav_lens, phoneme_mask=phoneme_mask)
    outputs[4].sum().backward()
    assert all(
        not parameter.requires_grad
        for parameter in encoder.feature_extractor.parameters()
    )
    assert encoder.masked_spec_embed.grad is not None
    assert encoder.feature_projection.projection.weight.grad is not None


def test_student_trains_on_cnn_features_computed_in_inference_mode():
    encoder = VesperEncoder(tiny_config()).train()
    wavs, wav_lens, _ = padded_batch()
    with torch.inference_mode():
        cnn_feats, frame_mask = encoder.extract_cnn_features(wavs, wav_lens)
    encoder.forward_from_cnn(cnn_feats, frame_mask)[4].sum().backward()
    assert encoder.encoder.layers[0].attention.q_proj.weight.grad is not None


def test_too_short_utterance_raises_with_its_batch_position():
    encoder = VesperEncoder(tiny_config())
    with pytest.raises(ValueError, match=r"batch positions \[1\].*40"):
        encoder.extract_cnn_features(
            torch.randn(2, 1000), torch.tensor([1.0, 0.02])
        )


def test_post_layer_norm_wavlm_is_rejected():
    with pytest.raises(ValueError, match="do_stable_layer_norm"):
        VesperEncoder(wavlm_base_config())
