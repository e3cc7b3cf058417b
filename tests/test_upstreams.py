"""Specification of the frozen upstreams (ser_modules.upstreams).

Tiny random WavLM / HuBERT / wav2vec 2.0 models are built from transformers configs and
saved to tmp folders; transformers' own model, run on each utterance alone, is the
reference. The CNN has kernels (10, 3) and strides (5, 2): receptive field 20 samples,
hop 10, frames(L) = ((L - 10) // 5 + 1 - 3) // 2 + 1.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.features import Fbank
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from ser_modules.upstreams import (
    FbankUpstream,
    HuggingFaceUpstream,
    build_upstream,
)
from ser_modules.upstreams.huggingface import normalize_waveforms

FAMILIES = {
    "wavlm": (
        WavLMConfig,
        WavLMModel,
        {"num_buckets": 32, "max_bucket_distance": 64},
    ),
    "hubert": (HubertConfig, HubertModel, {}),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model, {}),
}
LENGTHS = [400, 317, 250]  # samples; frames 39, 30, 24


def save_tiny_model(
    folder, family="wavlm", feat_extract_norm="layer", do_normalize=None, seed=0
):
    """A 3-layer, 32-dim random model + preprocessor config saved to ``folder``."""
    config_class, model_class, extra = FAMILIES[family]
    config = config_class(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=feat_extract_norm
        == "layer",  # as in the Large checkpoints
        **extra,
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    normalize = (
        feat_extract_norm == "layer" if do_normalize is None else do_normalize
    )
    Wav2Vec2FeatureExtractor(
        do_normalize=normalize, return_attention_mask=True
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Factory of saved tiny models, each built once per module: ``tiny_model(family, norm)``."""
    folders = {}

    def make(family="wavlm", feat_extract_norm="layer", do_normalize=None):
        key = (family, feat_extract_norm, do_normalize)
        if key not in folders:
            folder = tmp_path_factory.mktemp("-".join(map(str, key)))
            folders[key] = save_tiny_model(
                folder, family, feat_extract_norm, do_normalize
            )
        return folders[key]

    return make


def padded_batch(seed=0):
    """Three random utterances of LENGTHS samples, right-padded with noise (not zeros)."""
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(LENGTHS), max(LENGTHS), generator=generator)
    return wavs, torch.tensor(LENGTHS) / max(LENGTHS)


def transformers_hidden_states(model, waveform, normalize):
    """Reference: transformers' model on one unpadded utterance, ``(1, nL, T', D)``."""
    if normalize:
        waveform = F.layer_norm(waveform, waveform.shape)
    with torch.no_grad():
        output = model(waveform[None], output_hidden_states=True)
    return torch.stack(output.hidden_states, dim=1)


