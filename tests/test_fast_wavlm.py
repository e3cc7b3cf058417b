"""The fast inference forward (ser_modules.upstreams.fast_wavlm) against the Hugging Face one.

Tiny random WavLM / HuBERT / wav2vec 2.0 models with a three-layer CNN (kernels 10, 3, 2 and
strides 5, 2, 2: a kernel longer than its stride, one equal to it, and the first layer's
single input channel) and relative positions well past WavLM's exact buckets. The
reference is ``transformers``' own forward with ``output_hidden_states=True``: on a padded
batch of unequal lengths with its attention mask (layer-norm CNN, pre-LN encoder, as the
Large checkpoints), and on equal lengths for group-norm CNNs (post-LN, as the Base ones),
which Hugging Face cannot pad correctly.

Tolerances: fp32 ``max|fast - hf| / max|hf| <= 1e-4`` for every hidden state of every
utterance (measured ~1e-6); bf16 (weights and activations in bf16, residual stream fp32)
``<= 3e-2`` against the fp32 reference, and no worse than twice the error of Hugging Face's
own forward under bf16 autocast.
"""

import logging

import pytest
import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from ser_modules.upstreams import HuggingFaceUpstream
from ser_modules.upstreams.fast_wavlm import (
    FastSSLForward,
    max_relative_error,
    unsupported_reason,
)

FAMILIES = {
    "wavlm": (
        WavLMConfig,
        WavLMModel,
        {"num_buckets": 16, "max_bucket_distance": 40},
    ),
    "hubert": (HubertConfig, HubertModel, {}),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model, {}),
}
LENGTHS = [1200, 1013, 777]  # samples -> 59, 49, 38 frames
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 3e-2


def tiny_config(family, norm="layer", conv_bias=True, **options):
    config_class, _, extra = FAMILIES[family]
    return config_class(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 24, 24),
        conv_kernel=(10, 3, 2),
        conv_stride=(5, 2, 2),
        conv_bias=conv_bias,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        **{**extra, **options},
    )


def tiny_model(family, norm="layer", conv_bias=True, seed=0, **options):
    torch.manual_seed(seed)
    model = FAMILIES[family][1](
        tiny_config(family, norm, conv_bias, **options)
    ).eval()
    if family == "wavlm":
        # The default init makes the relative-position bias and its gate tiny; make them
        # matter so that a mistake in either cannot hide under the tolerance.
        with torch.no_grad():
            model.encoder.layers[0].attention.rel_attn_embed.weight.normal_(
                0, 2.0
            )
            for layer in model.encoder.layers:
                layer.attention.gru_rel_pos_linear.weight.normal_(0, 0.5)
                layer.attention.gru_rel_pos_const.uniform_(0.5, 1.5)
    return model


def padded_batch(lengths, seed=1):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for index, length in enumerate(lengths):
        wavs[index, :length] = torch.randn(length, generator=generator)
        mask[index, :length] = 1
    return wavs, mask


def hf_states(model, wavs, mask=None):
    with torch.no_grad():
        return model(
            wavs, attention_mask=mask, output_hidden_states=True
        ).hidden_states


