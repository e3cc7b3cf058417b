"""Specification of the downstream blocks and models (ser_modules.downstream.blocks/models)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ser_modules.downstream.blocks import (
    FeedForwardBlock,
    SelfAttentionBlock,
    TransformerEncoderBlock,
    build_block,
)
from ser_modules.downstream.models import (
    BlockStackClassifier,
    LayerCombiner,
    SuperbClassifier,
    masked_mean_pool,
    valid_frame_mask,
)
from ser_modules.downstream.supernet import BASSuperNet

DIM, HEADS, FFN_DIM, CLASSES = 16, 2, 24, 4


def _hand_attention(block, x):
    """Multi-head self-attention of ``block.attention`` written out (no mask, no dropout)."""
    attention = block.attention
    batch, frames, dim = x.shape
    head_dim = dim // attention.num_heads
    q, k, v = F.linear(
        x, attention.in_proj_weight, attention.in_proj_bias
    ).chunk(3, dim=-1)

    def split(t):  # (B, T, D) -> (B, H, T, d_h)
        return t.reshape(
            batch, frames, attention.num_heads, head_dim
        ).transpose(1, 2)

    scores = (
        split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
    )  # (B, H, T, T)
    heads = torch.softmax(scores, dim=-1) @ split(v)  # (B, H, T, d_h)
    concatenated = heads.transpose(1, 2).reshape(batch, frames, dim)  # eq. (2)
    return attention.out_proj(concatenated)


def test_msa_ffn_block_computes_equation_3_with_post_layer_norm():
    torch.manual_seed(0)
    block = TransformerEncoderBlock(DIM, HEADS, FFN_DIM, dropout=0.0).eval()
    x = torch.randn(2, 5, DIM)
    msa = _hand_attention(block.self_attention, x)
    attended = block.self_attention.norm(msa + x)  # Norm(MSA(X) + X)
    ffn = block.feed_forward
    feed_forward = ffn.linear2(torch.relu(ffn.linear1(attended)))
    expected = block.norm(feed_forward + attended)  # Norm(FFN(.) + MSA(X) + X)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_msa_ffn_block_equals_torch_post_ln_transformer_encoder_layer():
    torch.manual_seed(0)
    block = TransformerEncoderBlock(DIM, HEADS, FFN_DIM, dropout=0.0).eval()
    reference = torch.nn.TransformerEncoderLayer(
        DIM, HEADS, FFN_DIM, dropout=0.0, batch_first=True, norm_first=False
    ).eval()
    reference.self_attn.load_state_dict(
        block.self_attention.attention.state_dict()
    )
    reference.norm1.load_state_dict(block.self_attention.norm.state_dict())
    reference.linear1.load_state_dict(block.feed_forward.linear1.state_dict())
    reference.linear2.load_state_dict(block.feed_forward.linear2.state_dict())
    reference.norm2.load_state_dict(block.norm.state_dict())
    x = torch.randn(2, 6, DIM)
    padding_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad():
        ours = block(x, padding_mask)
        theirs = reference(x, src_key_padding_mask=padding_mask)
    valid = ~padding_mask
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)


def test_msa_block_adds_its_input_before_the_norm():
    torch.manual_seed(0)
    block = SelfAttentionBlock(DIM, HEADS, dropout=0.0).eval()
    with torch.no_grad():
        block.attention.out_proj.weight.zero_()
        block.attention.out_proj.bias.zero_()
        x = torch.randn(2, 5, DIM)
        # With the attention silenced, only the residual is left: Norm(0 + X).
        torch.testing.assert_close(block(x), F.layer_norm(x, (DIM,)))


def test_ffn_block_has_no_residual():
    torch.manual_seed(0)
    block = FeedForwardBlock(DIM, FFN_DIM, dropout=0.0).eval()
    with torch.no_grad():
        block.linear2.weight.zero_()
        block.linear2.bias.zero_()
        x = torch.randn(2, 5, DIM)
        # A residual would return X here; without one nothing is left.
        assert torch.equal(block(x), torch.zeros_like(x))


def test_build_block_rejects_an_unknown_block_name():
    with pytest.raises(ValueError, match="msa_ffn"):
        build_block("conv", DIM, HEADS, FFN_DIM, 0.0)


def test_attention_blocks_require_heads_that_divide_the_width():
    with pytest.raises(ValueError, match="model_dim"):
        build_block("msa", 18, 4, FFN_DIM, 0.0)


def test_valid_frame_mask_rounds_relative_lengths():
    mask = valid_frame_mask(torch.tensor([1.0, 0.5, 0.26]), 4)
    expected = torch.tensor(
        [
            [True, True, True, True],
            [True, True, False, False],
            [True, False, False, False],
        ]
    )
    assert torch.equal(mask, expected)


def test_masked_mean_pool_averages_valid_frames_only():
    x = torch.tensor(
        [[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]]
    )  # (2, 3, 1)
    pooled = masked_mean_pool(x, torch.tensor([2 / 3, 1.0]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0], [4.0]]))


def test_masked_mean_pool_uses_the_first_frame_of_an_empty_utterance():
    x = torch.randn(2, 4, 3)
    pooled = masked_mean_pool(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(pooled[0], x[0, 0])


def test_layer_combiner_weighted_sum_starts_as_the_layer_average():
    layers = torch.randn(2, 5, 3, DIM)  # (B, N, T, D)
    combined = LayerCombiner(5)(layers)
    torch.testing.assert_close(combined, layers.mean(dim=1))


def test_layer_combiner_weighted_sum_uses_softmax_of_its_weights():
    layers = torch.randn(2, 3, 4, DIM)
    combiner = LayerCombiner(3)
    with torch.no_grad():
        combiner.layer_weights.copy_(
            torch.tensor([0.0, math.log(2.0), math.log(5.0)])
        )
    expected = (layers[:, 0] + 2 * layers[:, 1] + 5 * layers[:, 2]) / 8
    torch.testing.assert_close(combiner(layers), expected)


def test_layer_combiner_selects_the_last_or_an_indexed_layer():
    layers = torch.randn(2, 4, 3, DIM)
    assert torch.equal(LayerCombiner(4, mode="last")(layers), layers[:, 3])
    assert torch.equal(LayerCombiner(4, mode=1)(layers), layers[:, 1])
    assert torch.equal(LayerCombiner(4, mode=-2)(layers), layers[:, 2])


def test_layer_combiner_rejects_a_wrong_number_of_layers():
    with pytest.raises(ValueError, match="num_layers"):
        LayerCombiner(25)(torch.randn(1, 13, 2, DIM))


def test_superb_classifier_is_linear_then_mean_pool_then_linear():
    torch.manual_seed(0)
    model = SuperbClassifier(DIM, CLASSES, hidden=8)
    x = torch.randn(2, 5, DIM)
    lens = torch.tensor([1.0, 0.6])
    pooled = torch.stack(
        [
            model.projector(x[0]).mean(dim=0),
            model.projector(x[1, :3]).mean(dim=0),
        ]
    )
    torch.testing.assert_close(model(x, lens), model.classifier(pooled))


def test_simple_ffn_baseline_is_one_mlp_and_a_linear_classifier():
    model = BlockStackClassifier(
        DIM, CLASSES, ["ffn"], num_heads=HEADS, ffn_dim=FFN_DIM
    )
    mlp = DIM * FFN_DIM + FFN_DIM + FFN_DIM * DIM + DIM
    classifier = DIM * CLASSES + CLASSES
    assert sum(p.numel() for p in model.parameters()) == mlp + classifier


def test_input_projection_exists_only_when_model_dim_differs():
    same = BlockStackClassifier(
        DIM, CLASSES, ["msa"], model_dim=DIM, num_heads=HEADS
    )
    narrower = BlockStackClassifier(
        DIM, CLASSES, ["msa"], model_dim=8, num_heads=HEADS
    )
    assert isinstance(same.input_projection, torch.nn.Identity)
    assert isinstance(narrower.input_projection, torch.nn.Linear)
    assert narrower.input_projection.weight.shape == (8, DIM)


def _models():
    """Every kind of downstream model, tiny, keyed by a readable test id."""
    widths = dict(num_heads=HEADS, ffn_dim=FFN_DIM, dropout=0.1)
    return {
        "superb": lambda: SuperbClassifier(DIM, CLASSES, hidden=8),
        "transformer_baseline": lambda: BlockStackClassifier(
            DIM, CLASSES, ["msa_ffn"] * 2, **widths
        ),
        "simple_ffn": lambda: BlockStackClassifier(
            DIM, CLASSES, ["ffn"], **widths
        ),
        "derived_with_projection": lambda: BlockStackClassifier(
            DIM, CLASSES, ["ffn", "msa", "msa_ffn"], model_dim=8, **widths
        ),
        "supernet": lambda: BASSuperNet(DIM, CLASSES, num_layers=3, **widths),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_padding_frames_never_change_the_logits(name):
    torch.manual_seed(0)
    model = _models()[name]().eval()
    frames = 7
    x = torch.randn(3, frames, DIM)
    lens = torch.tensor([1.0, 5 / 7, 2 / 7])
    garbage = 1e4 * torch.randn(3, 4, DIM)
    garbage[0, 0, 0], garbage[1, 1, 1] = float("nan"), float("inf")
    padded = torch.cat([x, garbage], dim=1)  # (3, 11, D)
    padded_lens = lens * frames / padded.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, padded_lens), model(x, lens), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("name", list(_models()))
def test_one_frame_and_empty_utterances_give_finite_logits(name):
    torch.manual_seed(0)
    model = _models()[name]().train()
    x = torch.randn(3, 6, DIM)
    logits = model(x, torch.tensor([1.0, 1 / 6, 0.0]))
    assert logits.shape == (3, CLASSES)
    assert torch.isfinite(logits).all()