@pytest.mark.parametrize(
    "family, norm",
    [
        ("wavlm", "layer"),
        ("wavlm", "group"),
        ("hubert", "layer"),
        ("hubert", "group"),
        ("wav2vec2", "layer"),
        ("wav2vec2", "group"),
    ],
)
def test_each_utterance_of_a_padded_batch_matches_transformers_alone(
    tiny_model, family, norm
):
    folder = tiny_model(family, norm)
    upstream = HuggingFaceUpstream(folder)
    wavs, wav_lens = padded_batch()
    feats, _ = upstream(wavs, wav_lens)
    assert feats.shape == (3, 4, 39, 32)
    model = FAMILIES[family][1].from_pretrained(folder).eval()
    for index, length in enumerate(LENGTHS):
        reference = transformers_hidden_states(
            model, wavs[index, :length], norm == "layer"
        )
        num_frames = reference.shape[2]
        torch.testing.assert_close(
            feats[index : index + 1, :, :num_frames],
            reference,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_padded_batch_gives_the_same_valid_frames_as_alone(tiny_model, norm):
    upstream = HuggingFaceUpstream(tiny_model("wavlm", norm))
    wavs, wav_lens = padded_batch()
    batched, _ = upstream(wavs, wav_lens)
    for index, length in enumerate(LENGTHS):
        alone, _ = upstream(wavs[index : index + 1, :length])
        torch.testing.assert_close(
            batched[index : index + 1, :, : alone.shape[2]],
            alone,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_frames_past_each_utterance_are_zero(tiny_model, norm):
    upstream = HuggingFaceUpstream(tiny_model("wavlm", norm))
    feats, _ = upstream(*padded_batch())
    assert feats[1, :, 30:].abs().max() == 0
    assert feats[2, :, 24:].abs().max() == 0
    assert (
        feats[2, :, :24].abs().sum(dim=-1).gt(0).all()
    )  # valid frames are kept


def test_feat_lens_follow_the_conv_output_length_formula(tiny_model):
    upstream = HuggingFaceUpstream(tiny_model())
    feats, feat_lens = upstream(*padded_batch())
    # 400 -> 79 -> 39, 317 -> 62 -> 30, 250 -> 49 -> 24 (hand-computed)
    torch.testing.assert_close(feat_lens, torch.tensor([39, 30, 24]) / 39)
    assert torch.round(feat_lens * feats.shape[2]).long().tolist() == [
        39,
        30,
        24,
    ]
    assert upstream.hop_length == 10 and upstream.receptive_field == 20


def test_waveform_normalization_uses_only_the_valid_samples():
    wavs, wav_lens = padded_batch()
    lengths = torch.tensor(LENGTHS)
    normalized = normalize_waveforms(wavs * 3 + 1, lengths)
    for index, length in enumerate(LENGTHS):
        expected = F.layer_norm(wavs[index, :length] * 3 + 1, (length,))
        torch.testing.assert_close(normalized[index, :length], expected)
        assert normalized[index, length:].abs().sum() == 0


@pytest.mark.parametrize("do_normalize", [True, False])
def test_normalize_defaults_to_do_normalize_of_the_preprocessor_config(
    tiny_model, do_normalize
):
    upstream = HuggingFaceUpstream(tiny_model(do_normalize=do_normalize))
    assert upstream.normalize is do_normalize
    assert upstream.identity()["normalize"] is do_normalize


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_layer_selection_returns_the_requested_hidden_states_in_order(
    tiny_model, norm
):
    folder = tiny_model("wavlm", norm)
    waveform = padded_batch()[0][0]
    model = WavLMModel.from_pretrained(folder).eval()
    reference = transformers_hidden_states(
        model, waveform, norm == "layer"
    )  # (1, 4, T', D)
    for layers, expected in [
        ([2, 0], [2, 0]),
        ([1], [1]),
        ([0], [0]),
        ("last", [3]),
        ([-1, 1], [3, 1]),
    ]:
        upstream = HuggingFaceUpstream(folder, layers=layers)
        feats, _ = upstream(waveform[None])
        assert upstream.num_layers == len(expected)
        torch.testing.assert_close(
            feats, reference[:, expected], atol=1e-5, rtol=1e-5
        )


def test_layers_above_the_highest_selected_one_are_not_run(tiny_model):
    upstream = HuggingFaceUpstream(tiny_model(), layers=[0, 2])
    assert len(upstream.model.encoder.layers) == 2


def test_unknown_layer_indices_are_rejected(tiny_model):
    folder = tiny_model()
    with pytest.raises(ValueError, match="do not exist"):
        HuggingFaceUpstream(folder, layers=[4])
    with pytest.raises(ValueError, match="twice"):
        HuggingFaceUpstream(folder, layers=[3, -1])


def test_upstream_stays_frozen_after_train(tiny_model):
    upstream = HuggingFaceUpstream(tiny_model())
    upstream.train()
    assert not upstream.training and not upstream.model.training
    assert not any(
        parameter.requires_grad for parameter in upstream.parameters()
    )
    feats, _ = upstream(*padded_batch())
    assert not feats.requires_grad


def test_kind_contradicting_config_json_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="model_type 'wavlm'"):
        HuggingFaceUpstream(tiny_model("wavlm"), kind="hubert")


def test_utterance_shorter_than_the_receptive_field_is_rejected(tiny_model):
    upstream = HuggingFaceUpstream(tiny_model())
    with pytest.raises(ValueError, match=r"Batch items \[1\]"):
        upstream(torch.randn(2, 100), torch.tensor([1.0, 0.15]))


def test_identity_is_json_and_stable_for_the_same_files(tiny_model):
    folder = tiny_model()
    first = HuggingFaceUpstream(folder).identity()
    assert json.loads(json.dumps(first)) == first
    assert HuggingFaceUpstream(folder).identity() == first


def test_identity_changes_when_the_weights_change(tmp_path):
    first = HuggingFaceUpstream(
        save_tiny_model(tmp_path / "a", seed=0)
    ).identity()
    second = HuggingFaceUpstream(
        save_tiny_model(tmp_path / "a", seed=1)
    ).identity()
    assert first["config_sha256"] == second["config_sha256"]
    assert first["weights_sha256"] != second["weights_sha256"]


def test_identity_changes_with_the_layer_selection(tiny_model):
    folder = tiny_model()
    every_layer = HuggingFaceUpstream(folder, layers="all").identity()
    assert HuggingFaceUpstream(folder, layers="last").identity() != every_layer


def test_fbank_shape_and_relative_lengths():
    upstream = FbankUpstream(n_mels=80)
    wavs = torch.randn(2, 16000)
    feats, feat_lens = upstream(wavs, torch.tensor([1.0, 0.5]))
    # centred STFT, hop 160: 16000 // 160 + 1 = 101 frames, 8000 // 160 + 1 = 51
    assert feats.shape == (2, 1, 101, 80)
    torch.testing.assert_close(feat_lens, torch.tensor([1.0, 51 / 101]))
    assert (upstream.num_layers, upstream.output_dim) == (1, 80)
    assert (upstream.hop_length, upstream.frame_rate) == (160, 100.0)


def test_fbank_without_normalization_equals_speechbrain_fbank():
    waveform = torch.randn(1, 4000)
    feats, _ = FbankUpstream(n_mels=40, normalize=False)(waveform)
    torch.testing.assert_close(feats[:, 0], Fbank(n_mels=40)(waveform))


def test_fbank_normalization_gives_zero_mean_unit_variance_over_valid_frames():
    feats, _ = FbankUpstream(n_mels=40)(
        torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    )
    valid = feats[1, 0, : 4800 // 160 + 1]  # (31, 40)
    torch.testing.assert_close(
        valid.mean(dim=0), torch.zeros(40), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        valid.std(dim=0, unbiased=False), torch.ones(40), atol=1e-4, rtol=0
    )
    assert feats[1, 0, 31:].abs().sum() == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_fbank_padded_batch_gives_the_same_valid_frames_as_alone(normalize):
    upstream = FbankUpstream(n_mels=40, normalize=normalize)
    wavs = torch.randn(3, 4000)
    lengths = [4000, 2530, 1111]
    batched, feat_lens = upstream(wavs, torch.tensor(lengths) / 4000)
    for index, length in enumerate(lengths):
        alone, _ = upstream(wavs[index : index + 1, :length])
        assert (
            torch.round(feat_lens[index] * batched.shape[2]) == alone.shape[2]
        )
        torch.testing.assert_close(
            batched[index : index + 1, :, : alone.shape[2]],
            alone,
            atol=1e-4,
            rtol=1e-5,
        )


def test_fbank_identity_changes_with_its_options():
    assert (
        FbankUpstream(n_mels=80).identity()
        != FbankUpstream(n_mels=40).identity()
    )
    assert (
        FbankUpstream(normalize=True).identity()
        != FbankUpstream(normalize=False).identity()
    )


def test_build_upstream_picks_the_class_from_kind(tiny_model):
    folder = tiny_model("hubert")
    upstream = build_upstream("auto", folder, layers="last")
    assert isinstance(upstream, HuggingFaceUpstream)
    assert (upstream.kind, upstream.num_layers) == ("hubert", 1)
    assert isinstance(build_upstream("fbank", n_mels=64), FbankUpstream)
    with pytest.raises(ValueError, match="Unknown upstream kind"):
        build_upstream("mfcc")
    with pytest.raises(ValueError, match="needs source"):
        build_upstream("wavlm")
