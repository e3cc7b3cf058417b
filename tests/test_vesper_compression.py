"""Specification of compression at initialisation (ser_modules/vesper/compression.py) and of model sizes."""

import pytest
import torch
from transformers import WavLMConfig

from ser_modules.vesper.compression import (
    COMPRESSION_METHODS,
    build_student_from_teacher,
    teacher_layers_for_student_layer,
)
from ser_modules.vesper.encoder import (
    VesperEncoder,
    count_encoder_parameters,
    count_wavlm_pretraining_parameters,
    wavlm_base_config,
    wavlm_large_config,
)

NON_LAYER_PREFIXES = (
    "feature_extractor.",
    "feature_projection.",
    "masked_spec_embed",
    "encoder.pos_conv_embed.",
)
RELATIVE_POSITION_EMBEDDING = "encoder.layers.0.attention.rel_attn_embed.weight"


def tiny_teacher(num_layers=4):
    """A small pre-LN WavLM teacher with random weights."""
    torch.manual_seed(0)
    config = WavLMConfig(
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
    return VesperEncoder(config).eval()


def layer_state(encoder, layer):
    """State dict of one Transformer layer, keyed without the layer prefix."""
    prefix = f"encoder.layers.{layer}."
    return {
        key[len(prefix) :]: value
        for key, value in encoder.state_dict().items()
        if key.startswith(prefix)
    }


def test_paper_layer_choice_for_vesper_4_and_12():
    assert [teacher_layers_for_student_layer(i, 4, 24) for i in range(4)] == [
        [0],
        [6],
        [12],
        [18],
    ]
    assert [
        teacher_layers_for_student_layer(i, 12, 24)[0] for i in range(12)
    ] == list(range(0, 24, 2))
    assert teacher_layers_for_student_layer(1, 4, 24, "average") == [
        6,
        7,
        8,
        9,
        10,
        11,
    ]


def test_extract_copies_every_stride_th_teacher_layer():
    teacher = tiny_teacher(num_layers=6)
    student = build_student_from_teacher(teacher, 3, method="extract")
    for student_layer, teacher_layer in enumerate([0, 2, 4]):
        expected = layer_state(teacher, teacher_layer)
        actual = layer_state(student, student_layer)
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_average_is_the_mean_of_each_group_of_teacher_layers():
    teacher = tiny_teacher(num_layers=4)
    student = build_student_from_teacher(teacher, 2, method="average")
    for key in (
        "attention.q_proj.weight",
        "feed_forward.output_dense.bias",
        "attention.gru_rel_pos_const",
    ):
        expected = (
            layer_state(teacher, 2)[key] + layer_state(teacher, 3)[key]
        ) / 2
        assert torch.allclose(layer_state(student, 1)[key], expected)


def test_random_initialises_layers_afresh():
    teacher = tiny_teacher(num_layers=4)
    student = build_student_from_teacher(teacher, 2, method="random", seed=3)
    key = "attention.q_proj.weight"
    student_weight = layer_state(student, 1)[key]
    assert not any(
        torch.allclose(student_weight, layer_state(teacher, j)[key])
        for j in range(4)
    )


def test_random_initialisation_is_reproducible_with_a_seed():
    teacher = tiny_teacher(num_layers=4)
    first = build_student_from_teacher(teacher, 2, method="random", seed=3)
    second = build_student_from_teacher(teacher, 2, method="random", seed=3)
    other = build_student_from_teacher(teacher, 2, method="random", seed=4)
    key = "encoder.layers.1.feed_forward.intermediate_dense.weight"
    assert torch.equal(first.state_dict()[key], second.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])


def test_distill_starts_from_the_extract_initialisation():
    teacher = tiny_teacher(num_layers=4)
    distill = build_student_from_teacher(
        teacher, 2, method="distill"
    ).state_dict()
    extract = build_student_from_teacher(
        teacher, 2, method="extract"
    ).state_dict()
    assert all(torch.equal(distill[key], extract[key]) for key in extract)


@pytest.mark.parametrize("method", COMPRESSION_METHODS)
def test_non_layer_weights_are_copied_from_the_teacher(method):
    teacher = tiny_teacher(num_layers=4)
    student = build_student_from_teacher(
        teacher, 2, method=method, seed=5
    ).state_dict()
    teacher_state = teacher.state_dict()
    shared = [
        key for key in teacher_state if key.startswith(NON_LAYER_PREFIXES)
    ]
    assert len(shared) > 10
    assert all(torch.equal(student[key], teacher_state[key]) for key in shared)


@pytest.mark.parametrize("method", COMPRESSION_METHODS)
def test_only_student_layer_zero_has_the_teachers_relative_position_embedding(
    method,
):
    teacher = tiny_teacher(num_layers=4)
    student = build_student_from_teacher(teacher, 2, method=method, seed=5)
    student_embedding = student.state_dict()[RELATIVE_POSITION_EMBEDDING]
    assert torch.equal(
        student_embedding, teacher.state_dict()[RELATIVE_POSITION_EMBEDDING]
    )
    assert not hasattr(student.encoder.layers[1].attention, "rel_attn_embed")


def test_student_with_all_teacher_layers_reproduces_the_teacher():
    teacher = tiny_teacher(num_layers=4)
    student = build_student_from_teacher(teacher, 4, method="extract").eval()
    torch.manual_seed(1)
    wavs, wav_lens = torch.randn(2, 1200), torch.tensor([1.0, 0.7])
    with torch.no_grad():
        cnn_feats, frame_mask = teacher.extract_cnn_features(wavs, wav_lens)
        expected = teacher.forward_from_cnn(
            cnn_feats, frame_mask, output_layers=range(5)
        )
        actual = student.forward_from_cnn(
            cnn_feats, frame_mask, output_layers=range(5)
        )
    for layer in range(5):
        assert (actual[layer] - expected[layer]).abs().max() < 1e-5, (
            f"layer {layer}"
        )


def test_building_a_student_leaves_the_teacher_unchanged():
    teacher = tiny_teacher(num_layers=4)
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = build_student_from_teacher(teacher, 2, method="average")
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)
    assert all(
        torch.equal(before[key], value)
        for key, value in teacher.state_dict().items()
    )


def test_unknown_method_and_too_many_layers_are_rejected():
    teacher = tiny_teacher(num_layers=4)
    with pytest.raises(ValueError, match="extract"):
        build_student_from_teacher(teacher, 2, method="prune")
    with pytest.raises(ValueError, match="1 to 4"):
        build_student_from_teacher(teacher, 5)


@pytest.mark.parametrize(
    "num_layers, published_millions", [(4, 63.52), (12, 164.29)]
)
def test_vesper_parameter_count_matches_the_paper(
    num_layers, published_millions
):
    with torch.device("meta"):
        encoder = VesperEncoder(
            wavlm_large_config(num_hidden_layers=num_layers)
        )
    assert (
        round(count_encoder_parameters(encoder) / 1e6, 2) == published_millions
    )


@pytest.mark.parametrize(
    "config, final_dim, published_millions",
    [(wavlm_base_config(), 256, 94.70), (wavlm_large_config(), 768, 316.62)],
    ids=["base", "large"],
)
def test_wavlm_parameter_count_matches_the_paper(
    config, final_dim, published_millions
):
    # The published WavLM sizes are truncated to two decimals, hence "within 0.01 M".
    count = count_wavlm_pretraining_parameters(config, final_dim=final_dim)
    assert 0 <= count / 1e6 - published_millions < 0.01
