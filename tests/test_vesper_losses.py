"""Specification of Vesper's pretraining losses (ser_modules/vesper/losses.py).

References are torch.nn.functional.mse_loss on the hand-selected frames, with the
predictors run on every frame before selecting.
"""

import pytest
import torch
from torch.nn import functional as F

from ser_modules.vesper.losses import Predictor, VesperPretrainingLoss

DIM = 8


def batch(seed=0):
    """Student/teacher features for 2 utterances of 6 frames; the second has 4 valid frames."""
    generator = torch.Generator().manual_seed(seed)
    features = {
        name: torch.randn(2, 6, DIM, generator=generator)
        for name in (
            "student_mid",
            "student_final",
            "teacher_mid",
            "teacher_final",
        )
    }
    valid_mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool
    )
    phoneme_mask = torch.tensor(
        [[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool
    )
    word_mask = torch.tensor(
        [[0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    return features, phoneme_mask, word_mask, valid_mask


def call(loss_fn, features, phoneme_mask, word_mask, valid_mask):
    return loss_fn(
        features["student_mid"],
        features["student_final"],
        features["teacher_mid"],
        features["teacher_final"],
        phoneme_mask,
        word_mask,
        valid_mask,
    )


def reference_mse(predictor, inputs, targets, frames):
    """MSE of the predictor run on all frames, then restricted to ``frames``."""
    return F.mse_loss(predictor(inputs)[frames], targets[frames])


def test_predictor_is_affine_free_layernorm_linear_gelu_linear_with_half_width():
    predictor = Predictor(1024)
    norm, first, activation, second = predictor
    assert (
        isinstance(norm, torch.nn.LayerNorm)
        and norm.weight is None
        and norm.bias is None
    )
    assert (first.in_features, first.out_features) == (1024, 512)
    assert isinstance(activation, torch.nn.GELU)
    assert (second.in_features, second.out_features) == (512, 1024)
    assert Predictor(16, hidden=3)[1].out_features == 3


def test_three_predictors_add_the_papers_3_15_million_parameters():
    loss_fn = VesperPretrainingLoss(1024)
    assert sum(p.numel() for p in loss_fn.parameters()) == 3 * (
        1024 * 512 + 512 + 512 * 1024 + 1024
    )
    assert round(sum(p.numel() for p in loss_fn.parameters()) / 1e6, 2) == 3.15


def test_terms_are_mse_of_predictions_on_their_frames_and_the_total_uses_paper_weights():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM)
    features, phoneme_mask, word_mask, valid_mask = batch()
    losses = call(loss_fn, features, phoneme_mask, word_mask, valid_mask)
    expected_low = reference_mse(
        loss_fn.predictors["low"],
        features["student_mid"],
        features["teacher_mid"],
        phoneme_mask,
    )
    expected_high = reference_mse(
        loss_fn.predictors["high"],
        features["student_final"],
        features["teacher_final"],
        word_mask,
    )
    expected_cross = reference_mse(
        loss_fn.predictors["cross"],
        features["student_final"],
        features["teacher_mid"],
        valid_mask,
    )
    torch.testing.assert_close(losses["loss_low"], expected_low)
    torch.testing.assert_close(losses["loss_high"], expected_high)
    torch.testing.assert_close(losses["loss_cross"], expected_cross)
    torch.testing.assert_close(
        losses["loss"], expected_low + 0.1 * expected_high + expected_cross
    )


def test_weights_scale_their_terms():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(
        DIM, weight_low=2.0, weight_high=0.5, weight_cross=3.0
    )
    losses = call(loss_fn, *batch())
    torch.testing.assert_close(
        losses["loss"],
        2.0 * losses["loss_low"]
        + 0.5 * losses["loss_high"]
        + 3.0 * losses["loss_cross"],
    )


def test_padded_frames_change_neither_the_losses_nor_get_gradient():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM)
    features, phoneme_mask, word_mask, valid_mask = batch()
    # Masks that reach into padding must still leave it out.
    phoneme_mask, word_mask = phoneme_mask.clone(), word_mask.clone()
    phoneme_mask[1, 5] = word_mask[1, 4] = True
    before = call(loss_fn, features, phoneme_mask, word_mask, valid_mask)
    changed = {name: value.clone() for name, value in features.items()}
    for value in changed.values():
        value[1, 4:] = 1e3
    changed["student_mid"].requires_grad_(True)
    changed["student_final"].requires_grad_(True)
    after = call(loss_fn, changed, phoneme_mask, word_mask, valid_mask)
    for name in before:
        torch.testing.assert_close(after[name], before[name])
    after["loss"].backward()
    assert not changed["student_mid"].grad[1, 4:].any()
    assert not changed["student_final"].grad[1, 4:].any()


def test_disabled_term_is_not_computed_and_has_no_predictor():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM, use_high=False)
    assert set(loss_fn.predictors) == {"low", "cross"}
    losses = call(loss_fn, *batch())
    assert losses["loss_high"] == 0 and losses["loss_high"].grad_fn is None
    torch.testing.assert_close(
        losses["loss"], losses["loss_low"] + losses["loss_cross"]
    )
    losses["loss"].backward()
    assert all(p.grad is not None for p in loss_fn.parameters())


def test_empty_masks_give_zero_terms_and_a_graph_that_backpropagates():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM)
    features, phoneme_mask, word_mask, valid_mask = batch()
    no_frames = torch.zeros_like(valid_mask)
    losses = call(loss_fn, features, no_frames, no_frames, valid_mask)
    assert losses["loss_low"] == 0 and losses["loss_high"] == 0
    assert torch.isfinite(losses["loss"])
    torch.testing.assert_close(losses["loss"], losses["loss_cross"])
    losses["loss"].backward()
    low_grads = [p.grad for p in loss_fn.predictors["low"].parameters()]
    assert all(grad is not None and not grad.any() for grad in low_grads)


def test_distill_objective_matches_layers_on_all_valid_frames_without_cross_term():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM, objective="distill")
    assert set(loss_fn.predictors) == {"low", "high"}
    features, _, _, valid_mask = batch()
    losses = call(loss_fn, features, None, None, valid_mask)
    expected_mid = reference_mse(
        loss_fn.predictors["low"],
        features["student_mid"],
        features["teacher_mid"],
        valid_mask,
    )
    expected_final = reference_mse(
        loss_fn.predictors["high"],
        features["student_final"],
        features["teacher_final"],
        valid_mask,
    )
    torch.testing.assert_close(losses["loss_low"], expected_mid)
    torch.testing.assert_close(losses["loss_high"], expected_final)
    assert losses["loss_cross"] == 0
    torch.testing.assert_close(
        losses["loss"], expected_mid + 0.1 * expected_final
    )


def test_teacher_targets_from_inference_mode_train_the_student():
    torch.manual_seed(0)
    loss_fn = VesperPretrainingLoss(DIM)
    features, phoneme_mask, word_mask, valid_mask = batch()
    with torch.inference_mode():
        features["teacher_mid"] = features["teacher_mid"].clone()
        features["teacher_final"] = features["teacher_final"].clone()
    features["student_final"].requires_grad_(True)
    call(loss_fn, features, phoneme_mask, word_mask, valid_mask)[
        "loss"
    ].backward()
    assert features["student_final"].grad.abs().sum() > 0


def test_vesper_objective_without_masks_is_rejected():
    features, _, _, valid_mask = batch()
    with pytest.raises(ValueError, match="objective='distill'"):
        call(VesperPretrainingLoss(DIM), features, None, None, valid_mask)


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match="'kd'"):
        VesperPretrainingLoss(DIM, objective="kd")
    with pytest.raises(ValueError, match="enable at least one"):
        VesperPretrainingLoss(
            DIM, use_low=False, use_high=False, use_cross=False
        )
    with pytest.raises(ValueError, match="enable at least one"):
        VesperPretrainingLoss(
            DIM, use_low=False, use_high=False, objective="distill"
        )
