"""Shared test set-up: offline, single-threaded torch (tiny models run faster that way on
2 shared cores, and results do not depend on the thread count)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402
from prepare_helpers import REPO_ROOT  # noqa: E402

# What a test run may add to the repository root: pytest's and ruff's caches.
ROOT_CACHES = {".pytest_cache", ".ruff_cache"}


@pytest.fixture(scope="session", autouse=True)
def nothing_is_written_into_the_checkout():
    """Fail the run when a test leaves files or folders in the repository root (a
    relative output folder, a checkpointer built from an hparams default): tests write
    under their tmp_path only."""
    before = set(os.listdir(REPO_ROOT))
    yield
    added = set(os.listdir(REPO_ROOT)) - before - ROOT_CACHES
    assert not added, (
        f"the tests left {sorted(added)} in {REPO_ROOT}: give the test that made it "
        "an output folder under tmp_path"
    )
