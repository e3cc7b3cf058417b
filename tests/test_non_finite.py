"""NaN never enters a normaliser's statistics (ser_modules/downstream/normalization.py)."""

import pytest
import torch

from ser_modules.downstream.normalization import GlobalFrameNormalization


def test_non_finite_frames_are_refused_before_they_enter_the_statistics():
    norm = GlobalFrameNormalization()
    norm(torch.randn(2, 5, 3), torch.ones(2), epoch=1)
    mean, count = norm.glob_mean.clone(), norm.count
    frames = torch.randn(2, 5, 3)
    frames[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="Non-finite"):
        norm(frames, torch.ones(2), epoch=1)
    assert torch.equal(norm.glob_mean, mean) and norm.count == count
