"""Specification of ser_modules.resume: random state files are data, never code."""

import os
import random

import numpy as np
import torch

from ser_modules.resume import RandomState


class PicklePayload:
    """Unpickling this object runs a command (what a malicious checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_random_state_round_trips_all_three_generators(tmp_path):
    path = str(tmp_path / "random_state.ckpt")
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    RandomState()._save(path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    RandomState()._recover(path, end_of_epoch=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_random_state_file_with_a_pickle_payload_is_refused_without_running_it(
    tmp_path,
):
    path = str(tmp_path / "random_state.ckpt")
    marker = tmp_path / "executed"
    torch.save(
        {"python": PicklePayload(marker), "numpy": None, "torch": None}, path
    )
    try:
        RandomState()._recover(path, end_of_epoch=False)
    except RuntimeError as error:
        assert path in str(error)
    else:
        raise AssertionError("the pickle payload was accepted")
    assert not marker.exists()
