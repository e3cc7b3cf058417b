"""Specification of the Table IV downstream models: Shiftformer and SpeechFormer(-S).

Defining properties (temporal shift, windowed attention, merging stages), padding
invariance, and the parameter counts of the authors' models, counted by formulas read off
their code (ECNU-Cross-Innovation-Lab/ShiftSER ``models/transformer.py`` + ``Augment.py``;
HappyColor/SpeechFormer ``model/speechformer.py`` + ``module/speechformer_layer.py`` with
``config/model_config.json`` and ``train_model.py``).
"""

import math

import pytest
import torch

from ser_modules.downstream.blocks import (
    ShiftBlock,
    SpeechFormerLayer,
    WindowedSelfAttention,
    build_block,
    temporal_shift,
)
from ser_modules.downstream.factory import build_downstream
from ser_modules.downstream.models import BlockStackClassifier
from ser_modules.downstream.speechformer import (
    SpeechFormerClassifier,
    merge_frames,
    sinusoidal_encoding,
    statistical_windows,
    upstream_frame_hop_ms,
)
from ser_modules.downstream.supernet import BASSuperNet, derived_state_dict

# ----------------------------------------------------------------- parameter counts


def authors_shiftformer_parameters(dim, num_classes, mlp_ratio=4, num_blocks=2):
    """Trainable parameters of ShiftSER's ``Transformer(shift=True)`` read from its code.

    Per ``TransformerEncoder`` with ``shift=True``: no attention and no ``norm1`` (only
    built without shift); ``Mlp(dim, dim * mlp_ratio, dim)``: fc1 and fc2 with biases;
    ``norm2``: LayerNorm (weight + bias). Then ``head = Linear(dim, num_classes)`` and
    ``Specaugment.masked_spec_embed``: one (dim,) parameter. The relative-position
    embedding belongs to the attention, which Shiftformer does not build.
    """
    hidden = dim * mlp_ratio
    block = (dim * hidden + hidden) + (hidden * dim + dim) + 2 * dim
    return num_blocks * block + (dim * num_classes + num_classes) + dim