def worst_error(fast_states, reference_states, frame_lengths):
    """Largest relative error over hidden states and utterances, on valid frames only."""
    assert len(fast_states) == len(reference_states)
    return max(
        max_relative_error([fast[index, :frames]], [reference[index, :frames]])
        for fast, reference in zip(fast_states, reference_states)
        for index, frames in enumerate(frame_lengths.tolist())
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("conv_bias", [True, False])
def test_padded_batch_of_unequal_lengths_matches_transformers_in_fp32(
    family, conv_bias
):
    model = tiny_model(family, "layer", conv_bias)
    wavs, mask = padded_batch(LENGTHS)
    frame_lengths = model._get_feat_extract_output_lengths(
        torch.tensor(LENGTHS)
    )
    assert (
        len(set(frame_lengths.tolist())) == 3 and max(frame_lengths) > 2 * 8
    )  # past exact buckets
    reference = hf_states(model, wavs, mask)
    fast = FastSSLForward(model)(wavs, frame_lengths)
    assert len(fast) == model.config.num_hidden_layers + 1
    assert all(state.shape == ref.shape for state, ref in zip(fast, reference))
    assert worst_error(fast, reference, frame_lengths) <= FP32_TOLERANCE


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_group_norm_post_ln_models_match_transformers_in_fp32(family):
    model = tiny_model(family, "group", conv_bias=False)
    wavs, _ = padded_batch([1100, 1100])
    reference = hf_states(model, wavs)
    fast = FastSSLForward(model)(wavs)
    frame_lengths = model._get_feat_extract_output_lengths(
        torch.tensor([1100, 1100])
    )
    assert worst_error(fast, reference, frame_lengths) <= FP32_TOLERANCE


def test_a_wrong_relative_position_bias_would_be_caught():
    """The check is sharp: halving the gate constant of one layer breaks the tolerance 10x over."""
    model = tiny_model("wavlm")
    wavs, mask = padded_batch(LENGTHS)
    frame_lengths = model._get_feat_extract_output_lengths(
        torch.tensor(LENGTHS)
    )
    reference = hf_states(model, wavs, mask)
    with torch.no_grad():
        model.encoder.layers[1].attention.gru_rel_pos_const.mul_(0.5)
    fast = FastSSLForward(model)(wavs, frame_lengths)
    assert worst_error(fast, reference, frame_lengths) > 10 * FP32_TOLERANCE


def test_derived_weights_follow_parameters_changed_in_place():
    model = tiny_model("wavlm")
    fast = FastSSLForward(model)
    wavs, _ = padded_batch([900])
    fast(wavs)  # builds the cached derived weights
    other = tiny_model("wavlm", seed=5)
    model.load_state_dict(other.state_dict())
    frame_lengths = model._get_feat_extract_output_lengths(torch.tensor([900]))
    assert (
        worst_error(fast(wavs), hf_states(other, wavs), frame_lengths)
        <= FP32_TOLERANCE
    )


@pytest.mark.parametrize("keep", [[3, 0, 2], [0], [1]])
def test_keep_returns_the_requested_states_in_order(keep):
    model = tiny_model("wavlm")
    wavs, _ = padded_batch([900])
    reference = hf_states(model, wavs)
    fast = FastSSLForward(model)(wavs, keep=keep)
    assert len(fast) == len(keep)
    for state, index in zip(fast, keep):
        torch.testing.assert_close(
            state,
            reference[index],
            rtol=0,
            atol=FP32_TOLERANCE * reference[index].abs().max(),
        )


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
def test_bf16_stays_within_the_stated_tolerance(family):
    model = tiny_model(family)
    wavs, mask = padded_batch(LENGTHS)
    frame_lengths = model._get_feat_extract_output_lengths(
        torch.tensor(LENGTHS)
    )
    reference = hf_states(model, wavs, mask)
    fast = FastSSLForward(model)(wavs, frame_lengths, dtype=torch.bfloat16)
    assert all(state.dtype == torch.float32 for state in fast)
    fast_error = worst_error(fast, reference, frame_lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = hf_states(model, wavs, mask)
    autocast_error = worst_error(autocast, reference, frame_lengths)
    assert (
        1e-4 < fast_error <= BF16_TOLERANCE
    )  # really computed in bf16, and close
    assert fast_error <= 2 * autocast_error


def test_unsupported_configurations_are_named():
    model = tiny_model("hubert", conv_pos_batch_norm=True)
    assert "batch-norm" in unsupported_reason(model)
    with pytest.raises(ValueError, match="batch-norm"):
        FastSSLForward(model)
    assert unsupported_reason(tiny_model("wavlm")) is None


def save_folder(folder, model):
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def wavlm_folder(tmp_path_factory):
    return save_folder(
        tmp_path_factory.mktemp("fast_wavlm"), tiny_model("wavlm")
    )


def test_upstream_fast_path_equals_the_reference_path(wavlm_folder):
    fast = HuggingFaceUpstream(wavlm_folder, layers="all")
    reference = HuggingFaceUpstream(wavlm_folder, layers="all", fast_path=False)
    assert fast.fast is not None and reference.fast is None
    wavs, _ = padded_batch(LENGTHS)
    wav_lens = torch.tensor(LENGTHS) / max(LENGTHS)
    feats, feat_lens = fast(wavs, wav_lens)
    ref_feats, ref_lens = reference(wavs, wav_lens)
    torch.testing.assert_close(feat_lens, ref_lens)
    scale = ref_feats.abs().max()
    assert float((feats - ref_feats).abs().max() / scale) <= FP32_TOLERANCE
    # The fast path adds no parameters or saved state: checkpoints are unchanged.
    assert fast.state_dict().keys() == reference.state_dict().keys()
    # ... but a feature cache never mixes features of the two paths.
    assert (
        fast.identity()["fast_path"] is True
        and reference.identity()["fast_path"] is False
    )
    assert {**fast.identity(), "fast_path": False} == reference.identity()


def test_upstream_under_bf16_autocast_runs_the_bf16_fast_path(wavlm_folder):
    upstream = HuggingFaceUpstream(wavlm_folder, layers=[0, 3])
    wavs, _ = padded_batch(LENGTHS)
    wav_lens = torch.tensor(LENGTHS) / max(LENGTHS)
    fp32, _ = upstream(wavs, wav_lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = upstream(wavs, wav_lens)
    assert bf16.dtype == torch.float32
    error = float((bf16 - fp32).abs().max() / fp32.abs().max())
    assert 1e-4 < error <= BF16_TOLERANCE


def test_unsupported_model_falls_back_to_transformers(tmp_path, caplog):
    folder = save_folder(
        tmp_path / "bn", tiny_model("hubert", conv_pos_batch_norm=True)
    )
    with caplog.at_level(
        logging.INFO, logger="ser_modules.upstreams.huggingface"
    ):
        upstream = HuggingFaceUpstream(folder)
    assert upstream.fast is None
    assert "batch-norm" in caplog.text
    wavs, _ = padded_batch([900])
    feats, _ = upstream(wavs)
    model = tiny_model("hubert", conv_pos_batch_norm=True)
    normalized = torch.nn.functional.layer_norm(wavs, wavs.shape[-1:], eps=1e-5)
    expected = torch.stack(hf_states(model, normalized), dim=1)
    torch.testing.assert_close(feats, expected)