def authors_speechformer_parameters(
    feature_dim,
    num_classes,
    num_heads=8,
    num_layers=(2, 2, 4, 4),
    expand=(1, 1, 1),
):
    """Trainable parameters of SpeechFormer's ``SpeechFormer`` read from its code.

    ``train_model.py``: ``input_dim = feature_dim // num_heads * num_heads`` and
    ``ffn_embed_dim = input_dim // 2``. ``SpeechFormerEncoder``: ``Speech_MSA`` =
    ``project_qkv Linear(D, 3D)`` + ``project_out Linear(D, D)``, two LayerNorms,
    ``fc1 Linear(D, F)``, ``fc2 Linear(F, D)``. ``SpeechFormerBlock``: ``input_norm``
    LayerNorm + its layers (the positional table is a frozen Parameter: not trainable).
    ``MergeBlock``: ``Linear(D, D * expand)`` + LayerNorm, after every stage but the last
    (global) one. Classifier: ``Linear(D, D/2), Linear(D/2, D/4), Linear(D/4, C)``.
    """
    dim = feature_dim // num_heads * num_heads
    ffn = dim // 2
    total = 0
    for stage, layers in enumerate(num_layers):
        layer = (
            (dim * 3 * dim + 3 * dim)
            + (dim * dim + dim)
            + 2 * 2 * dim
            + (dim * ffn + ffn)
            + (ffn * dim + dim)
        )
        total += 2 * dim + layers * layer
        if stage < 3:
            total += (
                dim * dim * expand[stage]
                + dim * expand[stage]
                + 2 * dim * expand[stage]
            )
            dim, ffn = dim * expand[stage], ffn * expand[stage]
    total += (
        (dim * (dim // 2) + dim // 2)
        + ((dim // 2) * (dim // 4) + dim // 4)
        + ((dim // 4) * num_classes + num_classes)
    )
    return total


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dim", [768, 1024])
def test_parameter_counts_equal_the_authors_models(dim):
    # Pinned numbers too: the README states them (4 classes, IEMOCAP).
    expected = {768: (9_451_780, 37_629_508), 1024: (16_796_676, 66_851_588)}[
        dim
    ]
    shiftformer = build_downstream("shiftformer", dim, 4)
    speechformer = build_downstream("speechformer", dim, 4)
    assert (
        trainable(shiftformer)
        == authors_shiftformer_parameters(dim, 4)
        == expected[0]
    )
    assert (
        trainable(speechformer)
        == authors_speechformer_parameters(dim, 4)
        == expected[1]
    )
    assert trainable(
        build_downstream("speechformer", dim, 7, speechformer_expand=[1, 1, 2])
    ) == (authors_speechformer_parameters(dim, 7, expand=(1, 1, 2)))


# ----------------------------------------------------------------- temporal shift


def test_temporal_shift_moves_the_configured_share_by_the_offset_with_zero_fill():
    dim, frames = 8, 6
    x = torch.arange(1, 1 + 2 * frames * dim, dtype=torch.float32).view(
        2, frames, dim
    )
    padding_mask = torch.zeros(2, frames, dtype=torch.bool)
    padding_mask[1, 4:] = True  # utterance 2 has 4 valid frames
    out = temporal_shift(
        x, padding_mask, shift_div=4, stride=1, bidirectional=True
    )
    fold = 2
    for b, length in ((0, frames), (1, 4)):
        for t in range(length):
            # channels [0, 2): frame t holds frame t-1 (zeros at the start)
            expected_forward = (
                x[b, t - 1, :fold] if t >= 1 else torch.zeros(fold)
            )
            # channels [2, 4): frame t holds frame t+1 (zeros after the last VALID frame)
            expected_backward = (
                x[b, t + 1, fold : 2 * fold]
                if t + 1 < length
                else torch.zeros(fold)
            )
            torch.testing.assert_close(out[b, t, :fold], expected_forward)
            torch.testing.assert_close(
                out[b, t, fold : 2 * fold], expected_backward
            )
            torch.testing.assert_close(
                out[b, t, 2 * fold :], x[b, t, 2 * fold :]
            )  # untouched


def test_temporal_shift_stride_share_and_direction_are_configurable():
    x = torch.randn(1, 7, 16)
    out = temporal_shift(x, None, shift_div=8, stride=2, bidirectional=False)
    torch.testing.assert_close(out[0, 2:, :2], x[0, :-2, :2])
    assert torch.equal(out[0, :2, :2], torch.zeros(2, 2))
    torch.testing.assert_close(out[0, :, 2:], x[0, :, 2:])
    # a stride longer than the utterance leaves only zeros in the shifted channels
    assert torch.equal(
        temporal_shift(x, None, 8, 9, True)[..., :4], torch.zeros(1, 7, 4)
    )


def test_shift_block_is_the_shiftformer_block_of_the_authors():
    torch.manual_seed(0)
    block = ShiftBlock(8, 32).eval()
    x = torch.randn(2, 5, 8)
    shifted = temporal_shift(x, None)
    hidden = block.linear2(torch.nn.functional.gelu(block.linear1(shifted)))
    torch.testing.assert_close(
        block(x),
        torch.nn.functional.layer_norm(
            shifted + hidden, (8,), block.norm.weight, block.norm.bias
        ),
    )


# ----------------------------------------------------------------- SpeechFormer


def test_statistical_windows_follow_the_authors_integer_arithmetic():
    # 20 ms frames: merges 50 // 20 = 2, 250 // 20 = 12, 1000 // 20 = 50 (absolute);
    # windows 50 // 20 = 2 -> 3, (400 // 20) // 2 = 10 -> 11, (2000 // 20) // 12 = 8 -> 9.
    assert statistical_windows(20) == ([3, 11, 9, None], [2, 6, 4])
    assert statistical_windows(10) == ([5, 9, 9, None], [5, 5, 4])
    with pytest.raises(ValueError, match="hop"):
        statistical_windows(60)
    # what speechformer.yaml derives from upstream_kind
    assert upstream_frame_hop_ms("auto") == upstream_frame_hop_ms("wavlm") == 20
    assert (
        upstream_frame_hop_ms("fbank") == 10
        and upstream_frame_hop_ms("fbank", 20) == 20
    )
    # openSMILE LLDs come every 10 ms unless their hop_length says otherwise
    assert (
        upstream_frame_hop_ms("egemaps")
        == upstream_frame_hop_ms("compare")
        == 10
    )
    with pytest.raises(ValueError, match="block_dim"):
        build_downstream("speechformer", 16, 4, model_dim=8)


@pytest.mark.parametrize("window", [3, 5])
def test_windowed_attention_only_sees_frames_inside_its_window(window):
    torch.manual_seed(0)
    attention = WindowedSelfAttention(
        8, 2, window=window, attention_dropout=0.0
    )
    frames = 12
    x = torch.randn(1, frames, 8, requires_grad=True)
    padding_mask = torch.zeros(1, frames, dtype=torch.bool)
    padding_mask[0, 10:] = True
    out = attention(x, padding_mask)
    for t in range(10):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(dim=-1) > 0  # (T,)
        expected = torch.tensor(
            [abs(s - t) <= window // 2 and s < 10 for s in range(frames)]
        )
        assert torch.equal(seen, expected), (t, seen, expected)


def test_windowed_attention_equals_masked_softmax_attention_written_out():
    torch.manual_seed(0)
    attention = WindowedSelfAttention(8, 2, window=3, attention_dropout=0.0)
    x = torch.randn(2, 6, 8)
    padding_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    q, k, v = attention.project_qkv(x).chunk(3, dim=-1)
    expected = torch.zeros(2, 6, 8)
    for b in range(2):
        for t in range(6):
            keys = [
                s
                for s in range(6)
                if abs(s - t) <= 1 and not padding_mask[b, s]
            ] or [t]
            for h in range(2):
                cols = slice(4 * h, 4 * h + 4)
                scores = (
                    torch.stack([q[b, t, cols] @ k[b, s, cols] for s in keys])
                    / 2.0
                )
                expected[b, t, cols] = (
                    torch.softmax(scores, 0) @ v[b, keys, cols]
                )
    valid = (
        ~padding_mask
    )  # padded queries are free (they see themselves, no NaN)
    torch.testing.assert_close(
        attention(x, padding_mask)[valid],
        attention.project_out(expected)[valid],
    )


def test_merge_averages_chunks_and_reduces_the_frame_rate():
    x = torch.arange(1.0, 8.0).view(1, 7, 1)
    padding_mask = torch.tensor([[False] * 5 + [True] * 2])
    merged, merged_mask = merge_frames(x, padding_mask, 2)
    # chunks (1, 2), (3, 4), (5, pad), (pad, pad): the partial chunk is divided by 2, as
    # the authors' zero-padded average
    torch.testing.assert_close(
        merged[0, :, 0], torch.tensor([1.5, 3.5, 2.5, 0.0])
    )
    assert merged_mask.tolist() == [[False, False, False, True]]


def test_speechformer_stages_reduce_the_frame_rate_as_configured():
    model = SpeechFormerClassifier(16, 4, frame_hop_ms=20, num_heads=2).eval()
    assert [stage.layers[0].window for stage in model.stages] == [
        3,
        11,
        9,
        None,
    ]
    assert [len(stage.layers) for stage in model.stages] == [2, 2, 4, 4]
    assert [block.merge for block in model.merge_blocks] == [2, 6, 4]
    frames = 100
    x, padding_mask = model.frame_features(
        torch.randn(2, frames, 16), torch.tensor([1.0, 0.5])
    )
    # 100 -> 50 -> 9 -> 3 frames; the 50-frame utterance: 50 -> 25 -> 5 -> 2
    assert x.shape == (2, 3, 16)
    assert (~padding_mask).sum(dim=1).tolist() == [3, 2]


def test_positional_encoding_is_the_sinusoidal_table():
    table = sinusoidal_encoding(5, 6)
    assert table[3, 4].item() == pytest.approx(
        math.sin(3 / 10000 ** (4 / 6)), abs=1e-6
    )
    assert table[3, 5].item() == pytest.approx(
        math.cos(3 / 10000 ** (4 / 6)), abs=1e-6
    )


def test_speechformer_keeps_the_first_multiple_of_heads_channels():
    model = build_downstream(
        "speechformer", 20, 4, num_heads=8
    )  # 20 -> 16 channels
    assert model.width == 16
    x = torch.randn(2, 30, 20)
    changed = x.clone()
    changed[..., 16:] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(changed, torch.ones(2)), model(x, torch.ones(2))
        )


# ----------------------------------------------------------------- padding and training


def _models():
    return {
        "shiftformer": lambda: build_downstream("shiftformer", 16, 4),
        "speechformer": lambda: build_downstream(
            "speechformer", 16, 4, num_heads=2
        ),
        "speechformer_10ms": lambda: build_downstream(
            "speechformer", 16, 4, num_heads=2, frame_hop_ms=10
        ),
        "bas_supernet_all_candidates": lambda: BASSuperNet(
            16,
            4,
            num_layers=2,
            num_heads=2,
            ffn_dim=8,
            candidates=["msa_ffn", "msa", "ffn", "shift", "speechformer"],
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_padded_frames_never_change_the_logits(name):
    torch.manual_seed(0)
    model = _models()[name]().eval()
    frames = 60
    x = torch.randn(3, frames, 16)
    lens = torch.tensor([1.0, 37 / 60, 5 / 60])
    garbage = 1e4 * torch.randn(3, 13, 16)
    garbage[0, 0, 0], garbage[1, 1, 1] = float("nan"), float("inf")
    padded = torch.cat([x, garbage], dim=1)
    with torch.no_grad():
        reference = model(x, lens)
        torch.testing.assert_close(
            model(padded, lens * frames / padded.shape[1]),
            reference,
            rtol=1e-5,
            atol=1e-5,
        )
        # and the same utterance alone, unpadded
        alone = model(x[1:2, :37], torch.ones(1))
    torch.testing.assert_close(alone, reference[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_models()))
def test_training_step_is_finite_with_one_frame_and_empty_utterances(name):
    torch.manual_seed(0)
    model = _models()[name]().train()
    logits = model(torch.randn(3, 40, 16), torch.tensor([1.0, 1 / 40, 0.0]))
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(
        p.grad is not None for p in model.parameters() if p.requires_grad
    )


def test_spec_augment_masks_valid_frames_with_the_learned_embedding_in_training_only():
    model = build_downstream("shiftformer", 16, 4)
    augment = model.spec_augment.train()
    x = torch.randn(4, 100, 16)
    padding_mask = torch.zeros(4, 100, dtype=torch.bool)
    padding_mask[2, 50:] = True
    augment.feature_mask_prob = 0.0
    out = augment(x, padding_mask)
    replaced = (out == augment.masked_spec_embed).all(dim=-1)  # (B, T)
    assert replaced.any(dim=1).all(), (
        "every utterance gets time masks (at least 2 spans)"
    )
    assert not replaced[2, 50:].any(), "padded frames are never masked"
    assert torch.equal(out[~replaced], x[~replaced])
    augment.feature_mask_prob, augment.time_mask_prob = 0.05, 0.0
    zeroed = (augment(x, padding_mask) == 0).all(
        dim=1
    )  # (B, D): whole channels
    assert (
        zeroed.any(dim=1).all()
        and zeroed.sum(dim=1).max() <= augment.feature_mask_length
    )
    assert torch.equal(augment.eval()(x, padding_mask), x)


def test_new_candidates_are_built_by_build_block_and_derived_from_a_supernet():
    assert isinstance(build_block("shift", 16, 2, 32, 0.1), ShiftBlock)
    assert (
        build_block("speechformer", 16, 2, 32, 0.1).window
        == SpeechFormerLayer.from_widths(16, 2, 32, 0.1).window
    )
    candidates = ["msa_ffn", "msa", "ffn", "shift", "speechformer"]
    supernet = BASSuperNet(
        16, 4, num_layers=2, num_heads=2, ffn_dim=8, candidates=candidates
    ).eval()
    with torch.no_grad():
        supernet.layers[0].theta[3] = 1.0  # shift
        supernet.layers[1].theta[4] = 1.0  # speechformer
    derived = BlockStackClassifier(
        16, 4, ["shift", "speechformer"], num_heads=2, ffn_dim=8
    ).eval()
    derived.load_state_dict(
        derived_state_dict(supernet, ["shift", "speechformer"])
    )
    x, lens = torch.randn(2, 30, 16), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        torch.testing.assert_close(derived(x, lens), supernet(x, lens))
